"""Teacher-output cache: the teacher runs once per (fingerprint, source, view), students read memory maps.

Layout, one folder per (teacher, source, view)::

    <cache_dir>/<teacher.fingerprint[:16]>/<source.key>/<view>/
        plan.json                      what is being computed (written first, checked on resume)
        shard_00000.embedding.npy      float16 [S, D]  or [S, K, D] for K augmented views
        shard_00000.logits.npy         float16 [S, C]  (classifier teachers only)
        shard_00000.valid.npy          bool [S]        False: unreadable image, its rows are zero
        shard_00000.aug.npy            float32 [S, K, 5] AugParams (top, left, height, width, flip)
        shard_00000.meta.json          rows, bad count, seconds
        manifest.json                  written last: the cache is complete

``view`` is ``"eval"`` (the teacher's plain view) or ``"aug{K}-s{seed}"`` (K augmented views
whose crop/flip parameters come from ``data.transforms.sample_aug_params``, so a student can
train on exactly the crop the teacher saw).

Shard ``k`` covers source indices ``[k*S, (k+1)*S)``. Every file is written atomically and the
embedding file is written last, so "embedding file exists" means "shard complete": a job killed
with SIGKILL resumes where it stopped and never recomputes a finished shard. Several processes
(``--devices N``, or torchrun's ``RANK``/``WORLD_SIZE``) split the shards by rank
(``k % world == rank``); whichever finds every shard present writes ``manifest.json``.

Reading: :class:`TeacherCache` exposes each array as a :class:`ShardedArray`, a thin view that
concatenates the shard memory maps (``np.load(mmap_mode="r")``) without copying them.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from edgedistill import storage
from edgedistill.config import DataConfig, TeacherConfig
from edgedistill.errors import CacheMismatchError, DataError, EdgeDistillError

FORMAT_VERSION = 1
EVAL_VIEW = "eval"
_FP_CHARS = 16  # fingerprint prefix used as folder name
_SLEEP_ENV = "EDGEDISTILL_CACHE_TEST_SLEEP"  # seconds to sleep after each shard (resume test only)


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
            return ShardedArray([np.load(self.path / s[suffix], mmap_mode="r") for s in shards])

        self.embedding = load("embedding")
        self.logits = load("logits") if manifest["C"] else None
        # valid is tiny: keep it as a plain array so boolean masks are cheap
        self.valid = np.asarray(load("valid"))
        self.aug_params = load("aug") if manifest["view"]["views"] else None

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
    ) -> "TeacherCache":
        """Open a finished cache, refusing one produced by another teacher, source or view.

        Args:
            path: the cache folder (holding ``manifest.json``).
            expected_fingerprint: the requesting teacher's ``fingerprint``.
            expected_source: ``Source.identity()`` of the requested source; None skips the check.
            expected_view: the view dict (``{"name", "teacher_view", "views", "seed"}``); None skips it.

        Raises:
            CacheMismatchError: a recorded fingerprint, source identity or view differs (names both).
            EdgeDistillError: there is no complete cache at ``path``.
        """
        path = Path(path).expanduser()
        mpath = path / "manifest.json"
        if not mpath.exists():
            raise EdgeDistillError(
                f"No complete teacher cache at {str(path)!r} (manifest.json missing); run 'edgedistill cache' first"
            )
        manifest = storage.read_json(mpath)
        _check_identity(path, manifest, expected_fingerprint, expected_source, expected_view)
        return cls(path, manifest)


def _jsonable(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (tuples → lists, numpy → Python), for comparisons."""
    return json.loads(json.dumps(obj, default=storage._json_default))


def _check_identity(
    path: Path, recorded: dict, fingerprint: str, source: dict | None, view: dict | None
) -> None:
    got = recorded["teacher"]["fingerprint"]
    if got != fingerprint:
        raise CacheMismatchError(
            f"Teacher cache {str(path)!r} was made by teacher fingerprint {got!r}, "
            f"but the requested teacher has fingerprint {fingerprint!r}. Use another cache_dir or delete the folder."
        )
    if source is not None and recorded["source"]["identity"] != _jsonable(source):
        raise CacheMismatchError(
            f"Teacher cache {str(path)!r} holds source {json.dumps(recorded['source']['identity'])}, "
            f"but the requested source is {json.dumps(_jsonable(source))} (the data changed?). "
            "Delete the folder to recompute it."
        )
    if view is not None and recorded["view"] != _jsonable(view):
        raise CacheMismatchError(
            f"Teacher cache {str(path)!r} holds view {json.dumps(recorded['view'])}, "
            f"but the requested view is {json.dumps(_jsonable(view))}. Delete the folder to recompute it."
        )


# ----------------------------------------------------------------------------- computing


class _ShardImages(Dataset):
    """The teacher's input for source rows ``[start, stop)``: one view, or K augmented views.

    Items are dicts ``{"index": int, "image": Tensor [3, H, W] | [K, 3, H, W] | None, "error": str}``;
    an unreadable image gives ``image=None`` so the batch keeps going.
    """

    def __init__(self, source, start: int, stop: int, view_spec, aug: list[list[Any]] | None) -> None:
        from edgedistill.data.transforms import eval_transform

        self.source, self.start, self.stop = source, start, stop
        self.view_spec, self.aug = view_spec, aug
        self.transform = eval_transform(view_spec)

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, j: int) -> dict:
        from edgedistill.data.sources import BadImageError
        from edgedistill.data.transforms import apply_aug

        i = self.start + j
        try:
            img = self.source.load(i)
        except BadImageError as e:
            return {"index": i, "image": None, "error": str(e)}
        if self.aug is None:
            x = self.transform(img)
        else:
            x = torch.stack([apply_aug(img, p, self.view_spec) for p in self.aug[j]])
        return {"index": i, "image": x, "error": ""}


def _collate(items: list[dict]) -> dict:
    """Stack the readable images; keep the unreadable ones' indices and errors for the warning."""
    good = [it for it in items if it["image"] is not None]
    return {
        "index": torch.tensor([it["index"] for it in good], dtype=torch.long),
        "image": torch.stack([it["image"] for it in good]) if good else None,
        "bad": [(it["index"], it["error"]) for it in items if it["image"] is None],
    }


def _progress_disabled() -> bool:
    return os.environ.get("EDGEDISTILL_NO_PROGRESS", "") not in ("", "0")


def _teacher_device(teacher: torch.nn.Module) -> torch.device:
    for p in teacher.parameters():
        return p.device
    return torch.device("cpu")


def _aug_params(source, start: int, stop: int, views: int, seed: int, view_spec) -> tuple[list[list[Any]], np.ndarray]:
    """AugParams objects for rows ``[start, stop)`` x K views, and the same as float32 ``[S, K, 5]``."""
    from edgedistill.data.transforms import sample_aug_params

    objs = [[sample_aug_params(seed, source.key, i, k) for k in range(views)] for i in range(start, stop)]
    arr = np.array(
        [[[p.top, p.left, p.height, p.width, float(p.flip)] for p in row] for row in objs], dtype=np.float32
    ).reshape(stop - start, views, 5)
    return objs, arr


def _shard_files(k: int, with_logits: bool, with_aug: bool) -> dict[str, str]:
    stem = f"shard_{k:05d}"
    files = {"embedding": f"{stem}.embedding.npy", "valid": f"{stem}.valid.npy", "meta": f"{stem}.meta.json"}
    if with_logits:
        files["logits"] = f"{stem}.logits.npy"
    if with_aug:
        files["aug"] = f"{stem}.aug.npy"
    return files


def _compute_shard(
    teacher: torch.nn.Module,
    source,
    folder: Path,
    k: int,
    plan: dict,
    *,
    batch_size: int,
    num_workers: int,
    pbar,
    rank: int = 0,
) -> dict:
    """Run the teacher on shard ``k`` and write its files (embedding last). Returns its meta."""
    S, N, K, D, C = plan["shard_size"], plan["N"], plan["view"]["views"], plan["D"], plan["C"]
    start, stop = k * S, min((k + 1) * S, N)
    n = stop - start
    t0 = time.perf_counter()
    aug_objs, aug_arr = _aug_params(source, start, stop, K, plan["view"]["seed"], teacher.view) if K else (None, None)
    rows_shape = (n, K) if K else (n,)
    emb = np.zeros((*rows_shape, D), dtype=np.float16)  # bad rows stay zero
    logits = np.zeros((*rows_shape, C), dtype=np.float16) if C else None
    valid = np.zeros(n, dtype=bool)
    bad = 0
    from edgedistill.data.splits import BadImageWarning

    loader = DataLoader(
        _ShardImages(source, start, stop, teacher.view, aug_objs),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=_collate,
        pin_memory=_teacher_device(teacher).type == "cuda",
    )
    device = _teacher_device(teacher)
    with torch.inference_mode():
        for batch in loader:
            for i, err in batch["bad"]:
                warnings.warn(f"skipping unreadable image {source.key}[{i}]: {err}", BadImageWarning, stacklevel=1)
            bad += len(batch["bad"])
            if batch["image"] is not None:
                x = batch["image"].to(device, non_blocking=True)  # [B, 3, H, W] or [B, K, 3, H, W]
                out = teacher(x.flatten(0, 1) if K else x)
                rows = (batch["index"] - start).numpy()
                b = len(rows)
                emb[rows] = out["embedding"].float().cpu().numpy().reshape(b, *rows_shape[1:], D)
                if C:
                    logits[rows] = out["logits"].float().cpu().numpy().reshape(b, *rows_shape[1:], C)
                valid[rows] = True
            if pbar is not None:
                pbar.update(len(batch["index"]) + len(batch["bad"]))
    seconds = time.perf_counter() - t0
    files = _shard_files(k, C > 0, K > 0)
    meta = {"index": k, "start": start, "stop": stop, "bad": bad, "seconds": round(seconds, 4), "rank": rank,
            "files": files}
    if K:
        storage.save_npy(folder / files["aug"], aug_arr)
    if C:
        storage.save_npy(folder / files["logits"], logits)
    storage.save_npy(folder / files["valid"], valid)
    storage.write_json(folder / files["meta"], meta)
    storage.save_npy(folder / files["embedding"], emb)  # last: its presence marks the shard complete
    return meta


def _shard_done(folder: Path, k: int) -> bool:
    return (folder / f"shard_{k:05d}.embedding.npy").exists()


def _write_manifest(folder: Path, plan: dict) -> dict:
    metas = [storage.read_json(folder / f"shard_{k:05d}.meta.json") for k in range(plan["num_shards"])]
    seconds = sum(m["seconds"] for m in metas)
    shards = [{k: m[k] for k in ("index", "start", "stop", "bad", "rank")} | m["files"] for m in metas]
    n_forward = plan["N"] * max(1, plan["view"]["views"])
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


def _rank_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    # torchrun (and Lightning) export RANK / WORLD_SIZE; explicit arguments win
    world = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else world_size
    r = int(os.environ.get("RANK", 0)) if rank is None else rank
    if not 0 <= r < world:
        raise EdgeDistillError(f"rank={r} is out of range for world_size={world}")
    return r, world


def cache_source(
    teacher: torch.nn.Module,
    source,
    cache_dir: str | os.PathLike,
    *,
    views: int = 0,
    seed: int = 0,
    shard_size: int = 1024,
    batch_size: int = 128,
    num_workers: int = 2,
    rank: int | None = None,
    world_size: int | None = None,
    wait_timeout: float = 24 * 3600.0,
) -> TeacherCache:
    """Compute the missing shards of one source's teacher outputs (this rank's share), then open the cache.

    Args:
        teacher: a ``Teacher`` (``forward(x [B, 3, H, W]) -> {"embedding": [B, D], "logits": [B, C]}``,
            ``view``, ``fingerprint``, ``embed_dim``, ``num_classes``), already on its device.
        source: a ``data.Source`` (``key``, ``load(i)``, ``identity()``, ``len``).
        cache_dir: the cache root.
        views: 0 for the plain teacher view; K > 0 for K augmented views per image.
        seed: seed of the augmented views' parameters.
        shard_size: rows per shard (the unit of resume and of work split between processes).
        batch_size: images per teacher forward (with K views: ``batch_size`` images x K views).
        num_workers: DataLoader processes decoding images.
        rank, world_size: this process's share of the shards; default from env ``RANK``/``WORLD_SIZE``.
        wait_timeout: seconds a process waits for the other ranks to finish the manifest.

    Returns:
        The opened :class:`TeacherCache`.

    Raises:
        CacheMismatchError: the folder holds a cache of another teacher, source or view.
    """
    if shard_size < 1:
        raise EdgeDistillError(f"shard_size={shard_size} must be >= 1")
    if batch_size < 1:
        raise EdgeDistillError(f"batch_size={batch_size} must be >= 1")
    rank, world = _rank_world(rank, world_size)
    fingerprint = teacher.fingerprint
    view = {"name": view_name(views, seed), "teacher_view": teacher.view.to_dict(), "views": views, "seed": seed}
    source_id = source.identity()
    folder = cache_path(cache_dir, fingerprint, source.key, view["name"])
    if (folder / "manifest.json").exists():
        return TeacherCache.open(folder, expected_fingerprint=fingerprint, expected_source=source_id, expected_view=view)

    n = len(source)
    if n == 0:
        raise DataError(f"Source {source.key!r} has no images; nothing to cache")
    plan = _jsonable(
        {
            "format": FORMAT_VERSION,
            "teacher": {"fingerprint": fingerprint, "name": getattr(teacher, "name", type(teacher).__name__)},
            "source": {"key": source.key, "identity": source_id},
            "view": view,
            "N": n,
            "D": int(teacher.embed_dim),
            "C": int(teacher.num_classes or 0),
            "shard_size": shard_size,
            "num_shards": -(-n // shard_size),
        }
    )
    plan_path = folder / "plan.json"
    if plan_path.exists():  # resuming: the finished shards must come from the same computation
        old = storage.read_json(plan_path)
        _check_identity(folder, old, fingerprint, source_id, view)
        if old["shard_size"] != shard_size:
            warnings.warn(
                f"Resuming {str(folder)!r} with its recorded shard_size={old['shard_size']} (asked: {shard_size})",
                stacklevel=2,
            )
        plan = old
    else:
        storage.write_json(plan_path, plan)  # every rank writes the same content; rename keeps it whole

    mine = [k for k in range(plan["num_shards"]) if k % world == rank and not _shard_done(folder, k)]
    todo_rows = sum(min((k + 1) * plan["shard_size"], n) - k * plan["shard_size"] for k in mine)
    if mine:
        from tqdm.auto import tqdm

        desc = f"cache {source.key}/{view['name']}" + (f" [rank {rank}/{world}]" if world > 1 else "")
        sleep_s = float(os.environ.get(_SLEEP_ENV, 0) or 0)
        with tqdm(total=todo_rows, desc=desc, unit="img", file=sys.stderr, disable=_progress_disabled()) as pbar:
            for k in mine:
                _compute_shard(
                    teacher, source, folder, k, plan, batch_size=batch_size, num_workers=num_workers, pbar=pbar,
                    rank=rank,
                )
                if sleep_s:
                    time.sleep(sleep_s)

    if all(_shard_done(folder, k) for k in range(plan["num_shards"])):
        _write_manifest(folder, plan)  # several ranks may race here: identical content, atomic rename
    else:
        # other ranks still working: poll for their manifest (a file barrier; no process group needed)
        deadline = time.monotonic() + wait_timeout
        while not (folder / "manifest.json").exists():
            if time.monotonic() > deadline:
                missing = [k for k in range(plan["num_shards"]) if not _shard_done(folder, k)]
                raise EdgeDistillError(
                    f"Timed out after {wait_timeout:.0f}s waiting for other ranks to cache shards {missing} of "
                    f"{str(folder)!r}; rerun to resume"
                )
            time.sleep(0.5)
    return TeacherCache.open(folder, expected_fingerprint=fingerprint, expected_source=source_id, expected_view=view)


# ----------------------------------------------------------------------------- datasets and the command


def sources_of(splits, spec: str) -> list[str]:
    """Keys of the sources touched by the split ``spec`` (``"train+val+unlabeled"``), in first-use order.

    A standard split this dataset lacks (e.g. ``unlabeled`` of a plain image folder) holds no
    images and is skipped; an unknown name, or a spec of only missing splits, is an error.
    """
    from edgedistill.data.splits import SPLITS

    names = [s.strip() for s in spec.split("+") if s.strip()]
    unknown = [s for s in names if s not in SPLITS and s not in splits.parts]
    present = [s for s in names if s in splits.parts]
    if not names or unknown or not present:
        raise DataError(
            f"Split {spec!r} names {unknown or names} that this dataset does not have. "
            f"Valid: {', '.join(splits.parts)} (join with '+', e.g. 'train+val')"
        )
    keys: list[str] = []
    for name in present:
        for part in splits.parts[name]:
            if len(part.indices) and part.source not in keys:
                keys.append(part.source)
    return keys


def build_teacher(teacher_cfg: TeacherConfig):
    """``create_teacher`` with torch's RNG fixed, so random-init teachers are identical in every process."""
    from edgedistill.teachers import create_teacher

    # random-init teachers (pretrained=None, tests and benchmarks) must get the same weights in
    # every process, or their fingerprints and outputs would differ between ranks
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return create_teacher(teacher_cfg)


def _spawn_worker(
    rank: int,
    world: int,
    data_cfg: DataConfig,
    teacher_cfg: TeacherConfig,
    split_spec: str,
    cache_dir: str,
    kwargs: dict,
) -> None:
    """One ``--devices N`` process: its own device (``cuda:rank`` or cpu), its share of every source's shards."""
    from edgedistill.data import build_splits

    if torch.cuda.is_available() and teacher_cfg.device != "cpu":
        teacher_cfg = dataclasses.replace(teacher_cfg, device=f"cuda:{rank}")
    else:
        teacher_cfg = dataclasses.replace(teacher_cfg, device="cpu")
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))  # share the cores instead of oversubscribing
    splits = build_splits(data_cfg)
    teacher = build_teacher(teacher_cfg)
    for key in sources_of(splits, split_spec):
        cache_source(teacher, splits.sources[key], cache_dir, rank=rank, world_size=world, **kwargs)


def ensure_cache(
    data_cfg: DataConfig,
    teacher_cfg: TeacherConfig,
    split_spec: str,
    cache_dir: str | os.PathLike,
    *,
    views: int = 0,
    seed: int = 0,
    devices: int = 1,
    shard_size: int = 1024,
    num_workers: int = 2,
    teacher: torch.nn.Module | None = None,
    splits=None,
) -> dict[str, TeacherCache]:
    """Make sure every source touched by ``split_spec`` is cached; return the caches by source key.

    Args:
        data_cfg: the dataset (its sources are cached whole, so re-splitting never invalidates a cache).
        teacher_cfg: the teacher (``batch_size``, ``device`` are used here).
        split_spec: splits joined with ``+``, e.g. ``"train+val+unlabeled"``.
        cache_dir: the cache root.
        views: 0 for the plain view, K for K augmented views per image.
        seed: seed of the augmented views.
        devices: processes to spawn, each with its own device (``cuda:r``, or cpu). Under torchrun
            (``WORLD_SIZE`` set) leave it at 1: every launched process takes its rank's shards.
        shard_size: rows per shard.
        num_workers: image-decoding workers per process.
        teacher: an already created teacher for ``teacher_cfg`` (avoids loading it twice).
        splits: already built ``DataSplits`` for ``data_cfg``.

    Returns:
        ``{source_key: TeacherCache}``.
    """
    if devices < 1:
        raise EdgeDistillError(f"devices={devices} must be >= 1")
    from edgedistill.data import build_splits

    splits = build_splits(data_cfg) if splits is None else splits
    keys = sources_of(splits, split_spec)
    cache_dir = str(Path(cache_dir).expanduser())
    kwargs = {"views": views, "seed": seed, "shard_size": shard_size, "batch_size": teacher_cfg.batch_size,
              "num_workers": num_workers}
    teacher = build_teacher(teacher_cfg) if teacher is None else teacher
    view = view_name(views, seed)
    missing = [k for k in keys if not (cache_path(cache_dir, teacher.fingerprint, k, view) / "manifest.json").exists()]
    if devices > 1 and missing:
        import torch.multiprocessing as mp

        # each process computes its rank's shards of every source and exits; we then open the results
        mp.spawn(_spawn_worker, args=(devices, data_cfg, teacher_cfg, split_spec, cache_dir, kwargs), nprocs=devices)
    return {key: cache_source(teacher, splits.sources[key], cache_dir, **kwargs) for key in keys}


def cache_command(
    data: DataConfig = DataConfig(),
    teacher: TeacherConfig = TeacherConfig(),
    split: str = "train+val+unlabeled",
    cache_dir: str = "~/.cache/edgedistill",
    views: int = 0,
    seed: int = 0,
    shard_size: int = 1024,
    num_workers: int = 2,
    devices: int = 1,
) -> None:
    """Compute and store teacher outputs (embeddings, logits) for every source of a split.

    Args:
        data: the dataset.
        teacher: the teacher.
        split: splits to cover, joined with ``+`` (whole sources are cached).
        cache_dir: where caches live (``<cache_dir>/<fingerprint[:16]>/<source>/<view>/``).
        views: 0: the teacher's plain view; K: K augmented views per image (crop/flip stored).
        seed: seed of the augmented views.
        shard_size: images per shard (unit of resume and of the split between processes).
        num_workers: image-decoding workers per process.
        devices: processes, each with its own GPU (or CPU share); under torchrun leave at 1.
    """
    t0 = time.perf_counter()
    caches = ensure_cache(data, teacher, split, cache_dir, views=views, seed=seed, devices=devices,
                          shard_size=shard_size, num_workers=num_workers)
    if int(os.environ.get("RANK", 0)) != 0:
        return
    print(format_summary(caches))
    print(f"done in {time.perf_counter() - t0:.1f}s")


def format_summary(caches: dict[str, TeacherCache]) -> str:
    """A markdown table: per source N, bad images, images/s and the cache folder."""
    lines = ["| source | N | D | C | bad | images/s | path |", "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for key, c in caches.items():
        m = c.manifest
        lines.append(f"| {key} | {m['N']} | {m['D']} | {m['C'] or '-'} | {m['bad']} | {m['images_per_s']} | {c.path} |")
    return "\n".join(lines)
