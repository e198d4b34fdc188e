"""The benchmark's outputs: student/teacher ratios, the race's verdict (fastest runtime, INT8 vs FP32), the machine,
markdown tables and the plot."""

from __future__ import annotations

import importlib.metadata
import os
import platform
from pathlib import Path

from edgedistill import storage, tutorial


def race_summary(rows: list[dict]) -> dict | None:
    """The race's verdict at the largest batch, each model at its deployment resolution.

    Returns:
        None without student rows, else ``{batch, runtime, precision, throughput_ips}`` of the fastest student
        row; ``teacher``: the teacher's fastest row on that same runtime (``runtime, precision, throughput_ips``,
        ``speedup`` = student / teacher throughput) or None; ``int8_vs_fp32``: per runtime, the student's INT8
        throughput / its FP32 throughput (> 1: INT8 is faster there).
    """
    students = [r for r in rows if r["model"] == "student" and r.get("native", True)]
    if not students:
        return None
    batch = max(r["batch"] for r in students)
    at = [r for r in students if r["batch"] == batch]
    best = max(at, key=lambda r: r["throughput_ips"])
    teachers = [r for r in rows if r["model"] == "teacher" and r["runtime"] == best["runtime"] and r["batch"] == batch
                and r.get("native", True)]
    teacher = max(teachers, key=lambda r: r["throughput_ips"]) if teachers else None
    by = {(r["runtime"], r["precision"]): r["throughput_ips"] for r in at}
    int8 = {rt: by[(rt, "int8")] / by[(rt, "fp32")] for rt, p in by if p == "int8" and (rt, "fp32") in by}
    return {"batch": batch, "runtime": best["runtime"], "precision": best["precision"],
            "throughput_ips": best["throughput_ips"], "runtimes": sorted({r["runtime"] for r in at}),
            "teacher": None if teacher is None else {
                "precision": teacher["precision"], "throughput_ips": teacher["throughput_ips"],
                "speedup": best["throughput_ips"] / teacher["throughput_ips"]},
            "int8_vs_fp32": int8}


def race_lines(race: dict) -> list[str]:
    """The verdict in words: the fastest runtime, its speed-up over the teacher there, where INT8 pays."""
    lines = [f"Fastest runtime for the student on this machine (batch {race['batch']}, of "
             f"{', '.join(race['runtimes'])}): **{race['runtime']} {race['precision'].upper()}**, "
             f"{race['throughput_ips']:,.0f} images/s"]
    t = race.get("teacher")
    if t:
        lines[0] += (f", {t['speedup']:.1f}x the teacher on {race['runtime']} ({t['precision'].upper()}, "
                     f"{t['throughput_ips']:,.0f} images/s).")
    else:
        lines[0] += "."
    for runtime, ratio in sorted(race["int8_vs_fp32"].items()):
        verdict = "deploy INT8 here" if ratio > 1 else "INT8 is slower here: deploy FP32"
        lines.append(f"{runtime}: the INT8 student runs at {ratio:.2f}x its FP32 throughput ({verdict}).")
    return lines


def bench_ratios(rows: list[dict]) -> list[dict]:
    """Student vs teacher ratios for each runtime/precision/batch, at equal resolution and at native resolutions.

    ``speedup`` = student throughput / teacher throughput; ``memory_ratio`` = teacher peak memory /
    student peak memory (both > 1 when the student is better), as in the tutorial's 4.2x / 3.45x.
    """
    out = []
    for s in (r for r in rows if r["model"] == "student"):
        for t in (r for r in rows if r["model"] in ("teacher", "tutorial_teacher")):
            key = ("runtime", "precision", "batch", "setting")  # "setting": extra options a caller tags rows with
            same_setting = all(s.get(k) == t.get(k) for k in key)
            if not same_setting:
                continue
            if s["resolution"] == t["resolution"]:
                kind = "same_resolution"
            elif s["native"] and t["native"]:
                kind = "native_resolution"
            else:
                continue
            out.append({
                "student": s["arch"], "teacher": t["arch"], "teacher_model": t["model"], "runtime": s["runtime"],
                "precision": s["precision"], "batch": s["batch"], "student_resolution": s["resolution"],
                "teacher_resolution": t["resolution"], "comparison": kind, "setting": s.get("setting"),
                "speedup": s["throughput_ips"] / t["throughput_ips"],
                "latency_ratio": t["latency_ms_p50"] / s["latency_ms_p50"],
                "memory_ratio": t["peak_mem_mb"] / max(s["peak_mem_mb"], 1e-6),
            })
    return out


def machine_info() -> dict:
    """Where the numbers were measured."""
    import onnxruntime

    cpu = platform.processor()
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "onnxruntime": onnxruntime.__version__}
    for package in ("openvino", "executorch"):  # the other deploy engines, where installed
        try:
            info[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def format_table(rows: list[dict], ratios: list[dict] | None = None, race: dict | None = None) -> str:
    """Markdown tables: the race's verdict, measurements, ratios, and the tutorial's Jetson figures (reference)."""
    head = "| model | arch | runtime | precision | batch | res | img/s | p50 ms | p95 ms | peak MB | file MB |\n|" + "---|" * 11
    lines = ["## Measured", "", head]
    for r in rows:
        file_mb = f"{r['file_mb']:.1f}" if r.get("file_mb") else "-"
        runtime = r["runtime"] + (f" ({r['setting']})" if r.get("setting") else "")
        lines.append(f"| {r['model']} | {r['arch']} | {runtime} | {r['precision']} | {r['batch']} | {r['resolution']} | "
                     f"{r['throughput_ips']:.1f} | {r['latency_ms_p50']:.2f} | {r['latency_ms_p95']:.2f} | "
                     f"{r['peak_mem_mb']:.1f} | {file_mb} |")
    if race:
        lines += ["", "## The race", "", *[f"- {line}" for line in race_lines(race)]]
    if ratios:
        lines += ["", "## Student vs teacher (higher is better for the student)", "",
                  "| student | teacher | runtime | precision | batch | res (s/t) | speedup | memory ratio |", "|" + "---|" * 8]
        for q in ratios:
            runtime = q["runtime"] + (f" ({q['setting']})" if q.get("setting") else "")
            lines.append(f"| {q['student']} | {q['teacher']} | {runtime} | {q['precision']} | {q['batch']} | "
                         f"{q['student_resolution']}/{q['teacher_resolution']} | {q['speedup']:.2f}x | {q['memory_ratio']:.2f}x |")
    lines += ["", "## Reference: the tutorial's published Jetson Orin Nano figures (not measured here)", "",
              "| model | arch | runtime | precision | batch | res | img/s | latency ms | memory MB |", "|" + "---|" * 9]
    for r in tutorial.DEPLOY:
        lines.append(f"| {r['model']} | {r['arch']} | {r['runtime']} | {r['precision']} | {r['batch']} | {r['resolution']} | "
                     f"{r['throughput_ips']:.1f} | {r['latency_ms_p50']:.2f} | {r['peak_mem_mb']:.0f} |")
    lines.append(f"\nTutorial ratios: {tutorial.RATIOS['throughput']}x faster, {tutorial.RATIOS['memory']}x less memory.")
    return "\n".join(lines) + "\n"


def plot_bench(rows: list[dict], path: str | os.PathLike) -> bool:
    """Bar chart of throughput and peak memory per measurement, the tutorial's Jetson bars hatched beside them.

    Returns False (and writes nothing) on a runtime-only install, which has no matplotlib.
    """
    try:
        import matplotlib
    except ImportError:
        return False

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    all_rows = list(rows) + tutorial.DEPLOY
    labels = [f"{r['arch']}\n{r['runtime'].replace(' (tutorial, reference)', '*')}\n{r['precision']} b{r['batch']} {r['resolution']}px"
              for r in all_rows]
    colors = ["tab:orange" if r["model"] != "student" else "tab:blue" for r in all_rows]
    hatch = ["//" if r in tutorial.DEPLOY else "" for r in all_rows]
    fig, axes = plt.subplots(2, 1, figsize=(max(8, 0.9 * len(all_rows)), 9), sharex=True)
    for ax, key, title in ((axes[0], "throughput_ips", "throughput (images/s, log)"), (axes[1], "peak_mem_mb", "peak memory (MB)")):
        bars = ax.bar(range(len(all_rows)), [r[key] for r in all_rows], color=colors)
        for bar, h in zip(bars, hatch):
            bar.set_hatch(h)
        ax.set_ylabel(title)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_yscale("log")
    axes[1].set_xticks(range(len(all_rows)), labels, rotation=90, fontsize=7)
    axes[0].set_title("teacher (orange) vs student (blue); hatched *: tutorial's Jetson Orin Nano figures, reference only")
    fig.tight_layout()
    with storage.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return True


def write_bench(rows: list[dict], out_dir: str | os.PathLike, *, notes: list[str] | None = None) -> dict:
    """Write ``bench.json`` (rows, ratios, reference figures, machine), ``bench.md`` and ``bench.png``."""
    out_dir = Path(out_dir)
    ratios = bench_ratios(rows)
    notes = list(notes or [])
    report = {"machine": machine_info(), "rows": rows, "ratios": ratios, "race": race_summary(rows),
              "reference_tutorial_jetson": tutorial.DEPLOY, "reference_tutorial_ratios": tutorial.RATIOS, "notes": notes}
    if not plot_bench(rows, out_dir / "bench.png"):
        notes.append("bench.png not drawn: matplotlib is not installed (pip install 'edgedistill[train]')")
    storage.write_json(out_dir / "bench.json", report)
    table = format_table(rows, ratios, report["race"])
    if notes:
        table += "\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    storage.write_text(out_dir / "bench.md", table)
    return report
