"""The documented commands run end to end through the CLI entry point (``edgedistill.cli.main``) on tiny data:
``train`` -> ``export`` (a plain student) -> ``bench``; ``distill --config FILE.yaml``; ``demo``. Each asserts the
files it writes.

``demo`` takes only ``--out``: its recipe is the packaged ``pipelines/demo.yaml`` (the bundled CIFAR-10 images and
EfficientNet-Lite0, minutes of work). Here ``demo_config_path`` is pointed at a tiny recipe of the same schema, so
the command's own path (recipe file -> ``--out`` -> distill) runs in seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import TINY
from edgedistill import storage
from edgedistill.cli import main
from edgedistill.deploy.runtime import read_metadata
from test_distill import CLASSES, write_user_folder


def _tiny_recipe(root: Path, out: Path, name: str) -> dict:
    """A distill config of the packaged recipe's schema, small enough to run in seconds."""
    return {
        "name": name, "out": str(out), "cache_dir": str(root / "cache"),
        "data": {"dataset": "imagefolder", "root": str(root / "data"), "val_fraction": 0.3},
        "teacher": {"kind": "openclip", "model": TINY, "pretrained": "random", "device": "cpu", "batch_size": 16},
        "heads": {"zero_shot": "text", "templates": "simple", "probe": True},
        "train": {"student": "test_resnet", "image_size": 16, "epochs": 1, "batch_size": 8, "num_workers": 0,
                  "lr": 0.05, "warmup_epochs": 0.5},
        "students": [{"name": "kd", "train": {"target": "logits", "head": "linear"}}],
        "deploy": {"int8": False, "batch_sizes": [1], "warmup": 0, "iters": 2, "tutorial_teacher": None},
    }


def _assert_distilled(out: Path, name: str) -> dict:
    for f in ("report.md", "results.json", "config.yaml", "accuracy.png", "bench.png", "runs/kd/student.safetensors",
              "exports/student/model.onnx", "exports/student/export.json", "exports/teacher/model.onnx",
              "bench/bench.json"):
        assert (out / f).is_file(), f
    r = storage.read_json(out / "results.json")
    assert r["name"] == name and r["best_student"] == "kd" and [s["name"] for s in r["students"]] == ["kd"]
    assert r["data"]["counts"] == {"train": 21, "val": 9, "test": 12}
    assert 0.0 <= r["evaluation"]["acc"] <= 1.0 and r["evaluation"]["n"] == 12
    assert {row["model"] for row in r["deploy"]} >= {"student", "teacher"}
    assert read_metadata(out / "exports" / "student" / "model.onnx").class_names == list(CLASSES)
    assert f"# {name}" in (out / "report.md").read_text() or name in (out / "report.md").read_text()
    return r


@pytest.mark.slow
def test_train_export_bench_through_the_cli(tmp_path: Path, capsys) -> None:
    write_user_folder(tmp_path / "data", n_unlabeled=0)
    runs, exp, bench = tmp_path / "runs", tmp_path / "exports", tmp_path / "bench"
    assert main(["train", "--data.dataset", "imagefolder", "--data.root", str(tmp_path / "data"),
                 "--data.val_fraction", "0.3", "--train.student", "test_resnet", "--train.image_size", "16",
                 "--train.epochs", "1", "--train.warmup_epochs", "0.5", "--train.batch_size", "8",
                 "--train.num_workers", "0",
                 "--train.out_dir", str(runs), "--train.name", "plain", "--train.cache_dir", str(tmp_path / "cache")]) == 0
    run = runs / "plain"
    assert (run / "student.safetensors").is_file() and storage.read_json(run / "metrics.json")["finished"]

    # export of a plain student (labels, no teacher): FP32 + INT8, parity-checked, metadata with the classes
    assert main(["export", "--model", str(run), "--out", str(exp), "--int8", "true", "--calib_size", "8"]) == 0
    student = exp / "student"
    report = storage.read_json(student / "export.json")
    assert report["files"] == {"fp32": "model.onnx", "int8": "model.int8.onnx"}
    assert all((student / f).is_file() for f in report["files"].values())
    assert report["parity"] and all(v < 1e-3 for k, v in report["parity"].items() if "diff" in k or k in ("random", "real"))
    meta = read_metadata(student / "model.onnx")
    assert meta.class_names == list(CLASSES) and meta.precision == "fp32"
    assert read_metadata(student / "model.int8.onnx").precision == "int8"
    assert not (exp / "teacher").exists()

    # bench on the export (one child process per row): one row per runtime x precision x batch, the table printed, the files written
    capsys.readouterr()
    assert main(["bench", "--student", str(student), "--tutorial_teacher", "false", "--out", str(bench),
                 "--batch_sizes", "[2]", "--runtimes", "[pytorch, onnxruntime]", "--precisions", "[fp32, int8]",
                 "--warmup", "0", "--iters", "2", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    for f in ("bench.json", "bench.md", "bench.png"):
        assert (bench / f).is_file(), f
    rows = storage.read_json(bench / "bench.json")["rows"]
    got = {(r["model"], r["runtime"], r["precision"], r["batch"]) for r in rows}
    assert got == {("student", rt, p, b) for rt, p in (("pytorch", "fp32"), ("onnxruntime", "fp32"),
                                                        ("onnxruntime", "int8")) for b in (2,)}, got
    assert all(r["throughput_ips"] > 0 and r["latency_ms_p50"] > 0 for r in rows)
    assert "onnxruntime" in out and "int8" in out


@pytest.mark.slow
def test_distill_from_a_yaml_config_then_demo_through_the_cli(tmp_path: Path, monkeypatch) -> None:
    from edgedistill.pipelines import distill

    write_user_folder(tmp_path / "data", n_unlabeled=0)
    config = tmp_path / "mine.yaml"
    config.write_text(yaml.safe_dump(_tiny_recipe(tmp_path, tmp_path / "ignored", "mine")))
    out = tmp_path / "out"
    # --config FILE.yaml, and a flag after it overrides the file
    assert main(["distill", "--config", str(config), "--out", str(out)]) == 0
    assert not (tmp_path / "ignored").exists()
    r = _assert_distilled(out, "mine")
    assert yaml.safe_load((out / "config.yaml").read_text())["out"] == str(out)
    assert json.loads((out / "results.json").read_text()) == r

    # demo: the packaged recipe's path, with a tiny recipe in its place (see the module docstring)
    recipe = tmp_path / "demo.yaml"
    recipe.write_text(yaml.safe_dump(_tiny_recipe(tmp_path, tmp_path / "runs" / "demo", "demo")))
    monkeypatch.setattr(distill, "demo_config_path", lambda: recipe)
    assert main(["demo", "--out", str(tmp_path / "d")]) == 0
    _assert_distilled(tmp_path / "d", "demo")
    assert not (tmp_path / "runs").exists()  # --out replaced the recipe's out
