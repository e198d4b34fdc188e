"""Caching K augmented views (``edgedistill cache --views K``): peak resident memory and teacher forwards/s.

Copies ``--n`` CIFAR-10 training JPEGs (``~/.cache/edgedistill-data/train``, spread over the classes) into
an ImageFolder, then runs ``edgedistill cache --views K`` on them in a child process with the offline
EfficientNet-Lite0 teacher (ONNX Runtime) into a fresh cache folder, and reports the child's peak
resident memory (``ru_maxrss`` of the waited-for child), its wall time, and the cache's own throughput
(``manifest.json``'s ``images_per_s``: teacher forwards, i.e. images x views, per second of compute).

``--src DIR`` runs another checkout's sources (its ``src`` folder) in the child, to compare a version
before a change with the one after on the same machine and images.

    python benchmarks/cache_views.py --n 2000 --views 8
    python benchmarks/cache_views.py --n 2000 --views 8 --src /tmp/old/src     # another version
    python benchmarks/cache_views.py --n 64 --views 2                          # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CIFAR = Path("~/.cache/edgedistill-data/train").expanduser()
HERE = Path(__file__).resolve().parent.parent


def cut(n: int, out: Path) -> Path:
    if not CIFAR.is_dir():
        sys.exit(f"error: {CIFAR} is missing; unpack ../shared/data/cifar10-train.tar.gz there (../shared/data/README.md)")
    pool = sorted(CIFAR.glob("*/*.jpg"))
    if n < 1 or n > len(pool):
        sys.exit(f"error: --n {n} must be between 1 and {len(pool)}")
    for i, f in enumerate(pool[::len(pool) // n][:n]):
        dst = out / f.parent.name / f"{i:05d}.jpg"
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, dst)
    return out


def cpu_name() -> str:
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def run_child(cmd: list[str], env: dict) -> int:
    """Run ``cmd``; its own peak resident set (KiB), from ``wait4`` (exits on failure)."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        sys.exit(f"error: {' '.join(cmd[3:])} failed:\n{out}")
    return usage.ru_maxrss


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="images")
    ap.add_argument("--views", type=int, default=8, help="augmented views per image")
    ap.add_argument("--image-size", type=int, default=96, help="the teacher's input size")
    ap.add_argument("--batch-size", type=int, default=128, help="teacher.batch_size")
    ap.add_argument("--src", default=str(HERE / "src"), help="the sources the child runs (PYTHONPATH)")
    ap.add_argument("--out", default=None, help="also write the row as JSON here")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = cut(a.n, Path(tmp) / "images")
        cmd = [sys.executable, "-c", "import sys; from edgedistill.cli import main; sys.exit(main())", "cache",
               "--data.dataset", "imagefolder", "--data.root", str(root), "--data.val_fraction", "0",
               "--teacher.kind", "efficientnet_lite0", "--teacher.image_size", str(a.image_size),
               "--teacher.runtime", "onnxruntime", "--teacher.batch_size", str(a.batch_size),
               "--split", "train", "--views", str(a.views), "--cache_dir", str(Path(tmp) / "cache")]
        env = {**os.environ, "PYTHONPATH": a.src, "EDGEDISTILL_NO_PROGRESS": "1"}
        # a first child caches one image into the same cache_dir: the teacher's ONNX export is made (and
        # cached) there, so the measured child's peak is the caching's, not the export's
        warm = cut(1, Path(tmp) / "warm")
        run_child([str(warm) if c == str(root) else c for c in cmd], env)
        t0 = time.perf_counter()
        peak_mib = run_child(cmd, env) / 1024  # ru_maxrss: KiB on Linux
        wall = time.perf_counter() - t0
        manifest = json.loads(next((Path(tmp) / "cache").glob("**/manifest.json")).read_text())
    row = {"images": a.n, "views": a.views, "image_size": a.image_size, "batch_size": a.batch_size, "src": a.src,
           "peak_rss_mib": round(peak_mib), "wall_s": round(wall, 1), "forwards_per_s": manifest["images_per_s"],
           "cpu": cpu_name(), "cores": os.cpu_count()}
    print("| images | views | px | teacher batch | peak RSS (MiB) | wall s | teacher forwards/s | sources |")
    print("|---:|---:|---:|---:|---:|---:|---:|---|")
    print(f"| {a.n} | {a.views} | {a.image_size} | {a.batch_size} | {row['peak_rss_mib']} | {row['wall_s']} | "
          f"{row['forwards_per_s']} | {a.src} |")
    print(f"machine: {row['cpu']}, {row['cores']} cores")
    if a.out:
        Path(a.out).write_text(json.dumps(row, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
