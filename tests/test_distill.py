"""distill end to end on folders the test writes: with labels (probe, baseline, KD) and without (zero-shot text head);
a rerun reuses every step; the report names what ran and quotes results.json; the packaged demo config loads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import TINY, TINY_CLIP
from edgedistill.config import DistillConfig, from_dict
from edgedistill.errors import ConfigError
from edgedistill.pipelines.distill import demo_config_path, plan_distill, run_distill
from edgedistill.pipelines.report import pct
from edgedistill.pipelines.results import RESULTS_SCHEMA, DistillResults

CLASSES = ("cat", "dog", "ship")
COLOURS = {"cat": (220, 40, 40), "dog": (40, 220, 40), "ship": (40, 40, 220)}


def write_user_folder(root: Path, n_train: int = 10, n_test: int = 4, n_unlabeled: int = 12) -> Path:
    """A user's folder: ``train/<class>/``, ``test/<class>/`` (held out) and ``extra/`` unlabeled images."""
    rng = np.random.default_rng(0)

    def image(c: str) -> Image.Image:
        return Image.fromarray(np.clip(np.array(COLOURS[c]) + rng.integers(-40, 40, (20, 24, 3)), 0, 255).astype(np.uint8))

    for split, n in (("train", n_train), ("test", n_test)):
        for c in CLASSES:
            (root / split / c).mkdir(parents=True)
            for k in range(n):
                image(c).save(root / split / c / f"{k:02d}.png")
    (root / "extra").mkdir()
    for k in range(n_unlabeled):
        image(CLASSES[k % 3]).save(root / "extra" / f"{k:03d}.jpg")
    return root


def _config(root: Path, out: Path, **over) -> DistillConfig:
    raw = {
        "name": "mine", "out": str(out), "cache_dir": str(out.parent / "cache"),
        "data": {"dataset": "imagefolder", "root": str(root / "data"), "unlabeled": [str(root / "data" / "extra")],
                 "val_fraction": 0.3},
        "teacher": {"kind": "openclip", "model": TINY, "pretrained": "random", "device": "cpu", "batch_size": 16},
        "heads": {"zero_shot": "text", "templates": "simple"},
        "train": {"student": "test_resnet", "image_size": 16, "epochs": 2, "batch_size": 8, "num_workers": 0,
                  "lr": 0.05, "warmup_epochs": 0.5},
        "students": [{"name": "scratch", "train": {"target": "labels"}},
                     {"name": "kd", "train": {"target": "logits", "head": "linear", "train_split": "train+unlabeled"}}],
        "deploy": {"int8": True, "calib_size": 8, "batch_sizes": [2], "warmup": 0, "iters": 2, "tutorial_teacher": TINY,
                   "runtimes": ["onnxruntime"]},  # OpenVINO / ExecuTorch in the race: tests/test_targets.py
    }
    for key, value in over.items():
        raw[key] = {**raw[key], **value} if isinstance(value, dict) else value
    return from_dict(DistillConfig, raw, "test")


@pytest.mark.slow
def test_distill_with_labels_end_to_end_and_rerun(tmp_path: Path) -> None:
    write_user_folder(tmp_path / "data")
    out = tmp_path / "out"
    results = run_distill(_config(tmp_path, out), tutorial_teacher_config=TINY_CLIP)

    for name in ("report.md", "results.json", "accuracy.png", "accuracy_vs_unlabeled.png", "confusion_best_student.png",
                 "bench.png", "config.yaml", "exports/student/model.onnx", "exports/student/model.int8.onnx",
                 "exports/teacher/model.onnx", "bench/bench.json", "runs/results.md"):
        assert (out / name).is_file(), name
    r = json.loads((out / "results.json").read_text())
    assert r == results.to_dict() and r["schema_version"] == RESULTS_SCHEMA
    assert DistillResults.load(out / "results.json") == results  # read back through the same typed schema
    assert set(r["teacher"]["heads"]) == {"text", "linear"} and r["best_student"] == "kd"  # the only distilled one
    assert r["data"]["counts"] == {"train": 21, "val": 9, "test": 12, "unlabeled": 12}
    students = {s["name"]: s for s in r["students"]}
    assert students["kd"]["n_unlabeled"] == 12 and students["scratch"]["n_unlabeled"] == 0
    # Each student's numbers are its run's; the deployed one's held-out accuracy is the evaluation's.
    for s in r["students"]:
        m = json.loads((Path(s["run_dir"]) / "metrics.json").read_text())
        assert (s["val_acc"], s["test_acc"]) == (m["best_val_acc"], m["test_acc"])
    assert r["evaluation"]["n"] == 12 and r["evaluation"]["acc"] == pytest.approx(students["kd"]["test_acc"])
    assert list(r["step_seconds"]) == ["plan", "cache", "students", "evaluate", "export", "race", "report"]
    assert sum(r["step_seconds"].values()) <= r["elapsed_s"] + 0.5
    assert {(d["model"], d["precision"]) for d in r["deploy"]} == {
        ("teacher", "fp32"), ("teacher", "int8"), ("student", "fp32"), ("student", "int8"), ("tutorial_teacher", "fp32")}

    report = (out / "report.md").read_text()
    first = report.split("## Accuracy")[0]  # the first screen: the headline
    assert f"**kd** (test_resnet" in first and f"scores **{pct(students['kd']['test_acc'])}**" in first
    race = {(d["model"], d["precision"]): d for d in r["deploy"]}
    speed = race[("student", "fp32")]["throughput_ips"] / race[("teacher", "fp32")]["throughput_ips"]
    assert f"**{speed:.1f}x the teacher's throughput**" in first
    assert "## The tutorial's published figures (reference, not measured here)" in report
    # The bundle's model card: the run's provenance, held-out accuracy and race rows.
    card = (out / "exports" / "student" / "README.md").read_text()
    assert f"Distilled from: openclip:{TINY}" in card and "Data: imagefolder (train 21, val 9, test 12, unlabeled 12 images)" in card
    from edgedistill.deploy.card import pct as card_pct

    assert f"| onnxruntime | FP32 | {card_pct(r['export']['accuracy']['fp32'])} |" in card
    student_fp32 = race[("student", "fp32")]
    assert (f"| onnxruntime | fp32 | 2 | {student_fp32['throughput_ips']:.0f} | {student_fp32['latency_ms_p50']:.2f} |"
            in card)

    # A rerun reuses the caches, the finished runs, the exports and the benchmark.
    stamp = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("student.safetensors")}
    onnx = (out / "exports" / "student" / "model.onnx").stat().st_mtime_ns
    again = run_distill(_config(tmp_path, out), tutorial_teacher_config=TINY_CLIP)
    assert {p: p.stat().st_mtime_ns for p in stamp} == stamp
    assert (out / "exports" / "student" / "model.onnx").stat().st_mtime_ns == onnx
    assert again.deploy == results.deploy and again.students == results.students
    # ... and its report keeps the first invocation's time beside its own.
    assert [i.elapsed_s for i in again.invocations] == [results.elapsed_s, again.elapsed_s]
    assert (f"reusing the finished steps of 1 earlier invocation (the first: {results.elapsed_s:.0f} s"
            in (out / "report.md").read_text())


@pytest.mark.slow
def test_distill_another_student_is_named_in_the_report(tmp_path: Path) -> None:
    """The report is written from the run: change the architecture and it names the new one, with its numbers."""
    write_user_folder(tmp_path / "data")
    out = tmp_path / "out"
    cfg = _config(tmp_path, out, train={"student": "resnet10t", "student_kwargs": {"channels": [16, 16, 32, 32]}},
                  students=[{"name": "tiny_kd", "train": {"target": "logits", "head": "text"}}],
                  deploy={"int8": False, "tutorial_teacher": None})
    r = run_distill(cfg).to_dict()
    report = (out / "report.md").read_text()
    s = r["students"][0]
    assert s["arch"] == "resnet10t" and s["kwargs"] == {"channels": [16, 16, 32, 32]}
    assert f"**tiny_kd** (resnet10t, {s['params'] / 1e6:.2f}M parameters) scores **{pct(s['test_acc'])}**" in report
    assert "{'channels': [16, 16, 32, 32]}" in report  # the story says what was built
    assert "test_resnet" not in report and "ResNet18" not in report


@pytest.mark.slow
def test_distill_without_labels_uses_the_zero_shot_head(tmp_path: Path) -> None:
    write_user_folder(tmp_path / "data")
    out = tmp_path / "out"
    cfg = _config(tmp_path, out, data={"train_labels": False},
                  students=[{"name": "scratch", "train": {"target": "labels"}},
                            {"name": "kd_text", "train": {"target": "logits", "head": "text", "train_split": "train+unlabeled"}}],
                  deploy={"int8": False, "tutorial_teacher": None})
    r = run_distill(cfg).to_dict()
    assert set(r["teacher"]["heads"]) == {"text"} and [s["name"] for s in r["students"]] == ["kd_text"]
    assert any("no labels" in n for n in r["notes"]) and any("'scratch'" in n and "skipped" in n for n in r["notes"])
    assert r["students"][0]["n_unlabeled"] == 21 + 12  # the training images count as unlabeled
    report = (out / "report.md").read_text()
    assert "whose labels are not used" in report and "was skipped: there are no training labels" in report


def test_distill_plan_refuses_before_any_work(tmp_path: Path) -> None:
    """Each mistake is refused by ``run_distill`` itself before it writes anything: no teacher cache, no output."""
    write_user_folder(tmp_path / "data")
    no_labels = _config(tmp_path, tmp_path / "o", data={"train_labels": False})  # kd distils the probe: no labels
    bad = _config(tmp_path, tmp_path / "o", students=[{"name": "kd", "train": {"target": "logits", "epochz": 1}}])
    only_baseline = _config(tmp_path, tmp_path / "o", students=[{"name": "s", "train": {"target": "labels"}}])
    for cfg, match in ((no_labels, "Student 'kd' distils the 'linear' head.*only \\['text'\\]"), (bad, "epochz"),
                       (only_baseline, "at least one distilled student")):
        with pytest.raises(ConfigError, match=match):
            plan_distill(cfg)
        with pytest.raises(ConfigError, match=match):
            run_distill(cfg)
        assert not (tmp_path / "cache").exists() and not (tmp_path / "o").exists()  # no work began


def test_packaged_demo_config_loads_and_is_the_demo_command():
    raw = yaml.safe_load(demo_config_path().read_text())
    cfg = from_dict(DistillConfig, raw, "demo.yaml")
    assert cfg.data.dataset == "demo" and cfg.teacher.kind == "efficientnet_lite0" and cfg.teacher.runtime == "onnxruntime"
    targets = {r.name: {**cfg.train.__dict__, **r.train}["target"] for r in cfg.students}
    assert "labels" in targets.values() and "logits" in targets.values()
    # the demo's length is its time budget: no student has an epoch count
    assert cfg.budget > 0 and not any("epochs" in r.train or r.gpu for r in cfg.students)


def test_demo_command_runs_the_packaged_config(tmp_path, monkeypatch):
    """``edgedistill demo --out X`` runs distill on the packaged demo.yaml, its ``out`` replaced (the run itself is
    stubbed here; test_cli_end_to_end runs the command on tiny data)."""
    from edgedistill.cli import main
    from edgedistill.pipelines import distill

    seen = []
    monkeypatch.setattr(distill, "run_distill", lambda cfg, **kw: seen.append(cfg))
    assert main(["demo", "--out", str(tmp_path / "d")]) == 0
    raw = yaml.safe_load(demo_config_path().read_text())
    assert seen == [from_dict(DistillConfig, {**raw, "out": str(tmp_path / "d")}, "demo.yaml")]


def test_gpu_budget_applies_only_with_cuda_and_is_noted(monkeypatch):
    import torch

    raw = yaml.safe_load(demo_config_path().read_text())
    raw["students"] = [{**r, "train": {**r["train"], "epochs": e}, "gpu": {"epochs": g}}
                       for r, e, g in zip(raw["students"], (30, 6), (100, 30))]
    cfg = from_dict(DistillConfig, raw, "demo.yaml")
    for cuda, epochs in ((False, {"scratch": 30, "kd": 6}), (True, {"scratch": 100, "kd": 30})):
        monkeypatch.setattr(torch.cuda, "is_available", lambda cuda=cuda: cuda)
        plan = plan_distill(cfg)
        got = {row.name: plan.grid.configs(row)[2].epochs for row in plan.grid.runs}
        assert got == epochs and plan.gpu is cuda
        noted = [n for n in plan.notes if n.startswith("A CUDA GPU is present, so the GPU budget applies")]
        assert len(noted) == int(cuda) and (not cuda or '"epochs": 30' in noted[0])
