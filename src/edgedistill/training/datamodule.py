"""Train / val / test DataLoaders: decoded pixels read a batch at a time, or images decoded per item.

Two input paths, the same batches for the module:

* **pixels** (the default): every image is decoded once into a uint8 memory map at the
  student's geometry (``cache.pixel_cache``); a batch is one gather of rows from it
  (:class:`PixelBatches`), moved to the device as uint8 and augmented there as a whole by
  ``data.transforms.BatchAugment`` (``DistillModule.on_after_batch_transfer``). No JPEG is
  decoded twice and no worker process is needed.
* **images**: ``DataSplits.dataset`` with per-item PIL transforms in worker processes; needed
  when the teacher runs online on the same crop at its own resolution.

Unreadable images are dropped from batches and counted (``n_bad``) on both paths.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from edgedistill.data.splits import collate_skip_bad
from edgedistill.data.transforms import sample_aug_params


class PixelBatches(Dataset):
    """The rows of a split, read from pixel caches a whole batch at a time (``__getitems__``).

    Args:
        splits: The dataset's ``DataSplits``.
        spec: The split spec (``"train+unlabeled"``).
        caches: ``{source key: cache.PixelCache}`` covering the spec's sources.
        views: K cached teacher views: each item draws one and carries its crop (``aug``); None: no views.
        seed: Seed of the cached views' crops (``data.transforms.sample_aug_params``).
    """

    def __init__(self, splits, spec: str, caches: dict, views: int | None = None, seed: int = 0) -> None:
        self.epoch = 0  # set by EpochSampler.set_epoch: the cached view each image shows is a function of the epoch
        parts = splits.parts_of(spec)
        self.keys = [p.source for p in parts]
        self.caches = [caches[k] for k in self.keys]
        self.part = np.concatenate([np.full(len(p.indices), i, dtype=np.int64) for i, p in enumerate(parts)])
        self.index = np.concatenate([p.indices for p in parts]).astype(np.int64)
        self.label = np.concatenate([splits.sources[p.source].labels[p.indices] if p.labeled
                                     else np.full(len(p.indices), -1, dtype=np.int64) for p in parts])
        self.views, self.seed = views, seed
        self._view_of: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, j: int) -> dict[str, Any] | None:
        return self.__getitems__([j])

    def __getitems__(self, js: list[int]) -> dict[str, Any] | None:
        js = np.asarray(js, dtype=np.int64)
        part, index = self.part[js], self.index[js]
        valid = np.empty(len(js), dtype=bool)
        pixels = None
        for p in np.unique(part):
            sel = np.flatnonzero(part == p)
            order = np.argsort(index[sel])  # sorted reads are sequential in the memory map
            got = self.caches[p].pixels[index[sel][order]]
            if pixels is None:
                pixels = np.empty((len(js), *got.shape[1:]), dtype=np.uint8)
            pixels[sel[order]] = got
            valid[sel] = self.caches[p].valid[index[sel]]
        keep = np.flatnonzero(valid)
        if not len(keep):
            return None
        out = {"pixels": torch.from_numpy(pixels[keep]), "label": torch.from_numpy(self.label[js][keep]),
               "source": [self.keys[p] for p in part[keep]], "index": torch.from_numpy(index[keep]),
               "n_bad": int(len(js) - len(keep)),
               "bad": [(self.keys[p], int(i)) for p, i in zip(part[~valid], index[~valid])]}
        if self.views:
            if self._view_of is None or self._view_of[0] != self.epoch:  # one draw per epoch, seeded: resumable
                self._view_of = (self.epoch, np.random.default_rng([self.seed, self.epoch]).integers(self.views, size=len(self)))
            view = torch.from_numpy(self._view_of[1][js[keep]])
            crops = [sample_aug_params(self.seed, out["source"][k], int(out["index"][k]), int(view[k])) for k in range(len(keep))]
            out["view"] = view
            out["aug"] = torch.tensor([[c.top, c.left, c.height, c.width, float(c.flip)] for c in crops])
        return out


class EpochSampler(torch.utils.data.Sampler):
    """A shuffle that is a pure function of (seed, epoch): a run resumed after a kill sees the same batches.

    Lightning calls ``set_epoch`` at each epoch start (and wraps this sampler for DDP).
    """

    def __init__(self, dataset, seed: int, shuffle: bool = True) -> None:
        self.dataset, self.seed, self.shuffle, self.epoch = dataset, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.dataset, "epoch"):
            self.dataset.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __iter__(self):
        n = len(self.dataset)
        order = np.random.default_rng([self.seed, self.epoch]).permutation(n) if self.shuffle else np.arange(n)
        return iter(order.tolist())


def _whole_batch(batch):
    """The collate function of :class:`PixelBatches`: ``__getitems__`` already returns the batch."""
    return batch


class DistillDataModule(L.LightningDataModule):
    """Train / val / test DataLoaders over ``DataSplits``.

    Args:
        splits: The dataset's splits.
        train_split: Spec of the training data (``"train+unlabeled"``).
        val_split: Spec of the validation data, or None for none.
        test_split: Spec of the test data, or None.
        train_transform: ``TrainTransform`` for the images path (student crop, optional teacher view, view number).
        eval_transform: Deterministic student transform for val/test on the images path.
        batch_size: Images per batch per device.
        num_workers: Worker processes per DataLoader (images path).
        pixel_caches: ``{source key: PixelCache}``: use the pixels path for every split; None: the images path.
        views: K cached teacher views (pixels path).
        views_seed: Seed of the cached views' crops.
        seed: Seed of the data order (and of the view each image shows in an epoch).
    """

    def __init__(self, splits, *, train_split: str, val_split: str | None, test_split: str | None,
                 train_transform, eval_transform, batch_size: int, num_workers: int,
                 pixel_caches: dict | None = None, views: int | None = None, views_seed: int = 0, seed: int = 0) -> None:
        super().__init__()
        self.splits, self.train_split, self.val_split, self.test_split = splits, train_split, val_split, test_split
        self.train_transform, self.eval_transform = train_transform, eval_transform
        self.batch_size, self.num_workers = batch_size, num_workers
        self.pixel_caches, self.views, self.views_seed, self.seed = pixel_caches, views, views_seed, seed

    def _loader(self, spec: str, transform, train: bool) -> DataLoader:
        if self.pixel_caches is not None:
            ds = PixelBatches(self.splits, spec, self.pixel_caches, self.views if train else None, self.views_seed)
            workers, collate = 0, _whole_batch  # a batch is one memory-map gather: no worker process pays off
        else:
            ds, workers, collate = self.splits.dataset(spec, transform), self.num_workers, collate_skip_bad
        return DataLoader(
            ds,
            batch_size=self.batch_size,
            sampler=EpochSampler(ds, self.seed, shuffle=train),
            # A last batch of a few images gives noisy BatchNorm statistics; drop it when there is more.
            drop_last=train and len(ds) > self.batch_size,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=torch.cuda.is_available(),
            collate_fn=collate,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_split, self.train_transform, train=True)

    def val_dataloader(self) -> DataLoader | list:
        return self._loader(self.val_split, self.eval_transform, train=False) if self.val_split else []

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_split, self.eval_transform, train=False)
