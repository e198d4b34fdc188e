"""Computing a source's teacher outputs: the teacher's input views, its forward pass over a shard's rows, and the job.

``view`` is ``"eval"`` (the teacher's plain view) or ``"aug{K}-s{seed}"`` (K augmented views whose
crop/flip parameters come from ``data.transforms.sample_aug_params``, so a student can train on
exactly the crop the teacher saw).
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch.utils.data import DataLoader

from edgedistill.cache.shards import CacheJob, make_job, run_shards
from edgedistill.cache.store import EVAL_VIEW, FORMAT_VERSION, TeacherCache, cache_path, view_name
from edgedistill.console import say
from edgedistill.data.splits import SplitDataset, SplitPart, collate_skip_bad
from edgedistill.data.transforms import apply_aug, eval_transform, sample_aug_params
from edgedistill.errors import DataError, EdgeDistillError


class TeacherViews:
    """The teacher's input for one image: its plain view, or its K cached augmented crops.

    Called as ``transform(pil, source, index)`` by ``SplitDataset``; picklable for workers.

    Returns:
        ``Tensor [3, H, W]``, or ``[K, 3, H, W]`` with ``views=K``.
    """

    def __init__(self, view_spec, views: int = 0, seed: int = 0) -> None:
        self.view_spec, self.views, self.seed = view_spec, views, seed

    def __call__(self, img, source: str, index: int) -> torch.Tensor:
        if not self.views:
            return eval_transform(self.view_spec)(img)
        return torch.stack([apply_aug(img, sample_aug_params(self.seed, source, index, k), self.view_spec)
                            for k in range(self.views)])


def aug_array(source_key: str, start: int, stop: int, views: int, seed: int) -> np.ndarray:
    """float32 ``[S, K, 5]``: the crop/flip parameters of rows ``[start, stop)`` x K views."""
    return np.array([[[p.top, p.left, p.height, p.width, float(p.flip)]
                      for p in (sample_aug_params(seed, source_key, i, k) for k in range(views))]
                     for i in range(start, stop)], dtype=np.float32).reshape(stop - start, views, 5)


def teacher_arrays(teacher, source, start: int, stop: int, plan: dict, *, batch_size: int, num_workers: int,
                    pbar) -> dict[str, np.ndarray]:
    """The teacher's outputs on source rows ``[start, stop)``: embedding (+ logits), valid, (+ aug params)."""
    K, D, C = plan["view"]["views"], plan["D"], plan["C"]
    n = stop - start
    rows_shape = (n, K) if K else (n,)
    arrays = {"embedding": np.zeros((*rows_shape, D), dtype=np.float16)}  # bad rows stay zero
    if C:
        arrays["logits"] = np.zeros((*rows_shape, C), dtype=np.float16)
    arrays["valid"] = np.zeros(n, dtype=bool)
    if K:
        arrays["aug"] = aug_array(source.key, start, stop, K, plan["view"]["seed"])
    dataset = SplitDataset({source.key: source}, [SplitPart(source.key, np.arange(start, stop), True)],
                           TeacherViews(teacher.view, K, plan["view"]["seed"]))
    device = teacher.device
    # batch_size counts teacher forwards: with K views a batch is batch_size // K images x K views (at least
    # one image), so the pixels held (in the loader's prefetch and in one forward) do not grow with K.
    images = max(1, batch_size // K) if K else batch_size
    loader = DataLoader(dataset, batch_size=images, num_workers=num_workers, collate_fn=collate_skip_bad,
                        pin_memory=device.type == "cuda")
    with torch.inference_mode():
        for batch in loader:
            if batch is None:  # every image of the batch unreadable (each warned once by SplitDataset)
                pbar.update(images)
                continue
            x = batch["image"].to(device, non_blocking=True)  # [B, 3, H, W] or [B, K, 3, H, W]
            x = x.flatten(0, 1) if K else x
            # K > batch_size: one image's views, still batch_size per forward
            outs = [teacher(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]
            out = {name: torch.cat([o[name] for o in outs]) for name in outs[0]}
            rows = batch["index"].numpy() - start
            b = len(rows)
            arrays["embedding"][rows] = out["embedding"].float().cpu().numpy().reshape(b, *rows_shape[1:], D)
            if C:
                arrays["logits"][rows] = out["logits"].float().cpu().numpy().reshape(b, *rows_shape[1:], C)
            arrays["valid"][rows] = True
            pbar.update(b + batch["n_bad"])
    return arrays


def plan_cache(teacher, source, cache_dir: str | os.PathLike, *, views: int = 0, seed: int = 0,
               shard_size: int = 1024) -> CacheJob:
    """The teacher cache folder and plan of one source; an existing plan is checked (a resume must be the same computation).

    The folder is keyed by what the source holds (:func:`store.source_id`), not by its folder's name: two
    datasets in folders of the same name never share a cache, and changed images get a cache of their own.

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
    folder = cache_path(cache_dir, teacher.fingerprint, source, view["name"])
    if not folder.exists():
        older = [p.parent for p in folder.parent.parent.glob(f"*/{view['name']}/manifest.json")]
        if older:  # the same source key (a folder of the same name and place) with other contents
            say(f"{source.key}: its images differ from those cached in {older[0]}; computing a new cache "
                "(delete the old folder to free its space)")
    return make_job(folder, plan, shard_size)


def run_cache(teacher, source, job: CacheJob, *, batch_size: int = 128, num_workers: int = 2, rank: int | None = None,
              world_size: int | None = None) -> TeacherCache:
    """Compute (or repair) a teacher cache job, then open it."""
    if batch_size < 1:
        raise EdgeDistillError(f"batch_size={batch_size} must be >= 1")

    def compute(start: int, stop: int, pbar) -> dict[str, np.ndarray]:
        return teacher_arrays(teacher, source, start, stop, job.plan, batch_size=batch_size, num_workers=num_workers,
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
        batch_size: teacher forwards per batch (with K views: ``max(1, batch_size // K)`` images x K views), so
            the pixels in memory are one batch's whatever K is; the outputs are one shard's.
        num_workers: DataLoader processes decoding images.
        rank, world_size: this process's place among several; default: ``shards.rank_world``.

    Raises:
        CacheMismatchError: the folder holds a cache of another teacher, source or view.
    """
    job = plan_cache(teacher, source, cache_dir, views=views, seed=seed, shard_size=shard_size)
    return run_cache(teacher, source, job, batch_size=batch_size, num_workers=num_workers, rank=rank,
                     world_size=world_size)


__all__ = ["TeacherViews", "cache_source", "plan_cache", "run_cache"]
