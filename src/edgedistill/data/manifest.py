"""The manifest format: a retrieval's kept images as a labelled dataset (``data.dataset: manifest``).

A manifest folder holds ``manifest.csv`` (one row per kept image: :data:`MANIFEST_COLUMNS`) and
``retrieval.json`` beside it (the classes, and the pool's sources with their identities). Reading
one reopens the pool's sources and checks them unchanged, so the pool's teacher cache is reused.
``edgedistill retrieve`` writes it (``retrieve.write_manifest``); this module only reads it.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np

from edgedistill import storage
from edgedistill.data.sources import RelabeledSource, describe_item, pool_sources
from edgedistill.errors import DataError

RETRIEVAL_FORMAT = 1  # the format of retrieval.json (and of the records retrieve keeps beside its caches)
MANIFEST_COLUMNS = ("path", "class", "score", "rank", "margin", "why", "source", "index")


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
    if not isinstance(record, dict) or record.get("format") != RETRIEVAL_FORMAT:
        raise DataError(f"{rec_path} is not a retrieval record of format {RETRIEVAL_FORMAT}")
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


def manifest_sources(path: str | os.PathLike) -> tuple[list[str], list[RelabeledSource]]:
    """A manifest as labelled sources: the pool's sources (reopened, checked unchanged) with the manifest's classes.

    Returns:
        ``(classes, [RelabeledSource])``: one per pool source; images not in the manifest have label -1.

    Raises:
        DataError: the pool changed since the retrieval, or a row does not point at the image it names.
    """
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


__all__ = ["MANIFEST_COLUMNS", "RETRIEVAL_FORMAT", "manifest_sources", "read_manifest"]
