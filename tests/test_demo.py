"""The demo pipeline end to end on a tiny slice of the bundled data: every output file and the results schema."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import TINY, TINY_CLIP
from edgedistill.pipelines.demo import demo_grid_path, run_demo
from edgedistill.pipelines.grid import load_grid


def _tiny_demo_tree(demo_root: Path, dst: Path, labeled: int = 4, evaluation: int = 2, unlabeled: int = 24) -> Path:
    """A demo tree with the bundled layout but a few images per class (real CIFAR-10 JPEGs)."""
    for part, n in (("labeled", labeled), ("eval", evaluation)):
        for cls in sorted(p.name for p in (demo_root / part).iterdir()):
            (dst / part / cls).mkdir(parents=True)
            for f in sorted((demo_root / part / cls).iterdir())[:n]:
                shutil.copy(f, dst / part / cls / f.name)
    (dst / "unlabeled").mkdir(parents=True)
    for f in sorted((demo_root / "unlabeled").iterdir())[:unlabeled]:
        shutil.copy(f, dst / "unlabeled" / f.name)
    return dst


def test_packaged_demo_grid_loads():
    grid = load_grid(demo_grid_path())
    names = [r.name for r in grid.runs]
    assert {"resnet18_scratch", "resnet18_kd_labeled", "resnet18_kd_unlabeled", "resnet18_feature_unlabeled"} <= set(names)
    assert grid.defaults.teacher["kind"] == "efficientnet_lite0"


@pytest.mark.slow
def test_demo_pipeline_writes_report_and_results(demo_root, tmp_path):
    root = _tiny_demo_tree(demo_root, tmp_path / "data")
    out = tmp_path / "demo"
    overrides = {
        "data": {"root": str(root), "val_fraction": 0.25},
        "teacher": {"image_size": 32, "batch_size": 32},
        "train": {"student": "resnet10t", "epochs": 1, "batch_size": 8, "num_workers": 0},
    }
    kw = dict(overrides=overrides, tutorial_teacher=TINY, tutorial_teacher_config=TINY_CLIP,
              batch_sizes=(2,), bench_warmup=1, bench_iters=2, calib_size=8)
    results = run_demo(out, **kw)

    for name in ("report.md", "results.json", "accuracy.png", "accuracy_vs_unlabeled.png",
                 "confusion_best_student.png", "bench.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    r = json.loads((out / "results.json").read_text())
    assert r == json.loads(json.dumps(results))
    for key in ("label_map_acc", "probe_acc"):
        assert 0.0 <= r["teacher"][key] <= 1.0
    assert {s["target"] for s in r["students"]} == {"labels", "logits", "embedding"}
    for s in r["students"]:
        assert set(s) >= {"name", "arch", "target", "unlabeled", "eval_acc"}
        assert isinstance(s["unlabeled"], bool) and 0.0 <= s["eval_acc"] <= 1.0
    assert any(s["unlabeled"] for s in r["students"]) and any(not s["unlabeled"] for s in r["students"])
    models = {(d["model"], d["precision"]) for d in r["deploy"]}
    assert {("teacher", "fp32"), ("tutorial_teacher", "fp32"), ("student", "fp32"), ("student", "int8")} <= models
    for d in r["deploy"]:
        assert set(d) >= {"model", "arch", "runtime", "precision", "batch", "resolution", "throughput_ips",
                          "latency_ms_p50", "peak_mem_mb"}
        assert d["throughput_ips"] > 0 and d["latency_ms_p50"] > 0
    assert r["elapsed_s"] > 0
    report = (out / "report.md").read_text()
    for png in ("accuracy.png", "accuracy_vs_unlabeled.png", "confusion_best_student.png", "bench.png"):
        assert f"]({png})" in report
    assert "random-initialised" in report and "tutorial" in report

    # A rerun reuses caches, finished runs, exports and the benchmark.
    again = run_demo(out, **kw)
    assert again["deploy"] == results["deploy"]
    assert [s["eval_acc"] for s in again["students"]] == [s["eval_acc"] for s in results["students"]]
