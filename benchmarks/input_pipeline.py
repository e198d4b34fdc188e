"""Training input pipeline: images/s of a real `train` step against the bare model step on tensors in memory.

    .venv/bin/python benchmarks/input_pipeline.py --steps 30                          # the three step paths
    .venv/bin/python benchmarks/input_pipeline.py --run runs/demo/runs/kd --train-steps 120   # + `train` itself

Same student (the demo's narrow ResNet18), batch, resolution, NHWC layout and threads in one process, side by side:
- ``bare``: forward + KD loss + backward + SGD step on a batch already in memory (the ceiling);
- ``pixels``: the default path: a batch gathered from the uint8 pixel memory map (``cache.pixel_cache``),
  pad-and-crop / flip / normalise as one tensor op on the batch (``BatchAugment``), then the same step;
- ``images``: the per-image path (PIL decode + crop + flip in DataLoader workers), then the step;
- ``train`` (with ``--run``): that training run's recorded configs rerun by ``edgedistill train`` for
  ``--train-steps`` steps into a temporary folder (Lightning, cached teacher targets, logging, the works); its
  images/s as the run records it (the first steps, slower, included).
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
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--pad", type=int, default=4, help="pad-and-crop shift (0: random-resized crop)")
    p.add_argument("--run", default=None, help="a finished training run to rerun briefly with `train` (its configs)")
    p.add_argument("--train-steps", type=int, default=120)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of the images path")
    p.add_argument("--cache_dir", default="~/.cache/edgedistill")
    p.add_argument("--out", default="benchmarks/results/input_pipeline.json")
    args = p.parse_args()

    torch.manual_seed(0)
    splits = build_splits(DataConfig(dataset="demo"))
    spec = "train+unlabeled"
    view = student_view(args.size)
    model = create_student("resnet18", 10, kwargs={"channels": [32, 64, 128, 256]}).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    teacher = torch.randn(args.batch, 10) * 3

    def step(x: torch.Tensor) -> None:
        x = x.contiguous(memory_format=torch.channels_last)
        loss = response_kd_loss(model(x), teacher[: len(x)], torch.full((len(x),), -1), temperature=2.0)["loss"]
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
    augment = BatchAugment(view, scale=(0.8, 1.0), pad=args.pad)
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
    if args.run:
        ips = _train_images_per_s(args.run, args.train_steps, args.batch)
        step_s = args.batch / ips
        rows.append({"path": f"train ({args.train_steps} steps of {args.run})", "step_ms": round(1000 * step_s, 1),
                     "images_per_s": round(ips, 1), "input_share": round(1 - statistics.median(bare) / step_s, 3)})
    print(f"| path | step ms (median of {args.steps}) | images/s | share of the step spent on input |")
    print("|---|---:|---:|---:|")
    for r in rows:
        share = "—" if r["input_share"] is None else f"{100 * r['input_share']:.1f}%"
        print(f"| {r['path']} | {r['step_ms']} | {r['images_per_s']} | {share} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "threads": torch.get_num_threads(), "rows": rows}, indent=2) + "\n")


def _train_images_per_s(run: str, steps: int, batch: int) -> float:
    """Rerun a training run's recorded configs with ``train`` for ``steps`` steps; its recorded images/s."""
    import dataclasses
    import tempfile

    import yaml

    from edgedistill import storage
    from edgedistill.config import TeacherConfig, TrainConfig, from_dict
    from edgedistill.training.fit import train

    run_dir = Path(run)
    rec = yaml.safe_load((run_dir / "config.yaml").read_text())
    data = from_dict(DataConfig, rec["data"], "data")
    teacher = from_dict(TeacherConfig, rec["teacher"], "teacher")
    cfg = from_dict(TrainConfig, rec["train"], "train")
    if cfg.batch_size != batch:
        sys.exit(f"--batch {batch} differs from the run's batch_size {cfg.batch_size}: pass --batch {cfg.batch_size}")
    with tempfile.TemporaryDirectory(prefix="edgedistill-input-") as tmp:
        cfg = dataclasses.replace(cfg, max_steps=steps, out_dir=tmp, name="train", eval_test=False)
        out = train(data, teacher, cfg)  # stops mid-epoch, before any validation
        return float(storage.read_json(out / "metrics.json")["images_per_s"])


if __name__ == "__main__":
    sys.exit(main())
