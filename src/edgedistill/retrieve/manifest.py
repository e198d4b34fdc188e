"""``manifest.csv``: written here, one row per kept image; read back as a labelled dataset (``data.dataset:
manifest``) with its ``retrieval.json`` (format :data:`FORMAT`)."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from edgedistill import storage
from edgedistill.errors import DataError

if TYPE_CHECKING:
    from edgedistill.retrieve.pool import PoolRows
    from edgedistill.retrieve.select import Kept

FORMAT = 1
MANIFEST_COLUMNS = ("path", "class", "score", "rank", "margin", "why", "source", "index")


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


def read_manifest(path: str | os.PathLike) -> tuple[dict, list[dict]]:
    """``(retrieval.json record, rows)`` of a manifest; rows keep the CSV's order (a person may have deleted some).

    Raises:
        DataError: a missing file, a CSV without the manifest's columns, a class not in the retrieval, a row twice.
    """
    path = Path(path).expanduser()
    rec_path = path.with_name("retrieval.json")
    if not path.is_file():
        raise DataError(f"Manifest {str(path)!r} does not exist; write one with 'edgedistill retrieve'")
    if not rec_path.is_file():
        raise DataError(f"Manifest {str(path)!r} has no retrieval.json beside it (the classes and the pool it indexes); "
                        "keep the folder 'edgedistill retrieve' wrote together")
    record = storage.read_json(rec_path)
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise DataError(f"{rec_path} is not a retrieval record of format {FORMAT}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"Manifest {str(path)!r} cannot be read ({e})") from None
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in ("path", "class", "source", "index") if c not in (reader.fieldnames or [])]
    if missing:
        raise DataError(f"Manifest {str(path)!r} lacks column(s) {missing}; its header must be {','.join(MANIFEST_COLUMNS)}")
    rows, seen = [], {}
    for n, row in enumerate(reader, 2):
        if row["class"] not in record["classes"]:
            raise DataError(f"{path}:{n}: class {row['class']!r} is not one of the retrieval's classes {record['classes']}")
        try:
            row["index"] = int(row["index"])
        except ValueError:
            raise DataError(f"{path}:{n}: index {row['index']!r} is not an integer") from None
        where = (row["source"], row["index"])
        if where in seen:
            raise DataError(f"{path}:{n}: image {row['path']!r} is listed again (first on line {seen[where]})")
        seen[where] = n
        rows.append(row)
    return record, rows


def manifest_sources(path: str | os.PathLike) -> tuple[list[str], list]:
    """A manifest as labelled sources: the pool's sources (reopened, checked unchanged) with the manifest's classes.

    Returns:
        ``(classes, [RelabeledSource])``: one per pool source; images not in the manifest have label -1.

    Raises:
        DataError: the pool changed since the retrieval, or a row does not point at the image it names.
    """
    from edgedistill.data.sources import RelabeledSource, describe_item, pool_sources

    record, rows = read_manifest(path)
    sources = {s.key: s for s in pool_sources(record["pool"]["paths"])}
    for rec in record["pool"]["sources"]:
        src = sources.get(rec["key"])
        if src is None or storage.jsonable(src.identity()) != rec["identity"]:
            raise DataError(f"Pool source {rec['key']!r} of manifest {str(path)!r} changed since the retrieval (files "
                            "added, removed or modified); run 'edgedistill retrieve' again")
    classes = list(record["classes"])
    labels = {k: np.full(len(s), -1, dtype=np.int64) for k, s in sources.items()}
    for row in rows:
        src = sources.get(row["source"])
        if src is None or not 0 <= row["index"] < len(src) or describe_item(src, row["index"]) != row["path"]:
            raise DataError(f"Manifest {str(path)!r}: row {row['path']!r} does not match image {row['index']} of pool "
                            f"source {row['source']!r}; the manifest was edited beyond deleting rows")
        labels[row["source"]][row["index"]] = classes.index(row["class"])
    return classes, [RelabeledSource(s, classes, labels[k]) for k, s in sources.items()]
