"""Run a YAML grid of trainings (``edgedistill run``) and write the results table and plots.

A grid file is plain data of the config schema (``config.GridConfig``)::

    name: cifar10
    out_dir: runs/cifar10             # where every run directory goes
    defaults:                         # shared by every row: the sections of `train --config`
      data: {dataset: cifar10, labeled_per_class: 500}
      teacher: {kind: efficientnet_lite0, image_size: 96}
      train: {student: resnet18, image_size: 32, epochs: 10}
    teacher:                          # teacher rows: heads evaluated on the cached teacher outputs
      heads: [label_map, linear]      # the linear probe is fitted first; KD rows with head=linear use it
    runs:
      - name: resnet18_scratch
        train: {target: labels}
        published: resnet18_from_scratch   # optional: the tutorial run shown beside ours

Finished runs (``metrics.json`` with ``"finished": true``) recorded with the same settings
are skipped, unfinished ones resumed from their last checkpoint, so the same command can be
rerun after a kill; a finished run recorded with other settings is refused, not reused.
"""

from __future__ import annotations

import time
from pathlib import Path

import yaml

from edgedistill import storage, tutorial
from edgedistill.config import GridConfig, GridSections, from_dict
from edgedistill.console import say
from edgedistill.errors import ConfigError
from edgedistill.evaluate import evaluate_teacher
from edgedistill.pipelines.report import write_grid_results
from edgedistill.training.fit import train
from edgedistill.training.record import config_diffs, has_checkpoint


def load_grid(path: str | Path) -> GridConfig:
    """Read and validate a grid file; every row's configs are built so mistakes surface before any work."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Grid file {str(path)!r} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"Grid file {str(path)!r} is not valid YAML: {' '.join(str(e).split())}") from None
    grid = from_dict(GridConfig, raw, f"grid file {str(path)!r}")
    for row in grid.runs:
        grid.configs(row)  # validates
        tutorial.published(row.published)
    for name in grid.teacher.published.values():
        tutorial.published(name)
    return grid


def _teacher_rows(grid: GridConfig, overrides: GridSections, test: bool) -> tuple[list[dict], Path | None]:
    """Step 1: the teacher heads on the cached teacher outputs; returns their rows and the fitted probe's path."""
    heads = grid.teacher.heads
    if not heads:
        return [], None
    data, teacher = grid.shared(overrides)
    out = Path(grid.out_dir) / "teacher"
    kw = dict(head=",".join(heads), templates=grid.teacher.templates, label_map=grid.teacher.label_map,
              cache_dir=grid.cache_dir, out=str(out))
    val = evaluate_teacher(data, teacher, split="val", **kw)
    tst = evaluate_teacher(data, teacher, split="test", **kw) if test else None
    rows = [{"name": f"teacher_{head}", "kind": "teacher", "arch": teacher.describe(), "target": head,
             "unlabeled": False, "n_unlabeled": 0, "val_acc": r["acc"],
             "test_acc": tst["heads"][head]["acc"] if tst else None,
             "published": tutorial.published(grid.teacher.published.get(head))}
            for head, r in val["heads"].items()]
    return rows, out / "probe" if "linear" in heads else None


def _student_row(grid: GridConfig, row, overrides: GridSections, probe: Path | None, smoke: bool) -> dict:
    """Step 2, one row: skip it if finished with the same settings, else train or resume it."""
    data, teacher, tcfg = grid.configs(row, overrides)
    if tcfg.head == "linear" and tcfg.target != "labels" and tcfg.head_path is None:
        if probe is None:
            raise ConfigError(f"Run {row.name!r} distils the linear probe; add 'linear' to the grid's teacher.heads")
        tcfg.head_path = str(probe)
    run_dir = Path(tcfg.out_dir).expanduser().resolve() / tcfg.run_name()
    metrics_path = run_dir / "metrics.json"
    if metrics_path.exists() and storage.read_json(metrics_path).get("finished") and not smoke:
        diffs = config_diffs(run_dir, data, teacher, tcfg)
        if diffs:  # a finished run of another recipe (or length) must not stand in for this row
            raise ConfigError(f"Run {row.name!r} in {str(run_dir)!r} finished with other settings "
                              f"({'; '.join(diffs)}); delete or move that folder to rerun it")
        say(f"[run] {row.name}: finished, skipping")
    else:
        tcfg.resume = has_checkpoint(run_dir)
        say(f"[run] {row.name}: {'resuming' if tcfg.resume else 'training'}")
        run_dir = train(data, teacher, tcfg)
    m = storage.read_json(run_dir / "metrics.json")
    return {"name": row.name, "kind": "student", "arch": tcfg.student, "target": tcfg.target,
            "head": tcfg.head if tcfg.target != "labels" else None, "unlabeled": "unlabeled" in tcfg.train_split,
            "n_unlabeled": m.get("n_unlabeled", 0), "val_acc": m.get("best_val_acc"), "test_acc": m.get("test_acc"),
            "published": tutorial.published(row.published), "train_s": m.get("elapsed_s"), "run_dir": str(run_dir)}


def run_grid_config(grid: GridConfig, *, only: list[str] | None = None, smoke: bool = False,
                    overrides: GridSections | None = None, source: str = "") -> dict:
    """Run the teacher heads, then every row of ``grid`` (or those in ``only``); returns the results (not written).

    Args:
        grid: the grid.
        only: run just these row names (teacher rows always run; they are cached).
        smoke: two optimisation steps per run, one epoch; checks the grid end to end.
        overrides: config values applied to every row last.
        source: where the grid came from, recorded in the results.
    """
    over = overrides or GridSections()
    if smoke:
        over = over.merged(GridSections(train={"max_steps": 2, "epochs": 1}))
    if only:
        unknown = sorted(set(only) - {r.name for r in grid.runs})
        if unknown:
            raise ConfigError(f"--only names {unknown} are not runs of {source or grid.name!r}")
    t0 = time.time()
    test = bool(grid.defaults.merged(over).train.get("eval_test"))
    rows, probe = _teacher_rows(grid, over, test=test)
    rows += [_student_row(grid, row, over, probe, smoke) for row in grid.runs if not only or row.name in only]
    return {"grid": source, "name": grid.name, "out_dir": str(grid.out_dir), "rows": rows,
            "elapsed_s": round(time.time() - t0, 1)}


def run_grid(grid_path: str | Path, *, only: list[str] | None = None, smoke: bool = False,
             out_dir: str | None = None, overrides: dict | None = None) -> dict:
    """Run every row of a grid file (teacher heads first), then write the results table and plots.

    Args:
        grid_path: the YAML grid.
        only: run just these row names (teacher rows always run; they are cached).
        smoke: two optimisation steps per run, one epoch; checks the grid end to end.
        out_dir: override the grid's ``out_dir``.
        overrides: ``{"data": {...}, "teacher": {...}, "train": {...}}`` applied to every row last.

    Returns:
        The results dict also written to ``results.json``.
    """
    grid = load_grid(grid_path)
    if out_dir:
        grid.out_dir = out_dir
    results = run_grid_config(grid, only=only, smoke=smoke, overrides=from_dict(GridSections, overrides or {}, "overrides"),
                              source=str(grid_path))
    write_grid_results(results, Path(grid.out_dir))
    return results


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
