"""The demo's report: ``report.md`` telling what was run and what it shows, from ``results.json``.

Every number in the report is read from the results of this run; the sentences that
interpret them are chosen by comparing those numbers, so the text stays true when the
numbers change.
"""

from __future__ import annotations

from pathlib import Path

from edgedistill import storage

# The tutorial's published figures (jetson-intro-to-distillation, STL10 test accuracy and
# Jetson Orin Nano TensorRT FP16, batch 8, 224x224). Shown for reference, labelled as such.
TUTORIAL_ACCURACY = {
    "teacher zero-shot (OpenCLIP ViT-B-32, text prompts)": 96.68,
    "teacher linear probe": 98.57,
    "resnet18 from scratch (5k labels)": 57.93,
    "resnet18 response KD, labeled only (linear head)": 60.65,
    "resnet18 response KD, + unlabeled (linear head)": 96.88,
    "resnet18 feature KD, + unlabeled (linear head)": 96.912,
}
TUTORIAL_DEPLOY = [
    {"model": "OpenCLIP ViT-B-32", "throughput_ips": 335.8, "latency_ms": 23.82, "memory_mb": 1087},
    {"model": "resnet18", "throughput_ips": 1420.2, "latency_ms": 5.97, "memory_mb": 315},
]


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def findings(results: dict) -> list[str]:
    """Plain sentences comparing the numbers of this run (the tutorial's two findings, and the race)."""
    out = []
    scratch = next((x for x in results["students"] if x["target"] == "labels"), None)
    kd_lab = next((x for x in results["students"] if x["target"] == "logits" and not x["unlabeled"]), None)
    kd_unl = max((x for x in results["students"] if x["target"] == "logits" and x["unlabeled"]),
                 key=lambda x: x.get("n_unlabeled", 0), default=None)
    feat = next((x for x in results["students"] if x["target"] == "embedding"), None)
    if scratch and kd_unl:
        d = 100 * (kd_unl["eval_acc"] - scratch["eval_acc"])
        verdict = "beats" if d > 0 else "does **not** beat"
        out.append(f"Response KD with {kd_unl.get('n_unlabeled', 0):,} unlabeled images {verdict} the from-scratch "
                   f"student on the same labels: {_pct(kd_unl['eval_acc'])} vs {_pct(scratch['eval_acc'])} "
                   f"({d:+.1f} points).")
    if kd_lab and kd_unl:
        d = 100 * (kd_unl["eval_acc"] - kd_lab["eval_acc"])
        verdict = "helps" if d > 0 else "does **not** help"
        out.append(f"Adding unlabeled images to response KD {verdict}: {_pct(kd_unl['eval_acc'])} vs "
                   f"{_pct(kd_lab['eval_acc'])} on the labeled images alone ({d:+.1f} points).")
    if feat and kd_unl:
        d = 100 * (feat["eval_acc"] - kd_unl["eval_acc"])
        verdict = ("the two are level (within a point)" if abs(d) < 1.0 else
                   "feature KD wins" if d > 0 else "response KD wins")
        out.append(f"With the same unlabeled data {verdict}: feature KD {_pct(feat['eval_acc'])}, "
                   f"response KD {_pct(kd_unl['eval_acc'])}.")
    probe = results["teacher"].get("probe_acc")
    if probe and kd_unl:
        out.append(f"Response KD with unlabeled images reaches {100 * kd_unl['eval_acc'] / probe:.0f}% of the "
                   f"teacher probe's accuracy ({_pct(probe)}); the tutorial reached 98% with 100k unlabeled images "
                   f"and 50 GPU epochs.")
    rows = {(r["model"], r["precision"], r["batch"]): r for r in results.get("deploy", [])}
    for batch in sorted({r["batch"] for r in results.get("deploy", [])}):
        te, tt = rows.get(("teacher", "fp32", batch)), rows.get(("tutorial_teacher", "fp32", batch))
        for prec in ("fp32", "int8"):
            st = rows.get(("student", prec, batch))
            if not (st and te):
                continue
            line = (f"Batch {batch}: the {prec.upper()} student runs {st['throughput_ips'] / te['throughput_ips']:.1f}x "
                    f"the demo teacher's throughput")
            if tt:
                line += f" and {st['throughput_ips'] / tt['throughput_ips']:.0f}x the tutorial teacher's"
            mem = te["peak_mem_mb"] / max(st["peak_mem_mb"], 1e-6)
            line += (f", with {mem:.1f}x less memory than the demo teacher." if mem >= 1 else
                     f", but uses {1 / mem:.1f}x the demo teacher's memory.")
            out.append(line)
    return out


def write_report(results: dict, out_dir: Path) -> Path:
    """Write ``report.md`` in ``out_dir`` (which holds the plots named in ``results['plots']``)."""
    t = results["teacher"]
    lines = [
        "# edgedistill demo report",
        "",
        f"Command: `{results['command']}` — {results['machine']} — {results['elapsed_s']:.0f} s, "
        f"finished {results['finished']}.",
        "",
        "## What was run",
        "",
        results["story"],
        "",
        "## What it shows",
        "",
    ]
    lines += [f"- {f}" for f in findings(results)]
    lines += ["", "## Accuracy on the held-out evaluation images", "",
              "| model | arch | trained on | target | accuracy |", "|---|---|---|---|---|",
              f"| teacher, ImageNet label map (no labels) | {t['arch']} | — | — | {_pct(t['label_map_acc'])} |",
              f"| teacher, linear probe ({t['n_labels']} labels) | {t['arch']} | labels | — | {_pct(t['probe_acc'])} |"]
    for s in results["students"]:
        data = f"labels + {s.get('n_unlabeled', 0):,} unlabeled" if s["unlabeled"] else "labels"
        lines.append(f"| {s['name']} | {s['arch']} | {data} | {s['target']} | {_pct(s['eval_acc'])} |")
    lines += ["", "![accuracy per model](accuracy.png)", "",
              "![accuracy vs unlabeled images](accuracy_vs_unlabeled.png)", "",
              f"Confusion matrix of the best student ({results['best_student']}):", "",
              "![confusion matrix](confusion_best_student.png)", "",
              "## Deployment race (ONNX Runtime, CPU, this machine)", "",
              "| model | arch | precision | batch | resolution | images/s | latency p50 ms | memory MB |",
              "|---|---|---|---|---|---|---|---|"]
    for r in results.get("deploy", []):
        lines.append(f"| {r['model']} | {r['arch']} | {r['precision']} | {r['batch']} | {r['resolution']} | "
                     f"{r['throughput_ips']:.0f} | {r['latency_ms_p50']:.2f} | {r['peak_mem_mb']:.0f} |")
    q = results.get("int8") or {}
    if q.get("fp32_val_acc") is not None and q.get("int8_val_acc") is not None:
        lines += ["", f"INT8 (static, calibrated on training images) keeps the student's validation accuracy at "
                      f"{_pct(q['int8_val_acc'])} against {_pct(q['fp32_val_acc'])} in FP32."]
    lines += ["", "`tutorial_teacher` is the OpenCLIP ViT-B-32 image tower, **random-initialised**: speed and "
              "memory do not depend on the weights. Memory is the resident-set growth of a child process "
              "that loads and runs only that model.", "", "![throughput and latency](bench.png)", "",
              "## The tutorial's published figures (for reference; STL10, Jetson Orin Nano)", "",
              "| tutorial run | STL10 test accuracy % |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in TUTORIAL_ACCURACY.items()]
    lines += ["", "| tutorial model (TensorRT FP16, batch 8, 224 px) | images/s | latency ms | memory MB |",
              "|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['throughput_ips']} | {r['latency_ms']} | {r['memory_mb']} |" for r in TUTORIAL_DEPLOY]
    lines += ["", "The tutorial selected its checkpoints on the test set; here checkpoints are selected on a "
              "validation split carved from the labeled images and the evaluation images are read once.", ""]
    path = out_dir / "report.md"
    storage.write_text(path, "\n".join(lines))
    return path
