"""Every source of a split cached (and sound), by one process, several spawned ones, or the ranks of a launcher."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch
import torch.multiprocessing as mp

from edgedistill.cache.shards import rank_world
from edgedistill.cache.store import TeacherCache, cache_path, view_name
from edgedistill.cache.teacher import cache_source
from edgedistill.config import DEFAULT_CACHE_DIR, DataConfig, TeacherConfig
from edgedistill.data.splits import build_splits
from edgedistill.errors import EdgeDistillError
from edgedistill.teachers import create_teacher


def _spawn_worker(rank: int, world: int, data_cfg: DataConfig, teacher_cfg: TeacherConfig, split_spec: str,
                  cache_dir: str, kwargs: dict) -> None:
    """One ``--devices N`` process: its own device (``cuda:rank`` or cpu), its share of every source's shards."""
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
            or SLURM (``shards.rank_world``) leave it at 1: every launched process takes its share of the shards.
        shard_size: rows per shard.
        num_workers: image-decoding workers per process.
        teacher: an already created teacher for ``teacher_cfg`` (avoids loading it twice).
        splits: already built ``DataSplits`` for ``data_cfg``.

    Returns:
        ``{source_key: TeacherCache}``.
    """
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
    missing = [k for k in keys
               if not (cache_path(cache_dir, teacher.fingerprint, splits.sources[k], view) / "manifest.json").exists()]
    if devices > 1 and missing:
        # each process computes its share of the shards of every source and exits; we then open the results
        mp.spawn(_spawn_worker, args=(devices, data_cfg, teacher_cfg, split_spec, cache_dir, kwargs), nprocs=devices)
    return {key: cache_source(teacher, splits.sources[key], cache_dir, **kwargs) for key in keys}


__all__ = ["ensure_cache"]
