"""``edgedistill cache``: compute and store a split's teacher outputs, and print what was cached."""

from __future__ import annotations

import time

from edgedistill.cache.ensure import ensure_cache
from edgedistill.cache.shards import rank_world
from edgedistill.cache.store import TeacherCache
from edgedistill.config import DEFAULT_CACHE_DIR, DataConfig, TeacherConfig


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
        cache_dir: where caches live (``<cache_dir>/<fingerprint[:16]>/<source>/<source id>/<view>/``).
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


def format_summary(caches: dict[str, TeacherCache]) -> str:
    """A markdown table: per source N, bad images, images/s and the cache folder."""
    lines = ["| source | N | D | C | bad | images/s | path |", "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for key, c in caches.items():
        m = c.manifest
        lines.append(f"| {key} | {m['N']} | {m['D']} | {m['C'] or '-'} | {m['bad']} | {m['images_per_s']} | {c.path} |")
    return "\n".join(lines)


__all__ = ["cache_command", "format_summary"]
