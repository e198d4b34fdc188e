"""Run a YAML grid of trainings and write the results table and plots.

A grid file is plain data::

    name: cifar10
    out_dir: runs/cifar10             # where every run directory goes
    defaults:                         # shared by every row; each section is a config dataclass
      data: {dataset: cifar10, labeled_per_class: 500}
      teacher: {kind: efficientnet_lite0, image_size: 96}
      train: {student: resnet18, image_size: 32, epochs: 10}
    teacher:                          # teacher rows: heads evaluated on the cached teacher outputs
      heads: [label_map, linear]      # the linear probe is trained first; KD rows use it
    runs:
      - name: resnet18_scratch
        train: {target: labels}
        published: 57.93              # optional: the tutorial's number, shown beside ours

Finished runs (``metrics.json`` with ``"finished": true``) are skipped, unfinished ones
resumed from their last checkpoint, so the same command can be rerun after a kill.
"""

from __future__ import annotations

import copy
import csv
import io
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml

from edgedistill import storage
from edgedistill.config import DataConfig, TeacherConfig
from edgedistill.errors import ConfigError

GRID_KEYS = {"name", "out_dir", "defaults", "teacher", "runs", "description", "cache_dir"}
TEACHER_KEYS = {"heads", "templates", "label_map", "published"}
RUN_KEYS = {"name", "data", "teacher", "train", "published", "note"}


def load_grid(path: str | Path) -> dict:
    """Read and validate a grid file; every row's configs are built so mistakes surface before any work."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Grid file {str(path)!r} does not exist")
    try:
        grid = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"Grid file {str(path)!r} is not valid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(grid, dict) or not isinstance(grid.get("runs"), list) or not grid["runs"]:
        raise ConfigError(f"Grid file {str(path)!r} needs a non-empty list 'runs'")
    unknown = set(grid) - GRID_KEYS
    if unknown:
        raise ConfigError(f"Unknown key(s) {sorted(unknown)} in {str(path)!r}. Valid: {sorted(GRID_KEYS)}")
    bad = set(grid.get("teacher") or {}) - TEACHER_KEYS
    if bad:
        raise ConfigError(f"Unknown teacher key(s) {sorted(bad)} in {str(path)!r}. Valid: {sorted(TEACHER_KEYS)}")
    names = set()
    for row in grid["runs"]:
        if not isinstance(row, dict) or "name" not in row:
            raise ConfigError(f"Every run in {str(path)!r} needs a 'name'; got {row!r}")
        if row["name"] in names:
            raise ConfigError(f"Run name {row['name']!r} appears twice in {str(path)!r}")
        names.add(row["name"])
        bad = set(row) - RUN_KEYS
        if bad:
            raise ConfigError(f"Unknown key(s) {sorted(bad)} in run {row['name']!r}. Valid: {sorted(RUN_KEYS)}")
        build_configs(grid, row)  # validates
    return grid


def _merge(base: dict, over: dict | None) -> dict:
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        out[k] = v
    return out


def _make(cls, values: dict, where: str):
    valid = {f.name for f in fields(cls)}
    bad = set(values) - valid
    if bad:
        raise ConfigError(f"Unknown {where} key(s) {sorted(bad)}. Valid: {sorted(valid)}")
    return cls(**values)


def build_configs(grid: dict, row: dict) -> tuple[DataConfig, TeacherConfig, Any]:
    """The (data, teacher, train) configs of one row: grid defaults, then the row's overrides."""
    from edgedistill.train import TrainConfig

    d = grid.get("defaults") or {}
    data = _make(DataConfig, _merge(d.get("data", {}), row.get("data")), f"data (run {row['name']!r})")
    teacher = _make(TeacherConfig, _merge(d.get("teacher", {}), row.get("teacher")), f"teacher (run {row['name']!r})")
    train_values = _merge(d.get("train", {}), row.get("train"))
    train_values.setdefault("name", row["name"])
    train_values.setdefault("out_dir", grid.get("out_dir", f"runs/{grid.get('name', 'grid')}"))
    if "cache_dir" in grid:
        train_values.setdefault("cache_dir", grid["cache_dir"])
    train = _make(TrainConfig, train_values, f"train (run {row['name']!r})")
    return data, teacher, train


def run_grid(grid_path: str | Path, *, only: list[str] | None = None, smoke: bool = False,
             out_dir: str | None = None, overrides: dict | None = None) -> dict:
    """Run every row of a grid (teacher heads first), then write the results table and plots.

    Args:
        grid_path: the YAML grid.
        only: run just these row names (teacher rows always run; they are cached).
        smoke: two optimisation steps per run, one epoch — checks the grid end to end.
        out_dir: override the grid's ``out_dir``.
        overrides: ``{"data": {...}, "teacher": {...}, "train": {...}}`` applied to every row last.

    Returns:
        The results dict also written to ``results.json``.
    """
    from edgedistill.train import config_diffs, train

    grid = load_grid(grid_path)
    if out_dir:
        grid["out_dir"] = out_dir
    out = Path(grid.get("out_dir", f"runs/{grid.get('name', 'grid')}"))
    cache_dir = grid.get("cache_dir", "~/.cache/edgedistill")
    overrides = overrides or {}
    if smoke:
        overrides = _merge(overrides, {"train": _merge(overrides.get("train", {}), {"max_steps": 2, "epochs": 1})})
    if only:
        unknown = set(only) - {r["name"] for r in grid["runs"]}
        if unknown:
            raise ConfigError(f"--only names {sorted(unknown)} are not runs of {str(grid_path)!r}")
    t0 = time.time()
    rows: list[dict] = []

    # 1. Teacher heads on the cached teacher outputs; the linear probe is what KD rows distil.
    d = grid.get("defaults") or {}
    data = _make(DataConfig, _merge(d.get("data", {}), overrides.get("data")), "data")
    teacher = _make(TeacherConfig, _merge(d.get("teacher", {}), overrides.get("teacher")), "teacher")
    tsec = grid.get("teacher") or {}
    heads = tsec.get("heads", [])
    probe_path = None
    if heads:
        from edgedistill.evaluate import evaluate_teacher

        teacher_out = out / "teacher"
        kw = dict(head=",".join(heads), templates=tsec.get("templates", "ensemble"), label_map=tsec.get("label_map"),
                  cache_dir=cache_dir, out=str(teacher_out))
        val = evaluate_teacher(data, teacher, split="val", **kw)
        test = evaluate_teacher(data, teacher, split="test", **kw) if _test_split(grid) else None
        if "linear" in heads:
            probe_path = teacher_out / "probe"
        for head, r in val["heads"].items():
            rows.append({"name": f"teacher_{head}", "kind": "teacher", "arch": teacher.model, "target": head,
                         "unlabeled": False, "n_unlabeled": 0, "val_acc": r["acc"],
                         "test_acc": test["heads"][head]["acc"] if test else None,
                         "published": (tsec.get("published") or {}).get(head)})

    # 2. Students.
    for row in grid["runs"]:
        if only and row["name"] not in only:
            continue
        row = _merge(row, {k: _merge(row.get(k, {}), v) for k, v in overrides.items()})
        data, teacher, tcfg = build_configs(grid, row)
        if tcfg.head == "linear" and tcfg.target != "labels" and tcfg.head_path is None:
            if probe_path is None:
                raise ConfigError(f"Run {row['name']!r} distils the linear probe; add 'linear' to the grid's teacher.heads")
            tcfg.head_path = str(probe_path)
        run_dir = Path(tcfg.out_dir).expanduser().resolve() / tcfg.name
        metrics_path = run_dir / "metrics.json"
        if metrics_path.exists() and storage.read_json(metrics_path).get("finished") and not smoke:
            diffs = config_diffs(run_dir, data, teacher, tcfg)
            if diffs:  # a finished run of another recipe must not stand in for this row
                raise ConfigError(f"Run {row['name']!r} in {str(run_dir)!r} finished with other settings "
                                  f"({'; '.join(diffs)}); delete or move that folder to rerun it")
            print(f"[run] {row['name']}: finished, skipping")
        else:
            tcfg.resume = (run_dir / "checkpoints" / "last.ckpt").exists()
            print(f"[run] {row['name']}: {'resuming' if tcfg.resume else 'training'}")
            run_dir = train(data, teacher, tcfg)
        m = storage.read_json(run_dir / "metrics.json")
        rows.append({"name": row["name"], "kind": "student", "arch": tcfg.student, "target": tcfg.target,
                     "head": tcfg.head if tcfg.target != "labels" else None,
                     "unlabeled": "unlabeled" in tcfg.train_split, "n_unlabeled": m.get("n_unlabeled", 0),
                     "val_acc": m.get("best_val_acc"), "test_acc": m.get("test_acc"),
                     "published": row.get("published"), "train_s": m.get("elapsed_s"), "run_dir": str(run_dir)})

    results = {"grid": str(grid_path), "name": grid.get("name"), "out_dir": str(out), "rows": rows,
               "elapsed_s": round(time.time() - t0, 1)}
    write_results(results, out)
    return results


def _test_split(grid: dict) -> str | None:
    d = (grid.get("defaults") or {}).get("train", {})
    return "test" if d.get("eval_test") else None


def _fmt(x: Any) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        return f"{100 * x:.2f}" if x <= 1.0 else f"{x:.2f}"
    return str(x)


def write_results(results: dict, out: Path) -> None:
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


def run_command(grid: str, only: str | None = None, smoke: bool = False, out_dir: str | None = None) -> None:
    """Run a YAML grid of runs (skipping finished ones, resuming unfinished ones) and write results.

    Args:
        grid: path to the grid YAML (e.g. configs/cifar10/grid.yaml).
        only: comma-separated names of the runs to run, e.g. ``scratch,kd`` (default: all).
        smoke: two steps per run, to check a grid end to end.
        out_dir: where run directories and results go (default: the grid's out_dir).
    """
    names = [n.strip() for n in only.split(",") if n.strip()] if only else None
    results = run_grid(grid, only=names, smoke=smoke, out_dir=out_dir)
    print((Path(results["out_dir"]) / "results.md").read_text())
