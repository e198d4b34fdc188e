"""The Python API: edgedistill.cache / train / export / distill take typed configs, mappings or YAML files and
return typed results; importing the package loads no torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import edgedistill
from conftest import TINY
from edgedistill.config import TeacherConfig
from edgedistill.errors import ConfigError
from edgedistill.pipelines.results import DistillResults, ExportSummary, TrainResult
from test_distill import write_user_folder

SRC = Path(__file__).resolve().parents[1] / "src"


def test_import_is_cheap_and_lazy() -> None:
    code = ("import sys, edgedistill; print(sorted(m for m in ('torch', 'timm', 'lightning', 'open_clip') "
            "if m in sys.modules)); print(edgedistill.__all__)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"})
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == ["[]", "['__version__', 'cache', 'distill', 'export', 'train']"]


def test_cache_train_export_from_python(tmp_path: Path) -> None:
    write_user_folder(tmp_path / "data", n_train=4, n_test=2, n_unlabeled=3)
    data = {"dataset": "imagefolder", "root": str(tmp_path / "data"), "val_fraction": 0.25}
    teacher = TeacherConfig(kind="openclip", model=TINY, pretrained="random", device="cpu", batch_size=16)
    caches = edgedistill.cache(data, teacher, split="train+val", cache_dir=str(tmp_path / "cache"), num_workers=0)
    assert sum(c.manifest["N"] for c in caches.values()) == 4 * 3  # the train/ folder, whence train and val are carved
    assert next(iter(caches.values())).embedding.shape[-1] == 32  # the tiny CLIP's width

    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({
        "data": data, "teacher": {"kind": "openclip", "model": TINY, "pretrained": "random", "device": "cpu"},
        "train": {"student": "test_resnet", "image_size": 16, "epochs": 1, "batch_size": 4, "num_workers": 0,
                  "target": "logits", "head": "text", "out_dir": str(tmp_path / "runs"), "name": "kd",
                  "cache_dir": str(tmp_path / "cache"), "aug": False, "warmup_epochs": 0.0}}))
    run = edgedistill.train(config)
    assert isinstance(run, TrainResult) and run.finished and run.run_dir.endswith("kd") and run.epochs == 1
    assert run.best_val_acc == json.loads((Path(run.run_dir) / "metrics.json").read_text())["best_val_acc"]

    files = edgedistill.export(run.run_dir, out=tmp_path / "exports")
    assert list(files) == ["student"] and isinstance(files["student"], ExportSummary)
    assert (Path(files["student"].dir) / files["student"].files["fp32"]).is_file()
    assert files["student"].parity["random"] < 1e-3

    with pytest.raises(ConfigError, match=r"Unknown key\(s\) \['trian'\]"):
        edgedistill.train({"trian": {}})
    with pytest.raises(ConfigError, match="Config file 'nope.yaml' does not exist"):
        edgedistill.distill("nope.yaml")


@pytest.mark.slow
def test_distill_from_python(tmp_path: Path) -> None:
    write_user_folder(tmp_path / "data", n_train=4, n_test=2, n_unlabeled=3)
    results = edgedistill.distill({
        "out": str(tmp_path / "out"), "cache_dir": str(tmp_path / "cache"),
        "data": {"dataset": "imagefolder", "root": str(tmp_path / "data"), "val_fraction": 0.3},
        "teacher": {"kind": "openclip", "model": TINY, "pretrained": "random", "device": "cpu"},
        "heads": {"probe": False, "templates": "simple"},
        "train": {"student": "test_resnet", "image_size": 16, "epochs": 1, "batch_size": 4, "num_workers": 0,
                  "aug": False},
        "students": [{"name": "kd", "train": {"target": "logits", "head": "text"}}],
        "deploy": {"int8": False, "batch_sizes": [1], "warmup": 0, "iters": 1, "tutorial_teacher": None}})
    assert isinstance(results, DistillResults) and results.best.name == "kd" and results.best.loss == "kd"
    assert list(results.teacher.heads) == ["text"]  # heads.zero_shot auto: the CLIP teacher's own
    assert DistillResults.load(tmp_path / "out" / "results.json") == results
