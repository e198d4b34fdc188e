"""The pixel cache: each image decoded once at the student's geometry, uint8 memory maps read a batch at a time."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from edgedistill import storage
from edgedistill.cache.shards import make_job, run_shards
from edgedistill.cache.store import FORMAT_VERSION, HASH_CHARS, ShardedArray
from edgedistill.config import DEFAULT_CACHE_DIR
from edgedistill.data.splits import SplitDataset, SplitPart, collate_skip_bad
from edgedistill.data.views import resize


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
        return torch.from_numpy(np.asarray(resize(img, self.view)).copy())


def pixel_cache(source, view, cache_dir: str | os.PathLike = DEFAULT_CACHE_DIR, *, shard_size: int = 4096,
                batch_size: int = 256, num_workers: int = 0, rank: int | None = None,
                world_size: int | None = None) -> PixelCache:
    """Decode (once) every image of ``source`` at ``view``'s geometry; returns the memory-mapped pixels.

    The folder is named by a hash of the source's identity and the geometry, so changed data or
    another size is another cache, never a mismatch. Same shard machinery as the teacher cache.
    """
    geometry = _geometry(view)
    key = hashlib.sha256(json.dumps([storage.jsonable(source.identity()), geometry], sort_keys=True).encode()).hexdigest()
    S = geometry["image_size"]
    folder = (Path(cache_dir).expanduser() / "pixels" / key[:HASH_CHARS] / source.key
              / f"{S}px-{geometry['resize_mode']}-{geometry['interpolation']}")
    n = len(source)
    plan = {"format": FORMAT_VERSION, "producer": "pixels", "source": {"key": source.key, "identity": source.identity()},
            "view": geometry, "N": n, "shard_size": shard_size, "num_shards": -(-n // shard_size)}
    job = make_job(folder, plan, shard_size)

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


__all__ = ["PixelCache", "pixel_cache"]
