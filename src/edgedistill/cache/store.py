"""The teacher cache on disk: its layout, the shard files and their checks, and reading a finished cache.

See the package docstring for the layout. A shard's ``meta.json`` is written last, with the size
and sha256 of each of its arrays, so "meta exists" means "shard complete", and a shard whose
bytes changed afterwards is detected when the cache is opened.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgedistill import storage
from edgedistill.errors import CacheMismatchError, EdgeDistillError

FORMAT_VERSION = 2
EVAL_VIEW = "eval"
HASH_CHARS = 16  # hash prefix used as a folder name (teacher fingerprint, source identity)


class CacheDamagedError(EdgeDistillError):
    """A cache shard whose files are missing, truncated or changed since they were written."""


def view_name(views: int = 0, seed: int = 0) -> str:
    """Folder name of a cached view: ``"eval"``, or ``"aug{K}-s{seed}"`` for K augmented views."""
    if views < 0:
        raise EdgeDistillError(f"views={views} must be >= 0 (0: the plain teacher view)")
    return EVAL_VIEW if views == 0 else f"aug{views}-s{seed}"


def source_id(source) -> str:
    """What a source holds, as a folder name: the sha256 of its identity (resolved path, image count, content hash).

    Two datasets whose folders share a name (``a/my_data/train`` and ``b/my_data/train``) get different ids;
    a source whose files changed gets a new one.
    """
    text = json.dumps(storage.jsonable(source.identity()), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:HASH_CHARS]


def cache_path(cache_dir: str | os.PathLike, fingerprint: str, source, view: str) -> Path:
    """Folder of one cache: ``<cache_dir>/<fingerprint[:16]>/<source.key>/<source_id(source)>/<view>``.

    ``source.key`` keeps the folder readable; the id under it keys it by what the source holds.
    """
    return Path(cache_dir).expanduser() / fingerprint[:HASH_CHARS] / source.key / source_id(source) / view


# ----------------------------------------------------------------------------- reading


class ShardedArray:
    """Read-only row view over several shard arrays, as if concatenated along axis 0.

    Indexing with an int, a slice, a bool mask or an integer array/list/tensor returns a
    fresh ``np.ndarray`` (only the touched rows are read from the memory maps).

    Args:
        parts: arrays (usually ``np.memmap``) with equal trailing shapes and dtype.
    """

    def __init__(self, parts: Sequence[np.ndarray]) -> None:
        if not parts:
            raise ValueError("ShardedArray needs at least one part")
        self.parts = list(parts)
        self.offsets = np.cumsum([0] + [len(p) for p in self.parts])  # [P+1]
        self.shape = (int(self.offsets[-1]), *self.parts[0].shape[1:])
        self.dtype = self.parts[0].dtype
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = np.concatenate([np.asarray(p) for p in self.parts], axis=0)
        return out if dtype is None else out.astype(dtype)

    def __getitem__(self, idx: Any) -> np.ndarray:
        n = len(self)
        if isinstance(idx, (int, np.integer)):
            i = int(idx) + n if idx < 0 else int(idx)
            if not 0 <= i < n:
                raise IndexError(f"index {idx} out of range for {n} rows")
            p = int(np.searchsorted(self.offsets, i, side="right")) - 1
            return np.asarray(self.parts[p][i - self.offsets[p]])
        if isinstance(idx, slice):
            idx = np.arange(n)[idx]
        if isinstance(idx, torch.Tensor):
            idx = idx.cpu().numpy()
        idx = np.asarray(idx)
        if idx.dtype == bool:
            if idx.shape != (n,):
                raise IndexError(f"bool mask of shape {idx.shape} does not match {n} rows")
            idx = np.flatnonzero(idx)
        idx = idx.astype(np.int64).reshape(-1)
        idx = np.where(idx < 0, idx + n, idx)
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise IndexError(f"indices out of range for {n} rows")
        out = np.empty((idx.size, *self.shape[1:]), dtype=self.dtype)
        part_of = np.searchsorted(self.offsets, idx, side="right") - 1  # [M]
        for p in np.unique(part_of):
            sel = part_of == p
            # fancy indexing on a memmap reads only these rows; sorted access keeps it sequential
            out[sel] = self.parts[p][idx[sel] - self.offsets[p]]
        return out


    def take(self, rows, cols=None) -> np.ndarray:
        """Rows ``rows`` (int array ``[M]``), or elements ``[rows[m], cols[m]]`` of a ``[N, K, ...]`` array: ``[M, ...]``.

        Only the touched rows (or row/column elements) are read from the memory maps, so a batch of
        view targets costs ``M x D`` values whatever N and K are.
        """
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"indices out of range for {len(self)} rows")
        if cols is not None:
            cols = np.asarray(cols, dtype=np.int64).reshape(-1)
            if cols.shape != rows.shape:
                raise IndexError(f"{cols.size} columns for {rows.size} rows")
            if cols.size and (cols.min() < 0 or cols.max() >= self.shape[1]):
                raise IndexError(f"columns out of range for {self.shape[1]}")
        out = np.empty((rows.size, *self.shape[1 if cols is None else 2:]), dtype=self.dtype)
        part_of = np.searchsorted(self.offsets, rows, side="right") - 1  # [M]
        for p in np.unique(part_of):
            sel = part_of == p
            local = rows[sel] - self.offsets[p]
            out[sel] = self.parts[p][local] if cols is None else self.parts[p][local, cols[sel]]
        return out


def shard_stem(k: int) -> str:
    return f"shard_{k:05d}"


def check_shard(folder: Path, plan: dict, k: int, full: bool = True) -> str | None:
    """Why shard ``k`` is unusable (missing, damaged, from another range), or None when it is sound.

    ``full`` also compares every file's sha256 with the one recorded when it was written.
    """
    meta_path = folder / f"{shard_stem(k)}.meta.json"
    if not meta_path.exists():
        return "not computed"
    try:
        meta = storage.read_json(meta_path)
    except storage.StorageError as e:
        return str(e)
    S, N = plan["shard_size"], plan["N"]
    want = (k * S, min((k + 1) * S, N))
    if not isinstance(meta, dict) or (meta.get("start"), meta.get("stop")) != want or meta.get("index") != k:
        return f"its meta covers rows {meta.get('start')}..{meta.get('stop')} (shard {meta.get('index')}), not {want[0]}..{want[1]}"
    for name, rec in meta.get("checksums", {}).items():
        path = folder / meta["files"][name]
        try:
            size = path.stat().st_size
        except OSError:
            return f"{path.name} is missing"
        if size != rec["size"]:
            return f"{path.name} has {size} bytes, {rec['size']} were written"
        if full and storage.file_sha256(path) != rec["sha256"]:
            return f"{path.name} changed since it was written (sha256 differs)"
    if not meta.get("checksums"):
        return "its meta records no checksums (written by an older version)"
    return None


def write_shard(folder: Path, k: int, start: int, stop: int, arrays: dict[str, np.ndarray], seconds: float,
                 rank: int) -> None:
    """Write shard ``k``'s arrays, then its meta (sizes, checksums) last: its presence marks the shard complete."""
    stem = shard_stem(k)
    files = {name: f"{stem}.{name}.npy" for name in arrays}
    checksums = {}
    for name, array in arrays.items():
        storage.save_npy(folder / files[name], array)
        path = folder / files[name]
        checksums[name] = {"size": path.stat().st_size, "sha256": storage.file_sha256(path)}
    meta = {"index": k, "start": start, "stop": stop, "bad": int(len(arrays["valid"]) - arrays["valid"].sum()),
            "seconds": round(seconds, 4), "rank": rank, "files": files, "checksums": checksums}
    storage.write_json(folder / f"{stem}.meta.json", meta)


def write_manifest(folder: Path, plan: dict) -> dict:
    metas = [storage.read_json(folder / f"{shard_stem(k)}.meta.json") for k in range(plan["num_shards"])]
    seconds = sum(m["seconds"] for m in metas)
    shards = [{k: m[k] for k in ("index", "start", "stop", "bad", "rank")} | m["files"] for m in metas]
    n_forward = plan["N"] * max(1, plan["view"].get("views", 0))
    manifest = {
        **plan,
        "shards": shards,
        "bad": sum(m["bad"] for m in metas),
        # total teacher compute time summed over shards (and processes); throughput counts every view
        "seconds": round(seconds, 3),
        "images_per_s": round(n_forward / seconds, 2) if seconds > 0 else None,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    storage.write_json(folder / "manifest.json", manifest)
    return manifest


class TeacherCache:
    """A complete teacher-output cache of one source and view, read through memory maps.

    Attributes:
        path: the cache folder.
        manifest: the parsed ``manifest.json`` (fingerprint, source identity, view, N, D, C, ...).
        embedding: float16 ``[N, D]`` (or ``[N, K, D]`` for K augmented views), a :class:`ShardedArray`.
        logits: float16 ``[N, C]`` for classifier teachers, else None.
        valid: bool ``[N]``; False marks unreadable images (their rows are zero).
        aug_params: float32 ``[N, K, 5]`` (top, left, height, width, flip; relative) or None.
    """

    def __init__(self, path: Path, manifest: dict) -> None:
        self.path = Path(path)
        self.manifest = manifest
        shards = manifest["shards"]

        def load(suffix: str) -> ShardedArray:
            return ShardedArray([storage.load_npy(self.path / s[suffix]) for s in shards])

        self.embedding = load("embedding")
        self.logits = load("logits") if manifest["C"] else None
        # valid is tiny: keep it as a plain array so boolean masks are cheap
        self.valid = np.asarray(load("valid"))
        self.aug_params = load("aug") if manifest["view"]["views"] else None
        if len(self.embedding) != manifest["N"] or len(self.valid) != manifest["N"]:
            raise CacheDamagedError(f"Teacher cache {str(self.path)!r} holds {len(self.embedding)} rows, its manifest "
                                    f"says {manifest['N']}; rerun 'edgedistill cache' to repair it")

    def __len__(self) -> int:
        return int(self.manifest["N"])

    def __repr__(self) -> str:
        m = self.manifest
        return f"TeacherCache({str(self.path)!r}, N={m['N']}, D={m['D']}, C={m['C']}, view={m['view']['name']!r})"

    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        *,
        expected_fingerprint: str,
        expected_source: dict | None = None,
        expected_view: dict | None = None,
        verify: bool = True,
    ) -> TeacherCache:
        """Open a finished cache, refusing one produced by another teacher, source or view, or a damaged one.

        Args:
            path: the cache folder (holding ``manifest.json``).
            expected_fingerprint: the requesting teacher's ``fingerprint``.
            expected_source: ``Source.identity()`` of the requested source; None skips the check.
            expected_view: the view dict (``{"name", "teacher_view", "views", "seed"}``); None skips it.
            verify: compare every shard's size and sha256 with the ones recorded when it was written.

        Raises:
            CacheMismatchError: a recorded fingerprint, source identity or view differs (names both).
            CacheDamagedError: a shard is missing or its bytes changed since they were written (names it).
            EdgeDistillError: there is no complete cache at ``path``.
        """
        path = Path(path).expanduser()
        mpath = path / "manifest.json"
        if not mpath.exists():
            raise EdgeDistillError(
                f"No complete teacher cache at {str(path)!r} (manifest.json missing); run 'edgedistill cache' first"
            )
        manifest = storage.read_json(mpath)
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_VERSION:
            raise CacheMismatchError(f"Teacher cache {str(path)!r} has format {manifest.get('format') if isinstance(manifest, dict) else '?'}, "
                                     f"this version reads format {FORMAT_VERSION}; delete the folder to recompute it")
        check_identity(path, manifest, expected_fingerprint, expected_source, expected_view)
        damaged = {k: why for k in range(manifest["num_shards"]) if (why := check_shard(path, manifest, k, full=verify))}
        if damaged:
            k, why = next(iter(damaged.items()))
            raise CacheDamagedError(f"Teacher cache {str(path)!r}: shard {k} is damaged ({why})"
                                    f"{f' and {len(damaged) - 1} more' if len(damaged) > 1 else ''}; rerun "
                                    "'edgedistill cache' with the same settings to recompute the damaged shards")
        return cls(path, manifest)


def check_identity(path: Path, recorded: dict, fingerprint: str, source: dict | None, view: dict | None) -> None:
    got = recorded["teacher"]["fingerprint"]
    if got != fingerprint:
        raise CacheMismatchError(
            f"Teacher cache {str(path)!r} was made by teacher fingerprint {got!r}, "
            f"but the requested teacher has fingerprint {fingerprint!r}. Use another cache_dir or delete the folder."
        )
    if source is not None and recorded["source"]["identity"] != storage.jsonable(source):
        raise CacheMismatchError(
            f"Teacher cache {str(path)!r} holds source {json.dumps(recorded['source']['identity'])}, "
            f"but the requested source is {json.dumps(storage.jsonable(source))} (the data changed?). "
            "Delete the folder to recompute it."
        )
    if view is not None and recorded["view"] != storage.jsonable(view):
        raise CacheMismatchError(
            f"Teacher cache {str(path)!r} holds view {json.dumps(recorded['view'])}, "
            f"but the requested view is {json.dumps(storage.jsonable(view))}. Delete the folder to recompute it."
        )


__all__ = ["CacheDamagedError", "EVAL_VIEW", "FORMAT_VERSION", "ShardedArray", "TeacherCache", "cache_path", "check_identity",
           "check_shard", "shard_stem", "source_id", "view_name", "write_manifest", "write_shard"]
