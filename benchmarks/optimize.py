"""QAT and 2:4 sparsity of one distilled student against FP32 and today's post-training INT8 (issue 11, section 2).

For one trained run (a CIFAR-10 student distilled by this toolkit), in one process:

1. ``edgedistill optimize`` with each recipe: ``qat``, ``sparse24`` and ``sparse24-qat`` (finished stages with the same
   settings are reused, so a rerun only measures);
2. ``edgedistill export`` of the run (FP32 and ONNX Runtime's post-training static INT8, calibrated on the same number
   of training images as QAT) and of each stage (its float model; for QAT stages the QDQ model);
3. accuracy of every exported file, run by ONNX Runtime, on the run's validation split and on the held-out test
   split when the data has one (the demo's 5,000 evaluation images; read only here);
4. ONNX Runtime CPU throughput at batch 1 and 8, each model in its own child process (``deploy.bench``: warm-up,
   median of the timed runs; the whole race ``--repeats`` times, each variant's best kept), plus the kernels ONNX
   Runtime actually runs (its optimized graph);
5. the measured sparsity (2:4 layers, share of zeros, the 2:4 check on the exported weights) and each recipe's
   fine-tune time.

Writes ``<out>/optimize.json`` and ``<out>/optimize.md`` and prints the table.

    .venv/bin/python benchmarks/optimize.py --run runs/demo/runs/kd            # the demo's KD student
    .venv/bin/python benchmarks/optimize.py --run /tmp/smoke/kd --max-steps 5 --iters 5 --out /tmp/smoke/bench

Bars: QAT INT8 at least as accurate as PTQ INT8 and within 0.5 point of FP32; 2:4 sparse within 2 points of dense
(on the held-out split when there is one, else validation).
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

os.environ.setdefault("EDGEDISTILL_NO_PROGRESS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")  # training threads: 2 spin-waiting threads on 2 shared cores run slower
torch.set_num_threads(1)

from edgedistill import storage  # noqa: E402
from edgedistill.config import DataConfig, OptimizeConfig, from_dict  # noqa: E402
from edgedistill.deploy import bench as B  # noqa: E402
from edgedistill.deploy import export as ex  # noqa: E402
from edgedistill.deploy.runtime import ort_session, read_metadata  # noqa: E402
from edgedistill.training import optimize as op  # noqa: E402
from edgedistill.training.recipes import read_recipe  # noqa: E402

RECIPES = {"qat": {"qat": True}, "sparse24": {"sparsity": "2:4"}, "sparse24-qat": {"sparsity": "2:4", "qat": True}}
NOTE_SPARSE = ("ONNX Runtime on CPU has no 2:4 sparse kernels: the sparse model's zeros are stored in dense weights "
               "and multiplied like any other value, so it runs at the dense model's speed. 2:4 pays where sparse "
               "tensor-core kernels exist: TensorRT on NVIDIA Ampere and newer GPUs and on Jetson Orin "
               "(`edgedistill export --tensorrt true` builds with sparse weights allowed), not measured here.")
NOTE_QDQ = ("The QAT models are QDQ graphs laid out for TensorRT (Q/DQ on each conv's input and weights, BatchNorm "
            "unfolded). ONNX Runtime's CPU provider fuses QDQ into integer kernels only when a Q follows the conv, so "
            "it runs these as float convs behind (de)quantize nodes: numerically the fake-quantized model, not faster.")


def ort_kernels(path: Path) -> dict[str, int]:
    """Op types of the graph ONNX Runtime runs after its optimizations (QLinearConv = integer convs)."""
    import onnx

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "opt.onnx"
        ort_session(path, settings={"optimized_model_filepath": str(out)})
        ops = collections.Counter(n.op_type for n in onnx.load(str(out)).graph.node)
    return {k: ops[k] for k in ("QLinearConv", "Conv", "FusedConv", "BatchNormalization", "DequantizeLinear") if ops[k]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", required=True, help="a trained student's run directory")
    ap.add_argument("--out", default="benchmarks/results/optimize", help="optimize.json / optimize.md")
    ap.add_argument("--work", default=None, help="exported models; default <run>/optimize/exports")
    ap.add_argument("--epochs", type=int, default=None, help="fine-tune epochs per stage; default a tenth of the run's")
    ap.add_argument("--max-steps", type=int, default=-1, help="fine-tune steps per stage (-1: no limit); smoke checks")
    ap.add_argument("--calib-size", type=int, default=256, help="calibration images of QAT and of PTQ INT8")
    ap.add_argument("--heldout", default="test", help="held-out split (skipped when the data has none)")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: all cores)")
    ap.add_argument("--repeats", type=int, default=2,
                    help="race every variant this many times, interleaved, and keep each one's best (a shared host's "
                         "load comes and goes between the child processes)")
    args = ap.parse_args()

    run = Path(args.run).resolve()
    work = Path(args.work) if args.work else run / "optimize" / "exports"
    t_all = time.time()
    stages, recipes = {}, {}
    for name, kw in RECIPES.items():
        stages[name] = op.optimize(OptimizeConfig(model=str(run), epochs=args.epochs, max_steps=args.max_steps,
                                                  calib_size=args.calib_size, **kw))
        recipes[name] = read_recipe(stages[name])
    exports = {"run": storage.read_json(_export(run, work / "run", int8=True, calib_size=args.calib_size))}
    for name, stage in stages.items():
        exports[name] = storage.read_json(_export(stage, work / name))

    variants = [  # label, file, precision key for deploy.bench, recipe
        ("FP32", work / "run" / "student" / "model.onnx", "fp32", None),
        ("PTQ INT8 (ONNX Runtime static)", work / "run" / "student" / "model.int8.onnx", "int8", None),
        ("QAT INT8", work / "qat" / "student" / "model.int8.onnx", "int8", "qat"),
        ("2:4 sparse FP32", work / "sparse24" / "student" / "model.onnx", "fp32", "sparse24"),
        ("2:4 + QAT INT8", work / "sparse24-qat" / "student" / "model.int8.onnx", "int8", "sparse24-qat"),
    ]
    config = ex.run_configs(run)
    data = from_dict(DataConfig, config["data"], f"{run}/config.yaml: data")
    val_split = config["train"]["val_split"]
    view = read_metadata(variants[0][1]).view
    from edgedistill.data.splits import build_splits

    splits = {s: ex.real_images(data, s, view) for s in (val_split, args.heldout) if build_splits(data).size(s)}
    rows = []
    for label, path, precision, recipe in variants:
        row = {"variant": label, "file": str(path), "precision": read_metadata(path).precision,
               "accuracy": {s: ex.onnx_accuracy(path, ds) for s, ds in splits.items()}, "ort_kernels": ort_kernels(path)}
        if recipe:
            r = recipes[recipe]
            row["finetune_s"] = r["finetune"]["stages_elapsed_s"]
            row["finetune_epochs"] = r["finetune"]["epochs"]
            row["finetune_val_acc"] = r["accuracy"]["best_val_acc"]
            if r["sparsity_report"]:
                rep = r["sparsity_report"]
                onnx_sp = exports[recipe]["optimize"]["onnx_sparsity"][path.name]
                row["sparsity"] = {"sparse_layers": rep["sparse_layers"], "layers": rep["layers"],
                                   "zeros_of_all_weights": rep["zeros_of_all_weights"],
                                   "all_two_of_four": rep["all_sparse_layers_two_of_four"],
                                   "onnx_weights_two_of_four": f"{onnx_sp['two_of_four']}/{onnx_sp['weights']}",
                                   "skipped": rep["skipped"],
                                   "per_layer": [{k: e[k] for k in ("layer", "zeros", "two_of_four")}
                                                 for e in rep["per_layer"]]}
        rows.append(row)
        print(f"{label}: accuracy {row['accuracy']}", file=sys.stderr)

    entries = [B.BenchEntry(model="student", arch=label, onnx={precision: str(path)}, resolutions=(view["image_size"],),
                            native_resolution=view["image_size"]) for label, path, precision, _ in variants]
    bench = []
    for _ in range(args.repeats):
        bench += B.bench_models(entries, batch_sizes=tuple(args.batch_sizes), warmup=args.warmup, iters=args.iters,
                                threads=args.threads or None, runtimes=("onnxruntime",), precisions=("fp32", "int8"),
                                log=lambda m: print(m, file=sys.stderr))
    for row in rows:
        best = {}
        for r in bench:
            key = f"b{r['batch']}"
            if r["arch"] == row["variant"] and r["throughput_ips"] > best.get(key, {}).get("images_per_s", 0):
                best[key] = {"images_per_s": r["throughput_ips"], "latency_ms_p50": r["latency_ms_p50"]}
        row["ort_cpu"] = best

    key = args.heldout if args.heldout in splits else val_split
    acc = {row["variant"]: row["accuracy"][key] for row in rows}
    fp32, ptq, qat, sparse = acc["FP32"], acc["PTQ INT8 (ONNX Runtime static)"], acc["QAT INT8"], acc["2:4 sparse FP32"]
    bars = {
        f"QAT INT8 >= PTQ INT8 ({key})": qat >= ptq,
        f"QAT INT8 within 0.5 point of FP32 ({key})": fp32 - qat <= 0.005,
        f"2:4 sparse within 2 points of dense FP32 ({key})": fp32 - sparse <= 0.02,
    }
    report = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "args": vars(args), "run": str(run),
              "machine": B.machine_info(), "splits": {s: len(ds) for s, ds in splits.items()}, "bars_on": key,
              "bars": bars, "rows": rows, "notes": [NOTE_SPARSE, NOTE_QDQ], "elapsed_s": round(time.time() - t_all, 1)}
    out = Path(args.out)
    table = format_table(report)
    storage.write_json(out / "optimize.json", report)
    storage.write_text(out / "optimize.md", table)
    print(table)
    print(f"wrote {out / 'optimize.json'}, {out / 'optimize.md'} ({report['elapsed_s']:.0f} s)")


def _export(model: Path, out: Path, **kw) -> Path:
    ex.export_command(str(model), out=str(out), **kw)
    return out / "student" / "export.json"


def format_table(report: dict) -> str:
    splits = list(report["splits"])
    batches = sorted({b for row in report["rows"] for b in row["ort_cpu"]}, key=lambda b: int(b[1:]))
    base = report["rows"][0]["ort_cpu"]
    head = (["variant", "precision"] + [f"{s} acc" for s in splits] + [f"ORT CPU img/s {b}" for b in batches]
            + ["vs FP32 " + batches[-1], "ORT kernels", "2:4 layers (zeros, check)", "fine-tune"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in report["rows"]:
        sp = row.get("sparsity")
        cells = [row["variant"], row["precision"]]
        cells += [f"{100 * row['accuracy'][s]:.2f}%" for s in splits]
        cells += [f"{row['ort_cpu'][b]['images_per_s']:.0f}" for b in batches]
        cells.append(f"{row['ort_cpu'][batches[-1]]['images_per_s'] / base[batches[-1]]['images_per_s']:.2f}x")
        cells.append(", ".join(f"{k} {v}" for k, v in row["ort_kernels"].items()))
        cells.append(f"{sp['sparse_layers']}/{sp['layers']} ({100 * sp['zeros_of_all_weights']:.1f}% zeros, "
                     f"{'exact' if sp['all_two_of_four'] else 'NOT exact'}; ONNX {sp['onnx_weights_two_of_four']})"
                     if sp else "-")
        cells.append(f"{row['finetune_s']:.0f} s ({row['finetune_epochs']} ep/stage)" if "finetune_s" in row else "-")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Bars (on {report['bars_on']}): " + "; ".join(f"{k}: {'met' if v else 'NOT met'}"
                                                              for k, v in report["bars"].items())]
    skipped = next((row["sparsity"]["skipped"] for row in report["rows"] if row.get("sparsity")), [])
    if skipped:
        lines.append("2:4 skipped: " + "; ".join(f"{s['layer']} {s['shape']} ({s['reason']})" for s in skipped))
    lines += [f"- {n}" for n in report["notes"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
