"""INT8 against FP32 for a deployed student, on every CPU runtime and INT8 format: speed and held-out accuracy.

For a bundle made by ``distill`` / ``demo`` (its run directory records the data it was trained on):

- ONNX Runtime FP32 (``model.onnx``) and the bundle's INT8 (QDQ, per-channel, stem kept FP32);
- ONNX Runtime INT8 variants quantized here on the same calibration images: QOperator format (QLinearConv),
  QDQ with the stem quantized too, QDQ per-tensor;
- OpenVINO FP32 (on ``model.onnx``, f32 kernels) and NNCF INT8 (``model.openvino.int8.xml`` from the bundle, or
  made here on the same calibration images).

Each (variant, batch) is timed in its own child process (``deploy.bench``); accuracy is top-1 on the held-out
split the export reports on. A variant counts as "same accuracy" within 0.5 point of ONNX Runtime FP32.

    python benchmarks/int8.py runs/demo/exports/student --out benchmarks/results/int8
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("EDGEDISTILL_NO_PROGRESS", "1")

from edgedistill import storage  # noqa: E402
from edgedistill.config import DataConfig, from_dict  # noqa: E402
from edgedistill.deploy import bench as B  # noqa: E402
from edgedistill.deploy import export as ex  # noqa: E402
from edgedistill.deploy import targets  # noqa: E402
from edgedistill.deploy.engines import RUNTIMES, runtime_to_json  # noqa: E402
from edgedistill.deploy.engines.openvino import compile_openvino  # noqa: E402
from edgedistill.deploy.quantize import quantize_int8  # noqa: E402
from edgedistill.deploy.runtime import ort_session, read_metadata  # noqa: E402


def ort_op_profile(path: Path, size: int, threads: int | None, runs: int = 200) -> dict[str, float]:
    """Microseconds per operator type over ``runs`` batches of 8, from ONNX Runtime's own profiler."""
    import json

    import numpy as np

    sess = ort_session(path, threads=threads, settings={"enable_profiling": True})
    x = np.random.default_rng(0).standard_normal((8, 3, size, size), dtype=np.float32)
    for _ in range(runs):
        sess.run(None, {"image": x})
    trace = Path(sess.end_profiling())
    ops: dict[str, float] = {}
    for event in json.loads(trace.read_text()):
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            op = event["args"].get("op_name", "?")
            ops[op] = ops.get(op, 0.0) + float(event["dur"])
    trace.unlink()
    return ops


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", help="export directory of a student made by distill/demo")
    ap.add_argument("--out", default="benchmarks/results/int8")
    ap.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 8, 64])
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--calib_size", type=int, default=256)
    args = ap.parse_args()

    bundle, out = Path(args.bundle), Path(args.out)
    fp32 = bundle / "model.onnx"
    meta = read_metadata(fp32)
    export = storage.read_json(bundle / "export.json")
    split = export.get("accuracy_split") or "test"
    data = from_dict(DataConfig, ex.run_configs(meta.source)["data"], f"{meta.source}/config.yaml: data")
    calib = ex.real_images(data, "train", meta.view, limit=args.calib_size)
    held_out = ex.real_images(data, split, meta.view)
    calib_batches = [images for images, _ in ex._batches_of(calib, 16)]

    made = out / "models"
    variants = {  # name -> (runtime, precision, file)
        "ort fp32": ("onnxruntime", "fp32", fp32),
        "ort int8 qdq per-channel, stem fp32 (bundle)": ("onnxruntime", "int8", bundle / "model.int8.onnx"),
        "ort int8 qoperator per-channel, stem fp32": ("onnxruntime", "int8",
                                                      quantize_int8(fp32, made / "qop.onnx", iter(calib_batches),
                                                                    quant_format="qoperator")),
        "ort int8 qdq per-channel, stem int8": ("onnxruntime", "int8",
                                                quantize_int8(fp32, made / "qdq_stem.onnx", iter(calib_batches),
                                                              keep_stem_fp32=False)),
        "ort int8 qdq per-tensor, stem fp32": ("onnxruntime", "int8",
                                               quantize_int8(fp32, made / "qdq_pt.onnx", iter(calib_batches),
                                                             per_channel=False)),
        "openvino fp32": ("openvino", "fp32", fp32),
    }
    ov_int8 = bundle / "model.openvino.int8.xml"
    if not ov_int8.is_file():
        ov_int8 = targets.quantize_openvino(fp32, made / "model.openvino.int8.xml", calib_batches)
    variants["openvino int8 (NNCF)"] = ("openvino", "int8", ov_int8)

    logits = meta.outputs.index("logits")
    rows = []
    for name, (runtime, precision, path) in variants.items():
        if runtime == "onnxruntime":
            sess = ort_session(path)
            run = lambda x, s=sess: s.run(None, {"image": x})  # noqa: E731
        else:
            run = compile_openvino(path)
        acc = targets.runner_accuracy(run, ex._batches_of(held_out, 64), logits)
        for batch in args.batch_sizes:
            job = {"runtime": runtime, "engine": runtime_to_json(RUNTIMES[runtime]), "arch": meta.arch, "precision": precision, "batch": batch,
                   "resolution": meta.view["image_size"], "warmup": args.warmup, "iters": args.iters,
                   "threads": args.threads, "path": str(path), "torch": None, "ort_settings": {}}
            res = B._run_child(job, 900)
            p50 = B._percentile(res["times_ms"], 50)
            rows.append({"variant": name, "runtime": runtime, "precision": precision, "batch": batch,
                         "accuracy": acc, "throughput_ips": batch * 1000.0 / p50, "latency_ms_p50": p50,
                         "peak_mem_mb": res["peak_mem_mb"], "file": str(path)})
            print(f"{name:<48} b={batch:<3} {rows[-1]['throughput_ips']:9.0f} img/s  acc {100 * acc:.2f}%", flush=True)

    base = {(r["runtime"], r["batch"]): r["throughput_ips"] for r in rows if r["precision"] == "fp32"}
    ref_acc = next(r["accuracy"] for r in rows if r["variant"] == "ort fp32")
    lines = [f"Student {meta.arch} ({bundle}), held-out split `{split}` ({len(held_out):,} images); "
             f"calibration: {len(calib)} training images; machine: {B.machine_info()['cpu']}, "
             f"{B.machine_info()['cores']} cores.", "",
             "| variant | batch | images/s | vs FP32 on its runtime | accuracy | same accuracy (±0.5) |",
             "|---|---:|---:|---:|---:|---|"]
    for r in rows:
        ratio = r["throughput_ips"] / base[(r["runtime"], r["batch"])]
        same = abs(r["accuracy"] - ref_acc) <= 0.005
        lines.append(f"| {r['variant']} | {r['batch']} | {r['throughput_ips']:,.0f} | {ratio:.2f}x | "
                     f"{100 * r['accuracy']:.2f}% | {'yes' if same else 'no'} |")
    winners = [r for r in rows if r["precision"] == "int8" and abs(r["accuracy"] - ref_acc) <= 0.005
               and r["throughput_ips"] > base[(r["runtime"], r["batch"])]]
    lines += ["", "INT8 faster than FP32 on its own runtime at the same accuracy: " + (
        "; ".join(f"{r['variant']} at batch {r['batch']} ({r['throughput_ips'] / base[(r['runtime'], r['batch'])]:.2f}x)"
                  for r in winners) if winners else "none")]
    profile = {name: ort_op_profile(variants[name][2], meta.view["image_size"], args.threads)
               for name in ("ort fp32", "ort int8 qdq per-channel, stem fp32 (bundle)")}
    lines += ["", "Where ONNX Runtime's time goes at batch 8 (its profiler, 200 runs; share of node time by operator):", ""]
    for name, ops in profile.items():
        total = sum(ops.values())
        top = sorted(ops.items(), key=lambda kv: -kv[1])[:6]
        lines.append(f"- {name}: {total / 200 / 1000:.3f} ms of node time per batch; "
                     + ", ".join(f"{op} {100 * t / total:.0f}%" for op, t in top))
    storage.write_json(out / "int8.json", {"machine": B.machine_info(), "bundle": str(bundle), "split": split,
                                           "rows": rows, "profile_us": profile,
                                           "argv": sys.argv[1:]})
    storage.write_text(out / "int8.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
