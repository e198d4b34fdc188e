"""Teacher-output cache: the teacher runs once per (fingerprint, source, view), students read memory maps.

Layout, one folder per (teacher, source, view)::

    <cache_dir>/<teacher.fingerprint[:16]>/<source.key>/<view>/
        plan.json                      what is being computed (written first, checked on resume)
        shard_00000.embedding.npy      float16 [S, D]  or [S, K, D] for K augmented views
        shard_00000.logits.npy         float16 [S, C]  (classifier teachers only)
        shard_00000.valid.npy          bool [S]        False: unreadable image, its rows are zero
        shard_00000.aug.npy            float32 [S, K, 5] AugParams (top, left, height, width, flip)
        shard_00000.meta.json          rows, bad count, seconds, and each file's size and sha256 (written last)
        shard_00000.lock               held (flock) by the process computing the shard
        manifest.json                  written last: the cache is complete

``view`` is ``"eval"`` (the teacher's plain view) or ``"aug{K}-s{seed}"`` (K augmented views
whose crop/flip parameters come from ``data.transforms.sample_aug_params``, so a student can
train on exactly the crop the teacher saw).

Shard ``k`` covers source indices ``[k*S, (k+1)*S)``. Every file is written atomically and the
shard's ``meta.json`` last, with the size and sha256 of each of its arrays, so "meta exists"
means "shard complete", and a shard whose bytes changed afterwards (overwritten, truncated,
swapped with another) is detected when the cache is opened. A job killed with SIGKILL resumes
where it stopped and never recomputes a finished shard; ``ensure_cache`` (``edgedistill cache``)
recomputes exactly the damaged shards of an existing cache.

Processes share the work shard by shard: each takes an exclusive ``flock`` on a shard's lock
file before computing it, so concurrent ``cache`` jobs on one folder and the ranks of a
distributed job (torchrun's ``RANK``/``WORLD_SIZE``, ``--devices N``) never repeat a shard. A
lock dies with its process, so a killed job leaves nothing stale. Each rank starts at its own
offset (``rank * num_shards / world``), so ranks on machines that share no lock still split
the work; whichever finds every shard done writes ``manifest.json``.

Reading: :class:`TeacherCache` exposes each array as a :class:`ShardedArray`, a thin view that
concatenates the shard memory maps (``np.load(mmap_mode="r")``) without copying them.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import fcntl
import json
import os
import sys
import time
import types
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from edgedistill import storage
from edgedistill.config import DEFAULT_CACHE_DIR, DataConfig, TeacherConfig
from edgedistill.console import progress, say
from edgedistill.errors import CacheMismatchError, DataError, EdgeDistillError

FORMAT_VERSION = 2
EVAL_VIEW = "eval"
_FP_CHARS = 16  # fingerprint prefix used as folder name


class CacheDamagedError(EdgeDistillError):
    """A cache shard whose files are missing, truncated or changed since they were written."""


def view_name(views: int = 0, seed: int = 0) -> str:
    """Folder name of a cached view: ``"eval"``, or ``"aug{K}-s{seed}"`` for K augmented views."""
    if views < 0:
        raise EdgeDistillError(f"views={views} must be >= 0 (0: the plain teacher view)")
    return EVAL_VIEW if views == 0 else f"aug{views}-s{seed}"


def cache_path(cache_dir: str | os.PathLike, fingerprint: str, source_key: str, view: str) -> Path:
    """Folder of one cache: ``<cache_dir>/<fingerprint[:16]>/<source_key>/<view>``."""
    return Path(cache_dir).expanduser() / fingerprint[:_FP_CHARS] / source_key / view


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


def _shard_stem(k: int) -> str:
    return f"shard_{k:05d}"


def _check_shard(folder: Path, plan: dict, k: int, full: bool = True) -> str | None:
    """Why shard ``k`` is unusable (missing, damaged, from another range), or None when it is sound.

    ``full`` also compares every file's sha256 with the one recorded when it was written.
    """
    meta_path = folder / f"{_shard_stem(k)}.meta.json"
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
        _check_identity(path, manifest, expected_fingerprint, expected_source, expected_view)
        damaged = {k: why for k in range(manifest["num_shards"]) if (why := _check_shard(path, manifest, k, full=verify))}
        if damaged:
            k, why = next(iter(damaged.items()))
            raise CacheDamagedError(f"Teacher cache {str(path)!r}: shard {k} is damaged ({why})"
                                    f"{f' and {len(damaged) - 1} more' if len(damaged) > 1 else ''}; rerun "
                                    "'edgedistill cache' with the same settings to recompute the damaged shards")
        return cls(path, manifest)


def _check_identity(path: Path, recorded: dict, fingerprint: str, source: dict | None, view: dict | None) -> None:
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


@dataclass
class Gathered:
    """The cached teacher outputs of a split's readable images, in split order.

    Attributes:
        embedding: float32 ``[N, D]``.
        logits: float32 ``[N, C]`` (classifier teachers) or None.
        labels: int64 ``[N]``; -1 where hidden.
        bad: Unreadable images left out.
    """

    embedding: np.ndarray
    logits: np.ndarray | None
    labels: np.ndarray
    bad: int


def gather(splits, caches: dict[str, TeacherCache], spec: str) -> Gathered:
    """The cached teacher outputs of split ``spec`` (readable images only)."""
    from edgedistill.config import split_names

    embs, logits, labels, bad = [], [], [], 0
    for name in split_names(spec):
        for part in splits.parts.get(name, []):
            cache = caches[part.source]
            valid = cache.valid[part.indices]
            idx = part.indices[valid]
            bad += int((~valid).sum())
            embs.append(cache.embedding[idx].astype(np.float32))
            if cache.logits is not None:
                logits.append(cache.logits[idx].astype(np.float32))
            lab = splits.sources[part.source].labels[idx] if part.labeled else np.full(len(idx), -1)
            labels.append(np.asarray(lab, dtype=np.int64))
    if not embs:
        raise DataError(f"Split {spec!r} is empty for this dataset. Valid: {', '.join(splits.parts)}")
    lg = np.concatenate(logits) if len(logits) == len(embs) else None
    return Gathered(np.concatenate(embs), lg, np.concatenate(labels), bad)


# ----------------------------------------------------------------------------- computing


class TeacherViews:
    """The teacher's input for one image: its plain view, or its K cached augmented crops.

    Called as ``transform(pil, source, index)`` by ``SplitDataset``; picklable for workers.

    Returns:
        ``Tensor [3, H, W]``, or ``[K, 3, H, W]`` with ``views=K``.
    """

    def __init__(self, view_spec, views: int = 0, seed: int = 0) -> None:
        self.view_spec, self.views, self.seed = view_spec, views, seed

    def __call__(self, img, source: str, index: int) -> torch.Tensor:
        from edgedistill.data.transforms import apply_aug, eval_transform, sample_aug_params

        if not self.views:
            return eval_transform(self.view_spec)(img)
        return torch.stack([apply_aug(img, sample_aug_params(self.seed, source, index, k), self.view_spec)
                            for k in range(self.views)])


def _aug_array(source_key: str, start: int, stop: int, views: int, seed: int) -> np.ndarray:
    """float32 ``[S, K, 5]``: the crop/flip parameters of rows ``[start, stop)`` x K views."""
    from edgedistill.data.transforms import sample_aug_params

    return np.array([[[p.top, p.left, p.height, p.width, float(p.flip)]
                      for p in (sample_aug_params(seed, source_key, i, k) for k in range(views))]
                     for i in range(start, stop)], dtype=np.float32).reshape(stop - start, views, 5)


def _teacher_arrays(teacher, source, start: int, stop: int, plan: dict, *, batch_size: int, num_workers: int,
                    pbar) -> dict[str, np.ndarray]:
    """The teacher's outputs on source rows ``[start, stop)``: embedding (+ logits), valid, (+ aug params)."""
    from edgedistill.data.splits import SplitDataset, SplitPart, collate_skip_bad

    K, D, C = plan["view"]["views"], plan["D"], plan["C"]
    n = stop - start
    rows_shape = (n, K) if K else (n,)
    arrays = {"embedding": np.zeros((*rows_shape, D), dtype=np.float16)}  # bad rows stay zero
    if C:
        arrays["logits"] = np.zeros((*rows_shape, C), dtype=np.float16)
    arrays["valid"] = np.zeros(n, dtype=bool)
    if K:
        arrays["aug"] = _aug_array(source.key, start, stop, K, plan["view"]["seed"])
    dataset = SplitDataset({source.key: source}, [SplitPart(source.key, np.arange(start, stop), True)],
                           TeacherViews(teacher.view, K, plan["view"]["seed"]))
    device = teacher.device
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_skip_bad,
                        pin_memory=device.type == "cuda")
    with torch.inference_mode():
        for batch in loader:
            if batch is None:  # every image of the batch unreadable (each warned once by SplitDataset)
                pbar.update(batch_size)
                continue
            x = batch["image"].to(device, non_blocking=True)  # [B, 3, H, W] or [B, K, 3, H, W]
            out = teacher(x.flatten(0, 1) if K else x)
            rows = batch["index"].numpy() - start
            b = len(rows)
            arrays["embedding"][rows] = out["embedding"].float().cpu().numpy().reshape(b, *rows_shape[1:], D)
            if C:
                arrays["logits"][rows] = out["logits"].float().cpu().numpy().reshape(b, *rows_shape[1:], C)
            arrays["valid"][rows] = True
            pbar.update(b + batch["n_bad"])
    return arrays


def _write_shard(folder: Path, k: int, start: int, stop: int, arrays: dict[str, np.ndarray], seconds: float,
                 rank: int) -> None:
    """Write shard ``k``'s arrays, then its meta (sizes, checksums) last: its presence marks the shard complete."""
    stem = _shard_stem(k)
    files = {name: f"{stem}.{name}.npy" for name in arrays}
    checksums = {}
    for name, array in arrays.items():
        storage.save_npy(folder / files[name], array)
        path = folder / files[name]
        checksums[name] = {"size": path.stat().st_size, "sha256": storage.file_sha256(path)}
    meta = {"index": k, "start": start, "stop": stop, "bad": int(len(arrays["valid"]) - arrays["valid"].sum()),
            "seconds": round(seconds, 4), "rank": rank, "files": files, "checksums": checksums}
    storage.write_json(folder / f"{stem}.meta.json", meta)


def _write_manifest(folder: Path, plan: dict) -> dict:
    metas = [storage.read_json(folder / f"{_shard_stem(k)}.meta.json") for k in range(plan["num_shards"])]
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


def rank_world(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """This process's (rank, world size): explicit arguments, else torchrun's ``RANK`` / ``WORLD_SIZE``, else SLURM's
    ``SLURM_PROCID`` / ``SLURM_NTASKS`` (one ``srun`` task per process)."""
    env = os.environ
    launcher = ("RANK", "WORLD_SIZE") if "WORLD_SIZE" in env else ("SLURM_PROCID", "SLURM_NTASKS")
    world = int(env.get(launcher[1], 1)) if world_size is None else world_size
    r = int(env.get(launcher[0], 0)) if rank is None else rank
    if not 0 <= r < world:
        raise EdgeDistillError(f"rank={r} is out of range for world_size={world}")
    return r, world


class _ShardLock:
    """An exclusive, non-blocking ``flock`` on ``shard_k.lock``: released when the holder exits or dies."""

    def __init__(self, path: Path) -> None:
        self.path, self.fd = path, -1

    def acquire(self, block: bool = False) -> bool:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
            return True
        except BlockingIOError:
            os.close(self.fd)
            self.fd = -1
            return False

    def release(self) -> None:
        if self.fd >= 0:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = -1


@dataclass
class CacheJob:
    """One cache folder and its plan (what is computed, from which source, in which view)."""

    folder: Path
    plan: dict

    def check(self, recorded: dict) -> None:
        """Refuse to continue a folder whose recorded plan is another computation."""
        if recorded.get("format") != FORMAT_VERSION:
            raise CacheMismatchError(f"Cache {str(self.folder)!r} has format {recorded.get('format')}, this version "
                                     f"writes format {FORMAT_VERSION}; delete the folder to recompute it")
        if "teacher" in self.plan:
            _check_identity(self.folder, recorded, self.plan["teacher"]["fingerprint"],
                            self.plan["source"]["identity"], self.plan["view"])
        elif recorded.get("source") != self.plan["source"] or recorded.get("view") != self.plan["view"]:
            raise CacheMismatchError(f"Cache {str(self.folder)!r} holds another source or view; delete the folder")


def _job(folder: Path, plan: dict, shard_size: int) -> CacheJob:
    """A job for ``plan`` in ``folder``; an existing plan or manifest there must be the same computation."""
    job = CacheJob(folder, storage.jsonable(plan))
    for recorded_path in (folder / "manifest.json", folder / "plan.json"):
        if recorded_path.exists():  # resuming or repairing: the finished shards must come from the same computation
            old = storage.read_json(recorded_path)
            job.check(old)
            if old["shard_size"] != shard_size:
                say(f"{folder}: continuing with its recorded shard_size={old['shard_size']} (asked: {shard_size})")
            job.plan = {k: old[k] for k in job.plan}
            return job
    storage.write_json(folder / "plan.json", job.plan)  # every rank writes the same content; rename keeps it whole
    return job


def plan_cache(teacher, source, cache_dir: str | os.PathLike, *, views: int = 0, seed: int = 0,
               shard_size: int = 1024) -> CacheJob:
    """The teacher cache folder and plan of one source; an existing plan is checked (a resume must be the same computation).

    Raises:
        CacheMismatchError: the folder holds a cache of another teacher, source or view.
    """
    if shard_size < 1:
        raise EdgeDistillError(f"shard_size={shard_size} must be >= 1")
    view = {"name": view_name(views, seed), "teacher_view": teacher.view.to_dict(), "views": views, "seed": seed}
    n = len(source)
    if n == 0:
        raise DataError(f"Source {source.key!r} has no images; nothing to cache")
    plan = {
        "format": FORMAT_VERSION,
        "teacher": {"fingerprint": teacher.fingerprint, "name": getattr(teacher, "name", type(teacher).__name__)},
        "source": {"key": source.key, "identity": source.identity()},
        "view": view, "N": n, "D": int(teacher.embed_dim), "C": int(teacher.num_classes or 0),
        "shard_size": shard_size, "num_shards": -(-n // shard_size),
    }
    return _job(cache_path(cache_dir, teacher.fingerprint, source.key, view["name"]), plan, shard_size)


def run_shards(job: CacheJob, compute, desc: str, *, rank: int | None = None, world_size: int | None = None,
               wait_timeout: float = 24 * 3600.0) -> None:
    """Compute every unfinished or damaged shard of ``job`` this process can claim, then wait for the manifest.

    Args:
        job: the folder and plan.
        compute: ``compute(start, stop, pbar) -> {name: array}`` for the rows of one shard (``valid`` included).
        desc: progress bar label.
        rank, world_size: this process's place among several; default from env ``RANK``/``WORLD_SIZE``.
        wait_timeout: seconds to wait for shards other processes hold.
    """
    rank, world = rank_world(rank, world_size)
    folder, plan = job.folder, job.plan
    K, S, N = plan["num_shards"], plan["shard_size"], plan["N"]
    if (folder / "manifest.json").exists():
        damaged = {k: why for k in range(K) if (why := _check_shard(folder, plan, k))}
        if not damaged:
            return
        for k, why in damaged.items():
            say(f"{folder}: recomputing shard {k} ({why})")
            (folder / f"{_shard_stem(k)}.meta.json").unlink(missing_ok=True)
        (folder / "manifest.json").unlink(missing_ok=True)

    def claim_and_compute(k: int, block: bool, pbar) -> bool:
        lock = _ShardLock(folder / f"{_shard_stem(k)}.lock")
        if not lock.acquire(block):
            return False  # another process is computing it
        try:
            if _check_shard(folder, plan, k, full=False):  # not finished by someone else meanwhile
                t0 = time.perf_counter()
                start, stop = k * S, min((k + 1) * S, N)
                arrays = compute(start, stop, pbar)
                _write_shard(folder, k, start, stop, arrays, time.perf_counter() - t0, rank)
        finally:
            lock.release()
        return True

    todo = [k for k in range(K) if _check_shard(folder, plan, k, full=False)]
    if todo:
        offset = rank * K // world
        todo.sort(key=lambda k: (k - offset) % K)  # each rank starts at its own offset
        rows = sum(min((k + 1) * S, N) - k * S for k in todo)
        # Several processes share the shards: each bar counts about its share.
        with progress(-(-rows // world), desc + (f" [rank {rank}/{world}]" if world > 1 else ""),
                      position=rank if world > 1 else None) as pbar:
            waiting = [k for k in todo if not claim_and_compute(k, False, pbar)]
            for k in waiting:  # block until its holder is done (or died), then take it over if unfinished
                claim_and_compute(k, True, pbar)
    deadline = time.monotonic() + wait_timeout
    while not (folder / "manifest.json").exists():
        if not any(_check_shard(folder, plan, k, full=False) for k in range(K)):
            _write_manifest(folder, plan)  # several processes may race here: same shards, atomic rename
            break
        if time.monotonic() > deadline:  # ranks on other machines (no shared lock) still working
            missing = [k for k in range(K) if _check_shard(folder, plan, k, full=False)]
            raise EdgeDistillError(f"Timed out after {wait_timeout:.0f}s waiting for other ranks to cache shards "
                                   f"{missing} of {str(folder)!r}; rerun to resume")
        time.sleep(0.5)


def run_cache(teacher, source, job: CacheJob, *, batch_size: int = 128, num_workers: int = 2, rank: int | None = None,
              world_size: int | None = None) -> TeacherCache:
    """Compute (or repair) a teacher cache job, then open it."""
    if batch_size < 1:
        raise EdgeDistillError(f"batch_size={batch_size} must be >= 1")

    def compute(start: int, stop: int, pbar) -> dict[str, np.ndarray]:
        return _teacher_arrays(teacher, source, start, stop, job.plan, batch_size=batch_size, num_workers=num_workers,
                               pbar=pbar)

    view = job.plan["view"]["name"]
    run_shards(job, compute, f"teacher on {source.key}" + ("" if view == EVAL_VIEW else f" ({view})"), rank=rank,
               world_size=world_size)
    # run_shards has just verified every shard (or written it): open without hashing them again.
    return TeacherCache.open(job.folder, expected_fingerprint=teacher.fingerprint,
                             expected_source=job.plan["source"]["identity"], expected_view=job.plan["view"], verify=False)


def cache_source(teacher, source, cache_dir: str | os.PathLike, *, views: int = 0, seed: int = 0,
                 shard_size: int = 1024, batch_size: int = 128, num_workers: int = 2, rank: int | None = None,
                 world_size: int | None = None) -> TeacherCache:
    """Compute (or repair) one source's teacher outputs, then open the cache.

    Args:
        teacher: a ``Teacher`` (``forward(x [B, 3, H, W]) -> {"embedding": [B, D], "logits": [B, C]}``,
            ``view``, ``fingerprint``, ``embed_dim``, ``num_classes``), already on its device.
        source: a ``data.Source`` (``key``, ``load(i)``, ``identity()``, ``len``).
        cache_dir: the cache root.
        views: 0 for the plain teacher view; K > 0 for K augmented views per image.
        seed: seed of the augmented views' parameters.
        shard_size: rows per shard (the unit of resume, repair and of work shared between processes).
        batch_size: images per teacher forward (with K views: ``batch_size`` images x K views).
        num_workers: DataLoader processes decoding images.
        rank, world_size: this process's place among several; default from env ``RANK``/``WORLD_SIZE``.

    Raises:
        CacheMismatchError: the folder holds a cache of another teacher, source or view.
    """
    job = plan_cache(teacher, source, cache_dir, views=views, seed=seed, shard_size=shard_size)
    return run_cache(teacher, source, job, batch_size=batch_size, num_workers=num_workers, rank=rank,
                     world_size=world_size)


# ----------------------------------------------------------------------------- pixels


class PixelCache:
    """A source's images decoded once at a view's geometry: uint8 ``[N, S, S, 3]`` memory maps, and ``valid [N]``.

    The training data path reads batches of rows from here and augments them with tensor ops,
    so no JPEG is decoded twice. The pixels are exactly ``data.views.resize(image, view)``, so a
    student evaluated from them sees what ``data.views.preprocess`` (export, predict) gives it.
    """

    def __init__(self, path: Path, manifest: dict) -> None:
        self.path, self.manifest = Path(path), manifest
        self.pixels = ShardedArray([storage.load_npy(self.path / s["pixels"]) for s in manifest["shards"]])
        self.valid = np.asarray(ShardedArray([storage.load_npy(self.path / s["valid"]) for s in manifest["shards"]]))

    def __len__(self) -> int:
        return int(self.manifest["N"])


def _geometry(view) -> dict:
    """The parts of a view that decide the pixels (normalisation is applied per batch, later)."""
    d = view.to_dict()
    return {k: d[k] for k in ("image_size", "interpolation", "resize_mode", "crop_pct", "fill")}


class _Resized:
    """``transform(pil, source, index) -> uint8 Tensor [S, S, 3]``: the view's geometry, no normalisation."""

    def __init__(self, view) -> None:
        self.view = view

    def __call__(self, img, source: str, index: int) -> torch.Tensor:
        from edgedistill.data.views import resize

        return torch.from_numpy(np.asarray(resize(img, self.view)).copy())


def pixel_cache(source, view, cache_dir: str | os.PathLike = DEFAULT_CACHE_DIR, *, shard_size: int = 4096,
                batch_size: int = 256, num_workers: int = 0, rank: int | None = None,
                world_size: int | None = None) -> PixelCache:
    """Decode (once) every image of ``source`` at ``view``'s geometry; returns the memory-mapped pixels.

    The folder is named by a hash of the source's identity and the geometry, so changed data or
    another size is another cache, never a mismatch. Same shard machinery as the teacher cache.
    """
    import hashlib

    from edgedistill.data.splits import SplitDataset, SplitPart, collate_skip_bad

    geometry = _geometry(view)
    key = hashlib.sha256(json.dumps([storage.jsonable(source.identity()), geometry], sort_keys=True).encode()).hexdigest()
    S = geometry["image_size"]
    folder = (Path(cache_dir).expanduser() / "pixels" / key[:_FP_CHARS] / source.key
              / f"{S}px-{geometry['resize_mode']}-{geometry['interpolation']}")
    n = len(source)
    plan = {"format": FORMAT_VERSION, "producer": "pixels", "source": {"key": source.key, "identity": source.identity()},
            "view": geometry, "N": n, "shard_size": shard_size, "num_shards": -(-n // shard_size)}
    job = _job(folder, plan, shard_size)

    def compute(start: int, stop: int, pbar) -> dict[str, np.ndarray]:
        pixels = np.zeros((stop - start, S, S, 3), dtype=np.uint8)
        valid = np.zeros(stop - start, dtype=bool)
        dataset = SplitDataset({source.key: source}, [SplitPart(source.key, np.arange(start, stop), True)], _Resized(view))
        for batch in DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_skip_bad):
            if batch is None:
                pbar.update(batch_size)
                continue
            rows = batch["index"].numpy() - start
            pixels[rows], valid[rows] = batch["image"].numpy(), True
            pbar.update(len(rows) + batch["n_bad"])
        return {"pixels": pixels, "valid": valid}

    run_shards(job, compute, f"decode {source.key} at {S}px", rank=rank, world_size=world_size)
    return PixelCache(folder, storage.read_json(folder / "manifest.json"))


# ----------------------------------------------------------------------------- datasets and the command


def _spawn_worker(rank: int, world: int, data_cfg: DataConfig, teacher_cfg: TeacherConfig, split_spec: str,
                  cache_dir: str, kwargs: dict) -> None:
    """One ``--devices N`` process: its own device (``cuda:rank`` or cpu), its share of every source's shards."""
    from edgedistill.data.splits import build_splits
    from edgedistill.teachers import create_teacher

    if torch.cuda.is_available() and teacher_cfg.device != "cpu":
        teacher_cfg = dataclasses.replace(teacher_cfg, device=f"cuda:{rank}")
    else:
        teacher_cfg = dataclasses.replace(teacher_cfg, device="cpu")
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))  # share the cores instead of oversubscribing
    splits = build_splits(data_cfg)
    teacher = create_teacher(teacher_cfg, cache_dir)
    for key in splits.sources_of(split_spec):
        cache_source(teacher, splits.sources[key], cache_dir, rank=rank, world_size=world, **kwargs)


def ensure_cache(
    data_cfg: DataConfig,
    teacher_cfg: TeacherConfig,
    split_spec: str,
    cache_dir: str | os.PathLike = DEFAULT_CACHE_DIR,
    *,
    views: int = 0,
    seed: int = 0,
    devices: int = 1,
    shard_size: int = 1024,
    num_workers: int = 2,
    teacher=None,
    splits=None,
) -> dict[str, TeacherCache]:
    """Make sure every source touched by ``split_spec`` is cached (and sound); return the caches by source key.

    Args:
        data_cfg: the dataset (its sources are cached whole, so re-splitting never invalidates a cache).
        teacher_cfg: the teacher (``batch_size``, ``device`` are used here).
        split_spec: splits joined with ``+``, e.g. ``"train+val+unlabeled"``.
        cache_dir: the cache root.
        views: 0 for the plain view, K for K augmented views per image.
        seed: seed of the augmented views.
        devices: processes to spawn, each with its own device (``cuda:r``, or cpu). Under torchrun
            (``WORLD_SIZE`` set) leave it at 1: every launched process takes its share of the shards.
        shard_size: rows per shard.
        num_workers: image-decoding workers per process.
        teacher: an already created teacher for ``teacher_cfg`` (avoids loading it twice).
        splits: already built ``DataSplits`` for ``data_cfg``.

    Returns:
        ``{source_key: TeacherCache}``.
    """
    from edgedistill.data.splits import build_splits
    from edgedistill.teachers import create_teacher

    if devices < 1:
        raise EdgeDistillError(f"devices={devices} must be >= 1")
    devices = max(devices, teacher_cfg.processes) if rank_world()[1] == 1 else devices  # under torchrun: its ranks
    splits = build_splits(data_cfg) if splits is None else splits
    keys = splits.sources_of(split_spec)
    cache_dir = str(Path(cache_dir).expanduser())
    kwargs = {"views": views, "seed": seed, "shard_size": shard_size, "batch_size": teacher_cfg.batch_size,
              "num_workers": num_workers}
    teacher = create_teacher(teacher_cfg, cache_dir) if teacher is None else teacher
    view = view_name(views, seed)
    missing = [k for k in keys if not (cache_path(cache_dir, teacher.fingerprint, k, view) / "manifest.json").exists()]
    if devices > 1 and missing:
        import torch.multiprocessing as mp

        # each process computes its share of the shards of every source and exits; we then open the results
        mp.spawn(_spawn_worker, args=(devices, data_cfg, teacher_cfg, split_spec, cache_dir, kwargs), nprocs=devices)
    return {key: cache_source(teacher, splits.sources[key], cache_dir, **kwargs) for key in keys}


def cache_command(
    data: DataConfig = DataConfig(),
    teacher: TeacherConfig = TeacherConfig(),
    split: str = "train+val+unlabeled",
    cache_dir: str = DEFAULT_CACHE_DIR,
    views: int = 0,
    seed: int = 0,
    shard_size: int = 1024,
    num_workers: int = 2,
    devices: int = 1,
) -> None:
    """Compute and store teacher outputs (embeddings, logits) for every source of a split; repair damaged shards.

    Args:
        data: the dataset.
        teacher: the teacher.
        split: splits to cover, joined with ``+`` (whole sources are cached).
        cache_dir: where caches live (``<cache_dir>/<fingerprint[:16]>/<source>/<view>/``).
        views: 0: the teacher's plain view; K: K augmented views per image (crop/flip stored).
        seed: seed of the augmented views.
        shard_size: images per shard (unit of resume, repair and of the work shared between processes).
        num_workers: image-decoding workers per process.
        devices: processes, each with its own GPU (or CPU share); under torchrun leave at 1.
    """
    t0 = time.perf_counter()
    caches = ensure_cache(data, teacher, split, cache_dir, views=views, seed=seed, devices=devices,
                          shard_size=shard_size, num_workers=num_workers)
    if rank_world()[0] != 0:
        return
    print(format_summary(caches))
    print(f"done in {time.perf_counter() - t0:.1f}s")


def cache(
    data: DataConfig | dict | str | os.PathLike | None = None,
    teacher: TeacherConfig | dict | str | os.PathLike | None = None,
    *,
    split: str = "train+val+unlabeled",
    cache_dir: str = DEFAULT_CACHE_DIR,
    views: int = 0,
    seed: int = 0,
    num_workers: int = 2,
    devices: int = 1,
) -> dict[str, TeacherCache]:
    """Python API (``edgedistill.cache(...)``): the teacher's outputs for every source of ``split``, computed once.

    Args:
        data: the dataset: a ``DataConfig``, a mapping of its fields or a YAML file of them; None: the defaults.
        teacher: the teacher, likewise (``TeacherConfig``).
        split: splits to cover, joined with ``+``.
        cache_dir: where caches live.
        views: 0: the plain view; K: K augmented views per image.
        seed: seed of the augmented views.
        num_workers: image-decoding workers per process.
        devices: processes computing the cache together.

    Returns:
        ``{source key: TeacherCache}`` (``.embedding [N, D]``, ``.logits [N, C]`` or None, ``.valid``, ``.manifest``).
    """
    from edgedistill.config import load_config

    return ensure_cache(load_config(DataConfig, data), load_config(TeacherConfig, teacher), split, cache_dir,
                        views=views, seed=seed, devices=devices, num_workers=num_workers)


class _CallableModule(types.ModuleType):
    """``edgedistill.cache`` is this module and the API function :func:`cache` at once (as the package's
    ``distill``, ``train`` and ``export`` are functions): calling the module calls it."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict[str, TeacherCache]:
        return cache(*args, **kwargs)


def format_summary(caches: dict[str, TeacherCache]) -> str:
    """A markdown table: per source N, bad images, images/s and the cache folder."""
    lines = ["| source | N | D | C | bad | images/s | path |", "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for key, c in caches.items():
        m = c.manifest
        lines.append(f"| {key} | {m['N']} | {m['D']} | {m['C'] or '-'} | {m['bad']} | {m['images_per_s']} | {c.path} |")
    return "\n".join(lines)


sys.modules[__name__].__class__ = _CallableModule  # last: calling edgedistill.cache calls cache()
