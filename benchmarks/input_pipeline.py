"""Training input pipeline: images/s of a real `train` step against the bare model step on tensors in memory.

    .venv/bin/python benchmarks/input_pipeline.py --steps 30

Same student, batch, resolution and threads in one process, measured side by side:
- ``bare``: forward + KD loss + backward + SGD step on a batch already in memory (the ceiling);
- ``pixels``: the default path: a batch gathered from the uint8 pixel memory map (``cache.pixel_cache``),
  cropped/flipped/normalised as a tensor batch (``BatchAugment``), then the same step;
- ``images``: the per-image path (PIL decode + random-resized-crop + flip in DataLoader workers), then the step.
The share of a step spent on input = 1 - bare time / path time. Uses the bundled demo images (real JPEGs).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("EDGEDISTILL_NO_PROGRESS", "1")

import torch  # noqa: E402

from edgedistill.cache import pixel_cache  # noqa: E402
from edgedistill.config import DataConfig  # noqa: E402
from edgedistill.data.splits import build_splits, collate_skip_bad  # noqa: E402
from edgedistill.data.transforms import BatchAugment, TrainTransform  # noqa: E402
from edgedistill.data.views import student_view  # noqa: E402
from edgedistill.losses import response_kd_loss  # noqa: E402
from edgedistill.students import create_student  # noqa: E402
from edgedistill.training.datamodule import EpochSampler, PixelBatches, _whole_batch  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of the images path")
    p.add_argument("--cache_dir", default="~/.cache/edgedistill")
    p.add_argument("--out", default="benchmarks/results/input_pipeline.json")
    args = p.parse_args()

    torch.manual_seed(0)
    splits = build_splits(DataConfig(dataset="demo"))
    spec = "train+unlabeled"
    view = student_view(args.size)
    model = create_student("resnet18", 10, kwargs={"channels": [32, 64, 128, 256]})
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    teacher = torch.randn(args.batch, 10) * 3

    def step(x: torch.Tensor) -> None:
        loss = response_kd_loss(model(x), teacher[: len(x)], torch.full((len(x),), -1))["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def timed(batches, prepare) -> list[float]:
        times = []
        it = iter(batches)
        for k in range(args.warmup + args.steps):
            t0 = time.perf_counter()
            x = prepare(next(it))
            step(x)
            if k >= args.warmup:
                times.append(time.perf_counter() - t0)
        return times

    model.train()
    x0 = torch.randn(args.batch, 3, args.size, args.size)
    bare = timed(iter(lambda: x0, None), lambda x: x)

    caches = {k: pixel_cache(splits.sources[k], view, args.cache_dir) for k in splits.sources_of(spec)}
    ds = PixelBatches(splits, spec, caches)
    loader = torch.utils.data.DataLoader(ds, batch_size=args.batch, sampler=EpochSampler(ds, 0), collate_fn=_whole_batch,
                                         drop_last=True)
    augment = BatchAugment(view, scale=(0.8, 1.0))
    pixels = timed(loader, lambda b: augment(b["pixels"], aug=True))

    tf = TrainTransform(view, aug=True, scale=(0.8, 1.0))
    images_loader = torch.utils.data.DataLoader(splits.dataset(spec, tf), batch_size=args.batch, shuffle=True,
                                                num_workers=args.workers, collate_fn=collate_skip_bad, drop_last=True,
                                                persistent_workers=args.workers > 0)
    images = timed(images_loader, lambda b: b["image"])

    rows = []
    for name, times in (("bare", bare), ("pixels", pixels), ("images", images)):
        med = statistics.median(times)
        rows.append({"path": name, "step_ms": round(1000 * med, 1), "images_per_s": round(args.batch / med, 1),
                     "input_share": None if name == "bare" else round(1 - statistics.median(bare) / med, 3)})
    print(f"| path | step ms (median of {args.steps}) | images/s | share of the step spent on input |")
    print("|---|---:|---:|---:|")
    for r in rows:
        share = "—" if r["input_share"] is None else f"{100 * r['input_share']:.1f}%"
        print(f"| {r['path']} | {r['step_ms']} | {r['images_per_s']} | {share} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "threads": torch.get_num_threads(), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
