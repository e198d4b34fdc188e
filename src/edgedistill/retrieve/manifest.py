"""``manifest.csv``, written: one row per kept image (its format and its reading as a dataset are
:mod:`edgedistill.data.manifest`'s)."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Sequence

from edgedistill import storage
from edgedistill.data.manifest import MANIFEST_COLUMNS, RETRIEVAL_FORMAT
from edgedistill.retrieve.pool import PoolRows
from edgedistill.retrieve.select import Kept

FORMAT = RETRIEVAL_FORMAT


def write_manifest(path: Path, pool: PoolRows, kept: list[list[Kept]], classes: Sequence[str]) -> None:
    """``manifest.csv``: one row per kept image, by class then rank (atomic)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(MANIFEST_COLUMNS)
    for rows in kept:
        for r in rows:
            key, index, where = pool.describe(r.gid)
            w.writerow([where, classes[r.cls], f"{r.score:.6f}", r.rank, f"{r.margin:.6f}", r.why, key, index])
    storage.write_text(path, buf.getvalue())
