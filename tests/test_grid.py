"""Experiment grids: every shipped YAML loads, and the STL10 tutorial grid runs end to end (two steps per row)
on STL10 files written by the test in the official layout, with a tiny random-init open_clip teacher."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
import yaml

from conftest import TINY
from edgedistill.errors import ConfigError
from edgedistill.pipelines.grid import load_grid, run_grid

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "configs").rglob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_grid_loads(path):
    grid = load_grid(path)  # builds and validates every row's data / teacher / train config
    assert grid.runs


def test_tutorial_grid_has_all_eleven_published_rows():
    from edgedistill import tutorial

    grid = load_grid(ROOT / "configs/stl10/tutorial.yaml")
    published = {r.published for r in grid.runs if r.published} | set(grid.teacher.published.values())
    assert published == set(tutorial.ACCURACY)  # every run of the tutorial's table, each once
    assert any(r.name.startswith("ours_") for r in grid.runs)


def test_bad_grids_are_refused(tmp_path):
    p = tmp_path / "g.yaml"
    p.write_text(yaml.safe_dump({"runs": [{"name": "a", "train": {"target": "labelz"}}]}))
    with pytest.raises(ConfigError, match="train.target='labelz' is invalid"):
        load_grid(p)
    p.write_text(yaml.safe_dump({"runs": [{"name": "a"}, {"name": "a"}]}))
    with pytest.raises(ConfigError, match="appears twice"):
        load_grid(p)
    p.write_text(yaml.safe_dump({"runs": [{"name": "a", "train": {"epochz": 3}}]}))
    with pytest.raises(ConfigError, match="epochz"):
        load_grid(p)
    p.write_text(yaml.safe_dump({"defualts": {"train": {"epochs": 3}}, "runs": [{"name": "a"}]}))
    with pytest.raises(ConfigError, match=r"Unknown key\(s\) \['defualts'\].*defaults"):  # a misspelled section
        load_grid(p)
    p.write_text(yaml.safe_dump({"defaults": [1, 2], "runs": [{"name": "a"}]}))
    with pytest.raises(ConfigError, match="defaults must be a mapping"):
        load_grid(p)
    p.write_text(yaml.safe_dump({"runs": [{"name": "a", "published": "resnet19_from_scratch"}]}))
    with pytest.raises(ConfigError, match="Unknown tutorial run 'resnet19_from_scratch'"):
        load_grid(p)


@pytest.mark.slow
def test_tutorial_grid_smoke_on_written_stl10(stl10_root, tmp_path):
    overrides = {
        "data": {"root": str(stl10_root), "download": False, "val_fraction": 0.3},
        "teacher": {"model": TINY, "pretrained": "random", "batch_size": 16},
        "train": {"student": "resnet10t", "image_size": 32, "batch_size": 4, "num_workers": 0, "epochs": 1},
    }
    grid = yaml.safe_load((ROOT / "configs/stl10/tutorial.yaml").read_text())
    grid["out_dir"], grid["cache_dir"] = str(tmp_path / "runs"), str(tmp_path / "cache")
    path = tmp_path / "tutorial.yaml"
    path.write_text(yaml.safe_dump(grid))
    only = ["resnet18_from_scratch", "resnet18_text_train", "resnet18_linear_train_unlabeled",
            "resnet18_embedding_text_train_unlabeled", "ours_resnet18_linear_train_unlabeled"]
    results = run_grid(path, only=only, smoke=True, overrides=overrides)

    out = tmp_path / "runs"
    for name in ("results.md", "results.csv", "results.json", "accuracy.png", "accuracy_vs_unlabeled.png"):
        assert (out / name).is_file(), name
    rows = {r["name"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    assert set(only) | {"teacher_text", "teacher_linear"} == set(rows)
    for name in only:  # each row's numbers are its run's, test read once with the val-selected checkpoint
        m = json.loads((Path(rows[name]["run_dir"]) / "metrics.json").read_text())
        assert (rows[name]["test_acc"], rows[name]["val_acc"]) == (m["test_acc"], m["best_val_acc"])
        assert m["test_acc"] is not None and m["history"][-1]["step"] == 2
    assert rows["resnet18_linear_train_unlabeled"]["n_unlabeled"] == 7
    md = (out / "results.md").read_text()
    assert "96.88" in md and "57.93" in md  # the tutorial's numbers beside ours
    assert "train min |" in md and "add up to" in md  # each row's training budget is in the table
    assert results["rows"] == json.loads((out / "results.json").read_text())["rows"]

    # Rerunning without --smoke skips nothing it has not finished: smoke rows stop after two steps,
    # so a finished row with changed settings is refused rather than silently reused.
    run = Path(rows["resnet18_from_scratch"]["run_dir"])
    m = json.loads((run / "metrics.json").read_text())
    assert m["finished"]
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["train"]["max_steps"] == 2 and cfg["train"]["head_logit_scale"] is None
    overrides["train"]["lr"] = 0.5
    with pytest.raises(ConfigError, match="finished with other settings"):
        run_grid(path, only=["resnet18_from_scratch"], overrides=overrides)
    shutil.rmtree(tmp_path / "cache")


def test_plots_of_a_partial_grid_fit_their_figure(tmp_path):
    # One student point far from x=0 (a grid run with --only): the teacher labels and the
    # axis still start at no unlabeled data, and matplotlib lays the figure out without warnings.
    from edgedistill.pipelines.report import plot_accuracy, plot_accuracy_vs_unlabeled

    rows = [{"name": "teacher_linear", "kind": "teacher", "arch": "t", "target": "linear", "val_acc": 0.75},
            {"name": "resnet18_kd_unlabeled", "kind": "student", "arch": "resnet18", "target": "logits",
             "n_unlabeled": 45000, "val_acc": 0.70}]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plot_accuracy_vs_unlabeled(rows, tmp_path / "u.png")
        plot_accuracy(rows, tmp_path / "a.png", title="t")
    assert (tmp_path / "u.png").stat().st_size > 0 and (tmp_path / "a.png").stat().st_size > 0
