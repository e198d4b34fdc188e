"""Teacher-caching throughput: edgedistill's cache vs the reference tutorial's way, side by side.

Both paths embed the same N images with the same random-init ViT-B-32 (the weights do not
change the cost) on this machine's CPU (or ``--device cuda``):

* tutorial: one image at a time, open_clip's preprocess, ``model.encode_image`` with autograd
  on (no ``inference_mode``), one ``torch.save`` file per image;
* edgedistill: ``cache.cache_source`` (batched, ``inference_mode``, DataLoader decoding,
  float16 shards written atomically), its image tower run by PyTorch or, with
  ``--runtime onnxruntime``, by ONNX Runtime (exported and parity-checked before the clock starts).

The cache's embeddings are compared with the tutorial path's (PyTorch, one image at a time, float32):
the largest absolute difference relative to the embedding's scale and the lowest cosine are reported.

Each path runs once to warm up (on ``--warmup`` images), then ``--repeats`` timed runs into a
fresh folder; the median is reported with the ratio. Prints a markdown table and writes JSON.

    python benchmarks/cache_throughput.py                 # 512 images, 3 repeats
    python benchmarks/cache_throughput.py --runtime onnxruntime   # the teacher's forward in ONNX Runtime
    python benchmarks/cache_throughput.py --n 16 --repeats 1 --warmup 2   # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("EDGEDISTILL_NO_PROGRESS", "1")  # bars would disturb the timing output

from edgedistill import storage  # noqa: E402
from edgedistill.cache import cache_source  # noqa: E402
from edgedistill.config import TeacherConfig  # noqa: E402
from edgedistill.data import ImageFolderSource  # noqa: E402
from edgedistill.data.sources import DATA_DIR, extract_demo  # noqa: E402
from edgedistill.teachers import create_teacher  # noqa: E402


def _image_files(n: int, workdir: Path) -> Path:
    """An ImageFolder of ``n`` images: CIFAR-10 JPEGs from the data cache, else the bundled demo, else random."""
    candidates = [DATA_DIR / "train"]
    pool: list[Path] = []
    for root in candidates:
        if root.is_dir():
            pool = sorted(root.glob("*/*.jpg"))
    if len(pool) < n:
        demo = extract_demo(workdir / "demo")
        pool = sorted((demo / "labeled").glob("*/*.jpg")) + sorted((demo / "eval").glob("*/*.jpg"))
    folder = workdir / "images"
    if len(pool) >= n:
        # spread over classes: take every k-th file of the sorted list
        step = len(pool) // n
        for i, src in enumerate(pool[::step][:n]):
            dst = folder / src.parent.name / f"{i:05d}{src.suffix}"
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
    else:
        from PIL import Image

        rng = np.random.default_rng(0)
        for i in range(n):
            dst = folder / "random" / f"{i:05d}.png"
            dst.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(dst)
    return folder


def tutorial_way(model, preprocess, files: list[Path], out_dir: Path, device: torch.device) -> float:
    """One image at a time, autograd on, one torch.save per image. Returns seconds."""
    from PIL import Image

    out_dir.mkdir(parents=True, exist_ok=True)
    _sync(device)
    t0 = time.perf_counter()
    for i, f in enumerate(files):
        x = preprocess(Image.open(f).convert("RGB"))[None].to(device)
        emb = model.encode_image(x)
        torch.save(emb.detach().cpu(), out_dir / f"{i}.pt")
    _sync(device)
    return time.perf_counter() - t0


def _agreement(tutorial_dir: Path, cache, n: int) -> dict:
    """How close the cache's float16 embeddings are to the tutorial path's float32 PyTorch ones."""
    ref = torch.stack([torch.load(tutorial_dir / f"{i}.pt", weights_only=True)[0] for i in range(n)]).float()
    got = torch.from_numpy(np.asarray(cache.embedding[:n], dtype=np.float32))
    cos = torch.nn.functional.cosine_similarity(ref, got, dim=1)
    return {"max_abs_diff": float((ref - got).abs().max()), "embedding_abs_max": float(ref.abs().max()),
            "max_rel_diff": float((ref - got).abs().max() / ref.abs().max()), "min_cosine": float(cos.min())}


def our_way(teacher, source, cache_dir: Path, batch_size: int, num_workers: int, shard_size: int) -> float:
    """``cache_source`` into a fresh folder. Returns seconds."""
    _sync(teacher.device)
    t0 = time.perf_counter()
    cache_source(teacher, source, cache_dir, batch_size=batch_size, num_workers=num_workers, shard_size=shard_size)
    _sync(teacher.device)
    return time.perf_counter() - t0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=512, help="images per timed run")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per path (median reported)")
    p.add_argument("--warmup", type=int, default=16, help="images of the untimed warm-up run")
    p.add_argument("--model", default="ViT-B-32")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--num_workers", type=int, default=2)
    p.add_argument("--shard_size", type=int, default=1024)
    p.add_argument("--device", default="cpu")
    p.add_argument("--runtime", default="torch", choices=["torch", "onnxruntime"],
                   help="what runs edgedistill's teacher forward (the tutorial path is always PyTorch)")
    p.add_argument("--out", default="benchmarks/results/cache_throughput.json")
    args = p.parse_args(argv)

    import open_clip

    tmp_root = tempfile.TemporaryDirectory(prefix="edgedistill-bench-")
    teacher = create_teacher(TeacherConfig(kind="openclip", model=args.model, pretrained="random", device=args.device,
                                           batch_size=args.batch_size, runtime=args.runtime),
                             cache_dir=tmp_root.name)  # the ONNX export (untimed) lands in the temp folder
    torch_teacher = teacher.inner if args.runtime == "onnxruntime" else teacher
    model = torch_teacher.model  # the same open_clip module (same weights) for the tutorial path
    pp = model.visual.preprocess_cfg
    preprocess = open_clip.image_transform(pp["size"], is_train=False, mean=pp["mean"], std=pp["std"])
    device = teacher.device

    with tmp_root as tmp:
        tmp = Path(tmp)
        folder = _image_files(args.n, tmp)
        source = ImageFolderSource(folder, "bench/images")
        files = [Path(f) for f in source.files]
        warm = _image_files(args.warmup, tmp / "warm")
        tutorial_way(model, preprocess, files[: args.warmup], tmp / "warm-tutorial", device)
        our_way(teacher, ImageFolderSource(warm, "bench/warm"), tmp / "warm-cache", args.batch_size, args.num_workers,
                args.shard_size)
        t_tut, t_our = [], []
        for r in range(args.repeats):  # interleaved so machine load drifts hit both paths alike
            t_tut.append(tutorial_way(model, preprocess, files, tmp / f"tutorial-{r}", device))
            t_our.append(our_way(teacher, source, tmp / f"cache-{r}", args.batch_size, args.num_workers,
                                 args.shard_size))
            print(f"repeat {r}: tutorial {t_tut[-1]:.2f}s, edgedistill {t_our[-1]:.2f}s", file=sys.stderr)
        cache = cache_source(teacher, source, tmp / "cache-0", shard_size=args.shard_size)  # complete: opens it
        agreement = _agreement(tmp / "tutorial-0", cache, len(files))

    med_tut, med_our = statistics.median(t_tut), statistics.median(t_our)
    result = {
        "benchmark": "cache_throughput",
        "command": "python benchmarks/cache_throughput.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "model": f"{args.model} (random init)",
        "n_images": len(files),
        "device": str(device),
        "runtime": args.runtime,
        "torch_threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "batch_size": args.batch_size,
        "num_workers": args.num_workers,
        "repeats": args.repeats,
        "tutorial": {"seconds": t_tut, "median_s": med_tut, "images_per_s": len(files) / med_tut},
        "edgedistill": {"seconds": t_our, "median_s": med_our, "images_per_s": len(files) / med_our},
        "speedup": med_tut / med_our,
        "agreement_with_tutorial": agreement,
        "torch": torch.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    print(f"Teacher caching, {len(files)} images, {result['model']}, {device}, {result['torch_threads']} threads, "
          f"edgedistill's forward in {args.runtime}\n")
    print("| method | median s | images/s | speedup |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| tutorial (1 image, autograd, torch.save each) | {med_tut:.2f} | {result['tutorial']['images_per_s']:.1f} | 1.00x |")
    print(f"| edgedistill cache (batched, inference_mode, fp16 shards) | {med_our:.2f} | "
          f"{result['edgedistill']['images_per_s']:.1f} | {result['speedup']:.2f}x |")
    print(f"\ncache vs tutorial embeddings: max |diff| {agreement['max_abs_diff']:.2e} "
          f"({agreement['max_rel_diff']:.2e} of the largest value), min cosine {agreement['min_cosine']:.6f}")
    if args.out:
        storage.write_json(args.out, result)
        print(f"\nwrote {args.out}")
    return result


if __name__ == "__main__":
    main()
