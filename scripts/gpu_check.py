"""The checks that need a CUDA GPU, in one run that prints one table (``scripts/gpu_check.sh`` runs it).

1. the tests marked ``gpu`` (CUDA teacher vs CPU, TensorRT engine where tensorrt imports);
2. a short bf16-mixed training run (loss finite, images/s);
3. a CUDA teacher cache of real images against the CPU cache of the same images (max abs difference,
   with the tolerance stated: bf16 autocast on the GPU against FP32 on the CPU);
4. ``distill`` on the bundled demo with its GPU budget (wall time, the headline numbers).

Usage (from the repository root, on the GPU machine): ``python scripts/gpu_check.py --out runs/gpu_check``.
Writes ``<out>/gpu_check.md`` and ``.json``; commit the markdown as ``docs/gpu_check.md`` with the machine named.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("EDGEDISTILL_NO_PROGRESS", "1")
ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 5e-2  # bf16 has 8 mantissa bits: a relative error near 0.4% per op, a few 1e-2 on 1280-d embeddings


def check_tests() -> dict:
    t0 = time.time()
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", str(ROOT / "tests")],
                       capture_output=True, text=True, cwd=ROOT)
    last = (p.stdout.strip().splitlines() or ["no output"])[-1]
    return {"check": "pytest -m gpu", "ok": p.returncode == 0, "result": last, "seconds": round(time.time() - t0, 1)}


def check_bf16_training(out: Path) -> dict:
    from edgedistill.config import DataConfig, TeacherConfig, TrainConfig
    from edgedistill.training.fit import train

    t0 = time.time()
    cfg = TrainConfig(student="resnet18", student_kwargs={"channels": [32, 64, 128, 256]}, image_size=32, epochs=1,
                      max_steps=100, batch_size=256, precision="bf16-mixed", out_dir=str(out / "runs"), name="bf16",
                      cache_dir=str(out / "cache"), num_workers=4)
    run = train(DataConfig(dataset="demo"), TeacherConfig(kind="efficientnet_lite0", image_size=96), cfg)
    m = json.loads((run / "metrics.json").read_text())
    loss = m["history"][-1].get("train_loss")
    ok = m["finished"] and loss is not None and loss == loss and m["precision"] == "bf16-mixed"
    return {"check": "bf16-mixed training, 100 steps", "ok": bool(ok),
            "result": f"loss {loss:.3f}, {m['images_per_s']:.0f} images/s, precision {m['precision']}",
            "seconds": round(time.time() - t0, 1)}


def check_cuda_cache(out: Path, n: int = 2048) -> dict:
    import numpy as np

    from edgedistill.cache import cache_source
    from edgedistill.config import DataConfig, TeacherConfig
    from edgedistill.data.splits import build_splits
    from edgedistill.teachers import create_teacher

    t0 = time.time()
    source = next(s for k, s in build_splits(DataConfig(dataset="demo")).sources.items() if k == "demo/eval")
    got = {}
    for device in ("cuda", "cpu"):
        teacher = create_teacher(TeacherConfig(kind="efficientnet_lite0", image_size=96, device=device))
        got[device] = cache_source(teacher, source, out / f"cache-{device}", shard_size=1024, num_workers=4)
    emb = {d: np.asarray(c.embedding, dtype=np.float32)[:n] for d, c in got.items()}
    logits = {d: np.asarray(c.logits, dtype=np.float32)[:n] for d, c in got.items()}
    diff_e = float(np.abs(emb["cuda"] - emb["cpu"]).max())
    diff_l = float(np.abs(logits["cuda"] - logits["cpu"]).max())
    scale = float(np.abs(emb["cpu"]).max())
    agree = float((logits["cuda"].argmax(1) == logits["cpu"].argmax(1)).mean())
    ok = diff_e <= TOLERANCE * max(scale, 1.0) and agree >= 0.99
    return {"check": f"CUDA cache vs CPU cache, {len(source)} images (tolerance {TOLERANCE:g} x max |emb|)", "ok": ok,
            "result": f"max |diff| embedding {diff_e:.3g} (max |emb| {scale:.3g}), logits {diff_l:.3g}; "
                      f"top-1 agreement {100 * agree:.2f}%; {got['cuda'].manifest['images_per_s']} images/s on CUDA",
            "seconds": round(time.time() - t0, 1)}


def check_distill(out: Path) -> dict:
    from edgedistill.pipelines.distill import demo_command

    t0 = time.time()
    demo_command(str(out / "demo"))
    r = json.loads((out / "demo" / "results.json").read_text())
    best = next(s for s in r["students"] if s["name"] == r["best_student"])
    probe = r["teacher"]["heads"].get("linear", {}).get("test_acc")
    share = f"{100 * best['test_acc'] / probe:.1f}% of the probe" if probe else ""
    return {"check": "distill on the bundled demo, GPU budget", "ok": bool(r["gpu_budget"]),
            "result": f"{best['name']}: {100 * best['test_acc']:.1f}% held-out, {share}; {best['epochs']} epochs",
            "seconds": round(time.time() - t0, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/gpu_check")
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("no CUDA GPU visible: nothing to check here", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for check in (check_tests, lambda: check_bf16_training(out), lambda: check_cuda_cache(out), lambda: check_distill(out)):
        try:
            rows.append(check())
        except Exception as e:  # noqa: BLE001 - one failing check must not hide the others
            rows.append({"check": getattr(check, "__name__", "check"), "ok": False, "result": f"{type(e).__name__}: {e}",
                         "seconds": None})
        print(rows[-1], file=sys.stderr, flush=True)
    machine = f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}"
    lines = [f"# GPU check: {machine}", "", "Command: `scripts/gpu_check.sh`", "", "| check | ok | result | seconds |",
             "|---|---|---|---:|"]
    lines += [f"| {r['check']} | {'yes' if r['ok'] else '**no**'} | {r['result']} | {r['seconds']} |" for r in rows]
    text = "\n".join(lines) + "\n"
    (out / "gpu_check.md").write_text(text)
    (out / "gpu_check.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))
    print(text)
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
