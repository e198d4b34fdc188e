"""Reports written from results, never from fixed text: ``distill``'s report.md and a grid's results tables.

``distill``'s report reads its results through the typed schema (``pipelines.results.DistillResults``,
the same dataclasses that write ``results.json``); every number is read from the run's results; the sentences that interpret them are chosen by
comparing those numbers, so the text stays true when the numbers change. The tutorial's
published figures appear in their own section, labelled as the tutorial's.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

from edgedistill import storage, tutorial
from edgedistill.deploy.bench_report import race_lines
from edgedistill.pipelines.results import DeployRow, DistillResults


def pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def resolvable_gap(n: int, p: float = 0.7) -> float:
    """The accuracy difference (points) two models scored on the same ``n`` images can be told apart by at 95%.

    Conservative: the difference of two independent binomial proportions near ``p``,
    ``1.96 * sqrt(2 p (1 - p) / n)``.
    """
    return 100 * 1.96 * math.sqrt(2 * p * (1 - p) / max(n, 1))


def _race(results: DistillResults, runtime: str = "onnxruntime") -> dict[tuple[str, str, int], DeployRow]:
    return {(r.model, r.precision, r.batch): r for r in results.deploy if r.runtime == runtime}


def headline(results: DistillResults) -> list[str]:
    """The first screen: the deployed student against its teacher in accuracy, speed and size."""
    best = results.best
    reference = results.teacher.reference()
    ref_head = reference[1] if reference else None
    ref = ref_head.final if ref_head else None
    where = f"the {results.evaluation.n:,} held-out images" if results.evaluation else "validation"
    acc = best.final
    lines = [f"**{best.name}** ({best.arch}, {best.params / 1e6:.2f}M parameters) scores **{pct(acc)}** on "
             f"{where}" + (f", **{100 * acc / ref:.1f}% of the teacher's {ref_head.title or reference[0]}** "
                           f"({pct(ref)})" if ref else "") + "."]
    baselines = [s for s in results.students if s.target == "labels" and s.final is not None]
    if baselines:
        b = max(baselines, key=lambda s: s.final)
        lines.append(f"It is {100 * (acc - b.final):+.1f} points against the best student trained on the labels "
                     f"alone ({b.name}: {pct(b.final)}).")
    race = _race(results)
    batch = max((k[2] for k in race), default=None)
    te = race.get(("teacher", "fp32", batch))
    t_params = results.teacher.params
    for prec in ("fp32", "int8"):
        st = race.get(("student", prec, batch))
        if st and te:
            mem = te.peak_mem_mb / max(st.peak_mem_mb, 1e-6)
            lines.append(f"{prec.upper()} student, ONNX Runtime on this CPU, batch {batch}: "
                         f"**{st.throughput_ips / te.throughput_ips:.1f}x the teacher's throughput** "
                         f"({st.throughput_ips:.0f} vs {te.throughput_ips:.0f} images/s, teacher in FP32), "
                         + (f"{mem:.1f}x less resident memory" if mem >= 1 else f"{1 / mem:.1f}x **more** resident memory")
                         + f" ({st.peak_mem_mb:.0f} vs {te.peak_mem_mb:.0f} MB).")
    if results.race:
        lines += race_lines(results.race)
    if t_params and best.params:
        ratio = t_params / best.params
        lines.append(f"Size: {best.params / 1e6:.2f}M parameters against the teacher's {t_params / 1e6:.2f}M "
                     + (f"({ratio:.1f}x fewer)." if ratio >= 1 else f"({1 / ratio:.1f}x **more**)."))
    return lines


def _story(results: DistillResults) -> list[str]:
    d, t = results.data, results.teacher
    c = d.counts
    labels = (f"{c.get('train', 0):,} labeled training images" if d.train_labels
              else f"{c.get('train', 0):,} training images whose labels are not used")
    out = [f"Data: `{d.dataset}`: {labels}, {c.get('val', 0):,} validation images (they choose each student's best "
           f"epoch and the student to deploy), {c.get('unlabeled', 0):,} unlabeled images"
           + (f", {c.get('test', 0):,} held-out images read once for the final numbers." if d.held_out else
              "; no held-out split, so every number is validation accuracy."),
           f"Teacher: `{t.describe}` at {t.image_size or 'its native'} px ({t.params / 1e6:.2f}M parameters, "
           f"run by {t.runtime} for caching), frozen; its outputs on every image are computed once and cached."]
    for s in results.students:
        kind = {"labels": "cross-entropy on the labels", "logits": f"response KD from the {s.head} head",
                "embedding": f"feature KD on the teacher's embedding, classified through the {s.head} head"}.get(
                    s.target, f"target {s.target}")
        loss = "" if s.loss in ("ce", "kd", "feature") else f" (loss {s.loss})"
        extra = f", {s.kwargs}" if s.kwargs else ""
        out.append(f"Student `{s.name}`: {s.arch}{extra} ({s.params / 1e6:.2f}M parameters), {kind}{loss}, "
                   f"{s.n_unlabeled:,} unlabeled images, {s.epochs} epochs, "
                   f"{(s.train_s or 0) / 60:.1f} min at {s.images_per_s or 0:.0f} images/s.")
    return out


def plan_section(plan: dict[str, Any] | None) -> list[str]:
    """The report's plan (``DistillResults.plan``): the candidates the planner measured (kept or not, and why) and each
    student's budget."""
    if not plan:
        return []
    out = ["## Plan", ""]
    if plan.get("table"):
        out += [f"Student candidates, each measured on ONNX Runtime (FP32, batch {plan['deploy_batch']} and batch 1) "
                "in its own child process and for a few training steps; the planner's rule is in "
                "`edgedistill/pipelines/planner.py`:", "", plan["table"], ""]
    for name, b in (plan.get("budgets") or {}).items():
        step = f", {1000 * b['budget_step_s']:.0f} ms per step" if b.get("budget_step_s") else ""
        ref = b.get("reference_epochs")
        slower = (f" **A smaller schedule than on the machine this recipe was tuned on ({ref} epochs there): this "
                  "machine trains more slowly, so the budget buys fewer epochs.**"
                  if ref and b["epochs_completed"] < ref else
                  (f" The tuned recipe's machine trained {ref} epochs in this budget." if ref else ""))
        out.append(f"- `{name}`: a budget of {b['budget_s'] / 60:.1f} min{step}: {b['budget_epochs']} epochs planned, "
                   f"{b['epochs_completed']} trained in {b['elapsed_s'] / 60:.1f} min.{slower}")
    return out + [""]


def _timing(results: DistillResults) -> str:
    """How long the run took: this invocation, and the earlier ones whose finished steps it reused."""
    now = f"{results.elapsed_s:.0f} s, finished {results.finished}"
    earlier = results.invocations[:-1]
    if not earlier:
        return now
    first = earlier[0]
    return (f"{now}, reusing the finished steps of {len(earlier)} earlier invocation{'s' if len(earlier) > 1 else ''} "
            f"(the first: {first.elapsed_s:.0f} s, finished {first.finished})")


def write_distill_report(results: DistillResults, out_dir: Path, before_accuracy: list[str] | None = None) -> Path:
    """``report.md`` of a distill run (the plots it names sit beside it); ``before_accuracy``: lines of a section that
    goes before the accuracy table (a zero-label run's retrieval)."""
    m = results.machine
    held = results.data.held_out
    best = results.best
    lines = [f"# {results.name}: a {best.arch} student distilled from {results.teacher.describe}", ""]
    lines += [f"- {line}" for line in headline(results)]
    n_val = best.n_val or 0
    lines += [f"- The deployed student was chosen on {n_val:,} validation images, never on held-out ones; at that size "
              f"two students' accuracies are told apart (95%) when they differ by more than about "
              f"{resolvable_gap(n_val):.1f} points."]
    lines += [f"- {n}" for n in results.notes]
    lines += ["", f"Command: `{results.command}`; {m.describe()}; torch {m.torch or '?'}, onnxruntime "
              f"{m.onnxruntime or '?'}; {_timing(results)}."]
    if results.step_seconds:
        lines += ["", "Seconds per step of this invocation: " + ", ".join(
            f"{name} {sec:.0f}" for name, sec in results.step_seconds.items()) + "."]
    lines += [""] + plan_section(results.plan) + (before_accuracy or []) + [
              "## Accuracy", "", f"| model | trained on | val acc | {held or 'held-out'} acc | % of teacher |",
              "|---|---|---:|---:|---:|"]
    reference = results.teacher.reference()
    ref = reference[1].final if reference else None
    for head, r in results.teacher.heads.items():
        share = f"{100 * r.final / ref:.0f}%" if ref and r.final is not None else "—"
        lines.append(f"| teacher, {head} head | {'labels' if r.needs_labels else 'no labels'} | {pct(r.val_acc)} | "
                     f"{pct(r.test_acc)} | {share} |")
    for s in results.students:
        data = "labels" if s.target == "labels" else f"teacher {s.head} head"
        data += f" + {s.n_unlabeled:,} unlabeled" if s.n_unlabeled else ""
        share = f"{100 * s.final / ref:.0f}%" if ref and s.final is not None else "—"
        mark = " **(deployed)**" if s.name == results.best_student else ""
        lines.append(f"| {s.name}{mark} | {data} | {pct(s.val_acc)} | {pct(s.test_acc)} | {share} |")
    lines += ["", "![accuracy per model](accuracy.png)", "", "![accuracy vs unlabeled images](accuracy_vs_unlabeled.png)"]
    if results.evaluation:
        lines += ["", f"Confusion matrix of {results.best_student} on the held-out images:", "",
                  "![confusion matrix](confusion_best_student.png)"]
    lines += ["", "## Deployment (every runtime installed on this machine)", "",
              "| model | arch | runtime | precision | batch | resolution | images/s | latency p50 ms | memory MB | file MB |",
              "|---|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in results.deploy:
        lines.append(f"| {r.model} | {r.arch} | {r.runtime} | {r.precision} | {r.batch} | {r.resolution} | "
                     f"{r.throughput_ips:.0f} | {r.latency_ms_p50:.2f} | {r.peak_mem_mb:.0f} | {r.file_mb:.1f} |")
    acc = results.export.accuracy
    if acc.get("fp32") is not None and acc.get("int8") is not None:
        lines += ["", f"INT8 (static, calibrated on training images) scores {pct(acc['int8'])} against "
                      f"{pct(acc['fp32'])} in FP32 on the {results.export.split} images (ONNX Runtime)."]
    if acc.get("openvino_int8") is not None:
        lines += [f"OpenVINO's INT8 (NNCF, the same calibration images) scores {pct(acc['openvino_int8'])}"
                  + (f", OpenVINO FP32 {pct(acc['openvino_fp32'])}" if acc.get("openvino_fp32") is not None else "") + "."]
    lines += ["", "Memory is the resident-set growth of a child process that loads and runs only that model. "
              "`tutorial_teacher` is the tutorial's OpenCLIP teacher architecture with random weights (speed and "
              "memory do not depend on them).", "", "![throughput and memory](bench.png)", "", "## What was run", ""]
    lines += [f"- {line}" for line in _story(results)]
    lines += ["", f"The deployed student is `{results.export.dir}`: `edgedistill predict "
              f"{results.export.dir} IMAGES...`.", "",
              "## The tutorial's published figures (reference, not measured here)", "",
              f"Source: {tutorial.SOURCE}; its checkpoints were chosen on the test set.", "",
              "| tutorial run | STL10 test accuracy % |", "|---|---:|"]
    lines += [f"| {desc} | {acc} |" for desc, acc in tutorial.ACCURACY.values()]
    lines += ["", "| tutorial model (Jetson Orin Nano, TensorRT FP16, batch 8, 224 px) | images/s | latency ms | memory MB |",
              "|---|---:|---:|---:|"]
    lines += [f"| {r['arch']} | {r['throughput_ips']} | {r['latency_ms_p50']} | {r['peak_mem_mb']:.0f} |" for r in tutorial.DEPLOY]
    path = out_dir / "report.md"
    storage.write_text(path, "\n".join(lines) + "\n")
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


