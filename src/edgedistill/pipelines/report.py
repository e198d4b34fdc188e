"""The demo's report: ``report.md`` telling what was run and what it shows, from ``results.json``.

Every number in the report is read from the results of this run; the sentences that
interpret them are chosen by comparing those numbers, so the text stays true when the
numbers change.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from edgedistill import storage, tutorial


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
    lines += [f"| {desc} | {acc} |" for desc, acc in tutorial.ACCURACY.values()]
    lines += ["", "| tutorial model (TensorRT FP16, batch 8, 224 px) | images/s | latency ms | memory MB |",
              "|---|---|---|---|"]
    lines += [f"| {r['arch']} | {r['throughput_ips']} | {r['latency_ms_p50']} | {r['peak_mem_mb']:.0f} |" for r in tutorial.DEPLOY]
    lines += ["", "The tutorial selected its checkpoints on the test set; here checkpoints are selected on a "
              "validation split carved from the labeled images and the evaluation images are read once.", ""]
    path = out_dir / "report.md"
    storage.write_text(path, "\n".join(lines))
    return path


# ----------------------------------------------------------------------------- grid results


def _fmt(x: Any) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        return f"{100 * x:.2f}" if x <= 1.0 else f"{x:.2f}"
    return str(x)


def write_grid_results(results: dict, out: Path) -> None:
    """``results.json``, ``results.csv``, ``results.md`` and the two plots, into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    rows = results["rows"]
    storage.write_json(out / "results.json", results)
    cols = ["name", "kind", "arch", "target", "head", "unlabeled", "n_unlabeled", "val_acc", "test_acc", "published", "train_s"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    storage.write_text(out / "results.csv", buf.getvalue())
    has_test = any(r.get("test_acc") is not None for r in rows)
    has_pub = any(r.get("published") is not None for r in rows)
    head = ["run", "arch", "target", "unlabeled data", "val acc %"] + (["test acc %"] if has_test else []) + (
        ["tutorial (published) %"] if has_pub else []) + ["train min"]
    train_s = sum(r.get("train_s") or 0.0 for r in rows)
    lines = [f"# Results: {results.get('name')}", "",
             f"Grid `{results['grid']}`: this invocation took {results['elapsed_s']:.0f} s; the students' training "
             f"times (including earlier, resumed or skipped invocations) add up to {train_s / 60:.1f} min.",
             "Validation accuracy selects checkpoints; test accuracy (where shown) is read once, at the end.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["name"], r.get("arch") or "", r.get("target") or "", str(r.get("n_unlabeled") or "—"), _fmt(r.get("val_acc"))]
        cells += [_fmt(r.get("test_acc"))] if has_test else []
        cells += [_fmt(r.get("published"))] if has_pub else []
        cells += [f"{r['train_s'] / 60:.1f}" if r.get("train_s") else "—"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "![accuracy per run](accuracy.png)", "", "![accuracy vs unlabeled data](accuracy_vs_unlabeled.png)", ""]
    storage.write_text(out / "results.md", "\n".join(lines))
    plot_accuracy(rows, out / "accuracy.png", title=f"{results.get('name')}: accuracy per run")
    plot_accuracy_vs_unlabeled(rows, out / "accuracy_vs_unlabeled.png")


def _acc(r: dict) -> float | None:
    return r.get("test_acc") if r.get("test_acc") is not None else r.get("val_acc")


def plot_accuracy(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if _acc(r) is not None]
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.2))
    colors = ["#7a7a7a" if r["kind"] == "teacher" else "#2a7ab9" for r in rows]
    y = range(len(rows))
    ax.barh(list(y), [100 * _acc(r) for r in rows], color=colors)
    for i, r in enumerate(rows):
        ax.text(100 * _acc(r) + 0.5, i, f"{100 * _acc(r):.1f}", va="center", fontsize=8)
    ax.set_yticks(list(y), [r["name"] for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("accuracy % (test where read, else validation); grey: teacher")
    ax.set_xlim(0, 105)
    ax.set_title(title)
    fig.tight_layout()
    with storage.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def plot_accuracy_vs_unlabeled(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    groups: dict[str, list[tuple[int, float]]] = {}
    for r in rows:
        if r["kind"] == "student" and _acc(r) is not None:
            key = f"{r['arch']} · {r['target']}"
            groups.setdefault(key, []).append((int(r.get("n_unlabeled") or 0), 100 * _acc(r)))
    for key, pts in sorted(groups.items()):
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=key)
    for r in rows:
        if r["kind"] == "teacher" and _acc(r) is not None:
            ax.axhline(100 * _acc(r), ls="--", color="grey", lw=1)
            # x in axes units: the label stays inside whatever range the points span
            ax.text(0.01, 100 * _acc(r) + 0.5, r["name"], fontsize=7, color="grey", transform=ax.get_yaxis_transform())
    xmax = max((x for pts in groups.values() for x, _ in pts), default=0)
    ax.set_xlim(-0.03 * max(xmax, 1), 1.05 * max(xmax, 1))  # always from no unlabeled data up
    ax.set_xlabel("unlabeled images used")
    ax.set_ylabel("accuracy %")
    ax.set_title("accuracy vs amount of unlabeled data")
    if groups:
        ax.legend(fontsize=7)
    fig.tight_layout()
    with storage.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


