"""Deployment bars: student ResNet18 vs teacher ViT-B-32 image tower on this CPU with ONNX Runtime, one run.

Both models get the same care: every setting tried (precision fp32/int8, graph optimisation
level, memory arena, threads) is applied to both, each child process measures one model, and
each model is reported at its own best next to the like-for-like comparison.

Weights are random (speed and memory do not depend on their values), except that the
student's BatchNorm scales are drawn away from timm's zero-init: zero-initialised residual
branches fold into all-zero convolutions that the ONNX exporter deduplicates, which would
make the random student's file and memory unrealistically small. INT8 is calibrated on real
CIFAR-10 training images (upscaled to 224). With ``--run`` (a trained student run directory)
the INT8 accuracy loss is measured on its validation split; without it, the INT8-vs-FP32
top-1 agreement on real images is reported instead (a random student has no accuracy).

    python benchmarks/deploy.py                       # full: ~10 minutes on 2 cores
    python benchmarks/deploy.py --iters 5 --warmup 1  # quick look

Bars (from the tutorial's Jetson figures): throughput ratio >= 4.2x and memory ratio >= 3.45x
at 224x224, batch 8; INT8 student >= 1.5x the FP32 student's throughput with <= 1 point loss.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("EDGEDISTILL_NO_PROGRESS", "1")

from edgedistill import storage  # noqa: E402
from edgedistill.data.views import ViewSpec, preprocess  # noqa: E402
from edgedistill.deploy import bench as B  # noqa: E402
from edgedistill.deploy import export as ex  # noqa: E402
from edgedistill.deploy.quantize import quantize_int8  # noqa: E402
from edgedistill.deploy.runtime import DeployMeta, ort_session  # noqa: E402

CIFAR_TRAIN = Path.home() / ".cache" / "edgedistill-data" / "train"
SETTINGS = {
    # name -> ONNX Runtime session options; each is applied to both models.
    "all": {},
    "extended": {"graph_optimization_level": "ORT_ENABLE_EXTENDED"},
    "all-noarena": {"enable_cpu_mem_arena": False},
}


def real_batches(view: ViewSpec, n: int, batch: int = 16, seed: int = 0):
    """Preprocessed real CIFAR-10 training images [B, 3, S, S] (a fixed random sample of n)."""
    files = sorted(CIFAR_TRAIN.glob("*/*.jpg")) if CIFAR_TRAIN.is_dir() else []
    if not files:
        sys.exit(f"no CIFAR-10 images under {CIFAR_TRAIN}; INT8 needs real calibration images")
    from PIL import Image

    pick = np.random.default_rng(seed).choice(len(files), size=min(n, len(files)), replace=False)
    images = [preprocess(Image.open(files[i]), view) for i in pick]
    return [np.stack(images[i:i + batch]) for i in range(0, len(images), batch)]


def build(work: Path, native: int, calib: int, run: str | None) -> tuple[B.BenchEntry, B.BenchEntry, dict]:
    """Export student and teacher (fp32 + int8) into ``work``; returns their entries and INT8 quality."""
    import open_clip
    import timm

    quality: dict = {}
    if run:
        s_model, s_meta = ex.load_student_deploy(run)
    else:
        torch.manual_seed(0)
        net = timm.create_model("resnet18", num_classes=10)
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                torch.nn.init.uniform_(m.weight, 0.5, 1.5)
        s_model = ex.DeployModel(net.eval())
        s_meta = DeployMeta(role="student", arch="resnet18", outputs=["logits"], dynamic_hw=True,
                            view=ViewSpec(native, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)).to_dict())
    tower = open_clip.create_model("ViT-B-32", pretrained=None).visual.eval()
    t_model = ex.DeployModel(tower, None, ("embedding",))
    t_meta = DeployMeta(role="teacher", arch="ViT-B-32", target="embedding", outputs=["embedding"],
                        view=ViewSpec(224, open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD,
                                      resize_mode="shortest").to_dict())
    entries = []
    for name, model, meta in (("student", s_model, s_meta), ("teacher", t_model, t_meta)):
        d = work / name
        fp32 = d / "model.onnx"
        if not fp32.is_file():
            ex.export_onnx(model, fp32, meta=dataclasses.replace(meta, view={**meta.view, "image_size": 224}),
                           check={"random": torch.randn(3, 3, 224, 224)})
        int8 = d / f"model.int8-calib{calib}.onnx"  # reused only with the same calibration size
        view224 = ViewSpec(**{**meta.view, "image_size": 224})
        if not int8.is_file():
            t0 = time.time()
            quantize_int8(fp32, int8, iter(real_batches(view224, calib)))
            print(f"quantized {name} on {calib} real images in {time.time() - t0:.0f} s", file=sys.stderr)
        if name == "student":
            # INT8 quality: on real images, FP32 vs INT8 top-1 agreement (and accuracy for a trained run).
            xs = np.concatenate(real_batches(view224, 256, seed=1))
            p32 = ort_session(fp32).run(None, {"image": xs})[0].argmax(1)
            p8 = ort_session(int8).run(None, {"image": xs})[0].argmax(1)
            quality["int8_fp32_top1_agreement"] = float((p32 == p8).mean())
            if run:
                cfg = ex.run_configs(run).get("data")
                if cfg:
                    from edgedistill.config import DataConfig

                    val = ex.real_images(DataConfig(**cfg), "val", view224.to_dict())
                    quality["val_acc_fp32"] = ex.onnx_accuracy(fp32, val)
                    quality["val_acc_int8"] = ex.onnx_accuracy(int8, val)
        res = tuple(sorted({224, meta.view["image_size"]}))
        entries.append(B.BenchEntry(model=name, arch=meta.arch, onnx={"fp32": str(fp32), "int8": str(int8)},
                                    resolutions=res, native_resolution=meta.view["image_size"]))
    return entries[0], entries[1], quality


def best(rows: list[dict], model: str, batch: int, resolution: int, key: str, precision: str | None = None) -> dict:
    pick = [r for r in rows if r["model"] == model and r["batch"] == batch and r["resolution"] == resolution
            and (precision is None or r["precision"] == precision)]
    return max(pick, key=lambda r: r[key]) if key == "throughput_ips" else min(pick, key=lambda r: r[key])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default=str(Path.home() / ".cache" / "edgedistill-bench" / "deploy"),
                    help="exported models (reused between runs; outside the repo: hundreds of MB)")
    ap.add_argument("--out", default="benchmarks/results/deploy", help="bench.json/md/png and deploy.json")
    ap.add_argument("--native", type=int, default=96, help="student's native resolution (tutorial: STL10 96)")
    ap.add_argument("--run", default=None, help="a trained student run directory (INT8 accuracy on its val split)")
    ap.add_argument("--calib", type=int, default=256, help="real calibration images for INT8")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--threads", type=int, nargs="+", default=[0], help="intra-op threads to try (0: all cores)")
    args = ap.parse_args()

    student, teacher, quality = build(Path(args.work), args.native, args.calib, args.run)
    rows: list[dict] = []
    for setting in args.settings:
        for threads in args.threads:
            part = B.bench_models([student, teacher], batch_sizes=(1, 8), warmup=args.warmup, iters=args.iters,
                                  threads=threads or None, runtimes=("onnxruntime",), precisions=("fp32", "int8"),
                                  ort_settings=SETTINGS[setting], log=lambda m: print(m, file=sys.stderr))
            for r in part:
                r["setting"] = f"{setting}, threads={threads or 'all'}"
            rows += part

    # Like for like (same setting/precision) and each model at its own best.
    s_best = best(rows, "student", 8, 224, "throughput_ips", "fp32")
    t_best = best(rows, "teacher", 8, 224, "throughput_ips", "fp32")
    s_mem = best(rows, "student", 8, 224, "peak_mem_mb", "fp32")
    t_mem = best(rows, "teacher", 8, 224, "peak_mem_mb", "fp32")
    s8 = best(rows, "student", 8, 224, "throughput_ips", "int8")
    t8 = best(rows, "teacher", 8, 224, "throughput_ips", "int8")
    s_nat = best(rows, "student", 8, args.native, "throughput_ips", "fp32") if args.native != 224 else s_best
    s_nat8 = best(rows, "student", 8, args.native, "throughput_ips", "int8") if args.native != 224 else s8
    summary = {
        "throughput_ratio_fp32_best": s_best["throughput_ips"] / t_best["throughput_ips"],
        "memory_ratio_fp32_best": t_mem["peak_mem_mb"] / s_mem["peak_mem_mb"],
        "throughput_ratio_int8_best": s8["throughput_ips"] / t8["throughput_ips"],
        "throughput_ratio_best_any_precision": max(s_best["throughput_ips"], s8["throughput_ips"])
        / max(t_best["throughput_ips"], t8["throughput_ips"]),
        "native_resolution": args.native,
        "throughput_ratio_native_fp32": s_nat["throughput_ips"] / t_best["throughput_ips"],
        "throughput_ratio_native_int8_vs_teacher_best": s_nat8["throughput_ips"] / max(t_best["throughput_ips"], t8["throughput_ips"]),
        "int8_student_speedup": s8["throughput_ips"] / s_best["throughput_ips"],
        "int8_teacher_speedup": t8["throughput_ips"] / t_best["throughput_ips"],
        # Like for like, per setting: on a shared machine the spread across settings is mostly noise.
        "fp32_b8_224_ratio_by_setting": {
            st: best([r for r in rows if r["setting"] == st], "student", 8, 224, "throughput_ips", "fp32")["throughput_ips"]
            / best([r for r in rows if r["setting"] == st], "teacher", 8, 224, "throughput_ips", "fp32")["throughput_ips"]
            for st in sorted({r["setting"] for r in rows})
        },
        "best_settings": {"student_fp32": s_best["setting"], "teacher_fp32": t_best["setting"],
                          "student_int8": s8["setting"], "teacher_int8": t8["setting"]},
        **quality,
    }
    if "val_acc_fp32" in quality:
        summary["int8_accuracy_loss_points"] = 100 * (quality["val_acc_fp32"] - quality["val_acc_int8"])
    bars = {
        "throughput >= 4.2x (fp32, 224, b8, each at best)": summary["throughput_ratio_fp32_best"] >= 4.2,
        "memory >= 3.45x (fp32, 224, b8, each at best)": summary["memory_ratio_fp32_best"] >= 3.45,
        "int8 student >= 1.5x fp32 student": summary["int8_student_speedup"] >= 1.5,
    }
    out = Path(args.out)
    notes = [f"{k}: {'met' if v else 'NOT met'}" for k, v in bars.items()]
    notes.append("rows carry a 'setting' (ORT options, threads) in bench.json; every setting was run for both models")
    B.write_bench(rows, out, notes=notes)
    storage.write_json(out / "deploy.json", {"command": " ".join(sys.argv), "args": vars(args), "summary": summary,
                                              "bars": bars, "machine": B.machine_info()})
    print(B.format_table(rows, B.bench_ratios(rows)))
    print("| quantity | value |\n|---|---|")
    for k, v in summary.items():
        print(f"| {k} | {v:.3f} |" if isinstance(v, float) else f"| {k} | {v} |")
    for n in notes:
        print(f"- {n}")
    print(f"wrote {out}/deploy.json, bench.json, bench.md, bench.png")


if __name__ == "__main__":
    main()
