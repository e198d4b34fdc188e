"""The command line: help for every command, and user mistakes as one line with exit status 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgedistill.cli import main

GRID = Path(__file__).resolve().parents[1] / "configs" / "cifar10" / "grid.yaml"


# The documented commands (README.md) and, for each, flags its --help must show: written out here, not read from
# the CLI's own table, so that a command or flag that disappears from the CLI fails this test.
DOCUMENTED = {
    "cache": ["--split", "--cache_dir", "--shard_size", "--data.dataset", "--teacher.kind"],
    "teacher": ["--head", "--split", "--data.root"],
    "train": ["--train.student", "--train.target", "--train.epochs", "--data.root"],
    "eval": ["--run", "--split", "--images"],
    "run": ["--only", "--smoke"],
    "optimize": ["--model", "--qat", "--sparsity"],
    "export": ["--model", "--out", "--tensorrt"],
    "bench": ["--student", "--teacher", "--runtimes", "--batch_sizes"],
    "predict": ["--model", "--inputs", "--top_k", "--prompts"],
    "retrieve": ["--prompts", "--pool", "--out"],
    "distill": ["--out", "--students", "--prompts", "--pool", "--data.root", "--train.epochs"],
    "demo": ["--out"],
}


def test_top_level_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    listed = {}
    for line in out.split("commands:", 1)[1].splitlines():
        if line.startswith("  ") and len(line.split(None, 1)) == 2:
            name, description = line.split(None, 1)
            listed[name] = description
    assert set(listed) == set(DOCUMENTED), listed
    assert all(len(d.split()) >= 3 for d in listed.values()), listed  # each with a description


@pytest.mark.parametrize("name", list(DOCUMENTED))
def test_every_command_has_help(name, capsys):
    assert main([name, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: edgedistill {name}")
    for flag in ["--config", *DOCUMENTED[name]]:
        assert f"  {flag} " in out or f"  {flag}\n" in out or f"  {flag}," in out, f"{name} --help lacks {flag}"


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["distil"], "unknown command 'distil'"),
        (["train", "--train.target", "foo"], "train.target='foo' is invalid; valid: labels, logits, embedding"),
        (["train", "--data.dataset", "mnist"], "data.dataset='mnist' is invalid; valid: stl10, cifar10"),
        (["train", "--train.epochs", "0"], "train.epochs=0 is invalid"),
        (["train", "--train.epoch", "3"], "--train.epoch"),  # an abbreviation is refused, not guessed
        (["train", "--train.kd_weight", "-1"], "train.kd_weight=-1.0 is invalid; it must be >= 0"),
        (["train", "--train.momentum", "-3"], "train.momentum=-3.0 is invalid; it must be in [0, 1)"),
        (["cache", "--teacher.image_size", "0"], "teacher.image_size=0 is invalid"),
        (["cache", "--teacher.kind", "vit"], "teacher.kind='vit' is invalid; valid: openclip, timm, efficientnet_lite0"),
        (["run", "no/such/grid.yaml"], "Grid file 'no/such/grid.yaml' does not exist"),
        (["run", str(GRID), "--only", "resnet18_scratch, nope"], "--only names ['nope'] are not runs of"),
        (["predict", "no/such/model.onnx", "x.jpg", "y.jpg"], "Input 'x.jpg' does not exist"),
        (["train", "--no-such-flag", "1"], "no-such-flag"),
        (["train", "--train.optimizer", "sgdd"], "train.optimizer='sgdd' is invalid; valid: sgd, adamw, adam"),
        (["optimize", "--sparsity", "3:4"], "optimize.sparsity='3:4' is invalid; valid: 2:4"),
        (["distill", "--deploy.runtimes", "[onnxruntim]"], "deploy.runtimes='onnxruntim' is invalid; valid: pytorch"),
        (["train", "--train.loss", "l2"], "train.loss='l2' is invalid; valid: ce, kd, feature"),
    ],
)
def test_user_mistakes_are_one_line_and_exit_2(argv, needle, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err


def test_console_script_exit_status_without_traceback(tmp_path):
    p = subprocess.run([sys.executable, "-m", "edgedistill.cli", "teacher", "--data.val_fraction", "1.5"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert p.returncode == 2
    assert "data.val_fraction=1.5 is out of range" in p.stderr and "Traceback" not in p.stderr


def test_missing_openclip_weights_is_one_line(tmp_path):
    from PIL import Image

    (tmp_path / "cat").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "cat" / "0.png")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    p = subprocess.run([sys.executable, "-m", "edgedistill.cli", "teacher", "--teacher.model", "ViT-B-32",
                        "--data.dataset", "imagefolder", "--data.root", str(tmp_path), "--split", "train"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=120, env=env)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "OpenCLIP weights ViT-B-32/laion2b_s34b_b79k not found" in lines[0], p.stderr


def test_bare_arguments_fill_required_parameters_in_order():
    from edgedistill.cli import _positionals_to_flags
    from edgedistill.deploy.predict import predict_command
    from edgedistill.retrieve import retrieve_command

    # pool is ``str | list[str]``: it takes every bare argument that follows
    assert _positionals_to_flags(retrieve_command, ["p.txt", "a/", "b.tar", "--out", "x"]) == [
        "--prompts", "p.txt", "--pool", '["a/", "b.tar"]', "--out", "x"]
    assert _positionals_to_flags(predict_command, ["m", "1.jpg", "d/", "--top_k", "1"]) == [
        "--model", "m", "--inputs", '["1.jpg", "d/"]', "--top_k", "1"]
    assert _positionals_to_flags(retrieve_command, ["--prompts", "p.txt", "--pool", "a/"]) == [
        "--prompts", "p.txt", "--pool", "a/"]  # the flag form of the same parameters passes through
