"""The deploy runtime needs only onnxruntime, numpy and Pillow: predict in a child where torch & co cannot be imported.

The models are exported here, with torch; the child process installs a ``sys.meta_path`` finder
that refuses torch, torchvision, timm, lightning and open_clip before importing any of
edgedistill, runs ``edgedistill predict`` through the CLI and the ``deploy.runtime`` API, and
reports what it printed, its probabilities and every refused import attempt.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from conftest import IMAGE_FOLDER_COLOURS, save_tiny_run, tiny_teacher_cfg
from edgedistill.data.views import ViewSpec, preprocess
from edgedistill.deploy import export as ex

CLASSES = ["cat", "dog", "ship"]
VIEW = {"image_size": 32, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "interpolation": "bilinear"}
BLOCKED = ("torch", "torchvision", "timm", "lightning", "pytorch_lightning", "open_clip")
SRC = Path(__file__).resolve().parents[1] / "src"

CHILD = r"""
import importlib.abc, json, sys

BLOCKED = set(json.loads(sys.argv[1]))
already = sorted(n for n in sys.modules if n.partition(".")[0] in BLOCKED or n.startswith("edgedistill"))
attempts = []


class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            attempts.append(name)
            raise ModuleNotFoundError(f"No module named {name!r} (blocked: the deploy runtime must not need it)", name=name)
        return None


sys.meta_path.insert(0, Block())
job = json.loads(sys.argv[2])
from edgedistill.cli import main

codes = [main(argv) for argv in job["cli"]]
print("@@", flush=True)  # the CLI's output ends here
import numpy as np
from PIL import Image
from edgedistill.deploy.runtime import OnnxModel, preprocess

model = OnnxModel(job["model"])
clf = model.classifier(job.get("prompts"))
probs = clf.score(np.stack([preprocess(Image.open(p), model.view) for p in job["images"]]))
bundle = None
if job.get("bundle"):  # the app API: paths, PIL images and arrays in batches of 2
    from edgedistill.deploy import load_bundle

    b = load_bundle(job["bundle"])
    images = [job["images"][0], Image.open(job["images"][1]), np.asarray(Image.open(job["images"][2]).convert("RGB"))]
    bundle = {"probs": b.predict_proba(images, batch_size=2).tolist(), "top": b.classify(images, top_k=2)}
import edgedistill.deploy.bench, edgedistill.deploy.bench_child, edgedistill.deploy.engines.onnxruntime  # bench and its ONNX Runtime children
import edgedistill.deploy.engines.openvino, edgedistill.deploy.bundle
loaded = sorted(n for n in sys.modules if n.partition(".")[0] in BLOCKED)
print("@@" + json.dumps({"already": already, "codes": codes, "labels": clf.labels, "probs": probs.tolist(),
                         "attempts": attempts, "loaded": loaded, "bundle": bundle}))
"""


def _run_child(job: dict) -> tuple[dict, list[str], str]:
    """(result, CLI stdout lines, stderr) of the torch-blocked child.

    ``job``: ``cli`` (argument lists for ``edgedistill.cli.main``), then ``model`` (an .onnx file), ``prompts``
    (None: its classes) and ``images`` for the runtime API.
    """
    env = {**os.environ, "PYTHONPATH": str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "EDGEDISTILL_NO_PROGRESS": "1"}
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(BLOCKED), json.dumps(job)], capture_output=True,
                          text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cli_out, _, rest = proc.stdout.partition("@@\n")
    return json.loads(rest.strip().rpartition("@@")[2]), cli_out.strip().splitlines(), proc.stderr


def _colour_image(name: str, rng, size=(40, 28)) -> Image.Image:
    arr = np.array(IMAGE_FOLDER_COLOURS[name]) + rng.integers(-60, 60, (size[1], size[0], 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny timm student trained on class-coloured images, exported with torch: (export dir, run dir, images)."""

    d = tmp_path_factory.mktemp("torchfree")
    rng = np.random.default_rng(0)
    view = ViewSpec(**VIEW)
    train = [(preprocess(_colour_image(c, rng, (32, 32)), view), i) for i in range(3) for c in [CLASSES[i]] * 12]
    run = d / "run"
    save_tiny_run(run, train, CLASSES, VIEW)
    deploy, meta = ex.load_student_deploy(run)
    ex.export_model(deploy, meta, d / "exp")
    images = []
    for i, c in enumerate(["ship", "cat", "dog"]):  # not in class order; PNG and JPEG
        path = d / "imgs" / f"{i}_{c}.{'png' if i % 2 else 'jpg'}"
        path.parent.mkdir(exist_ok=True)
        _colour_image(c, rng).save(path)
        images.append(path)
    return d / "exp", run, images


def test_predict_without_torch(exported):
    exp, run, images = exported
    job = {"model": str(exp / "model.onnx"), "images": [str(p) for p in images], "bundle": str(exp),
           "cli": [["predict", str(exp / "model.onnx"), *map(str, images), "--top_k", "2"],
                   ["predict", str(exp), str(images[0]), "--top_k", "3"]]}  # the export directory
    result, cli_out, err = _run_child(job)
    assert result["already"] == []  # the blocker came before anything was imported
    assert result["loaded"] == [], f"blocked modules were imported: {result['loaded']}"
    assert result["attempts"] == [], f"the deploy runtime tried to import {result['attempts']}"
    assert result["codes"] == [0, 0], err
    # Reference: the PyTorch student on the same pixels.
    model, meta = ex.load_student_deploy(run)
    x = torch.from_numpy(np.stack([preprocess(Image.open(p), meta.view_spec) for p in images]))
    with torch.no_grad():
        ref = torch.softmax(model(x), dim=1).numpy()
    assert result["labels"] == CLASSES
    np.testing.assert_allclose(np.array(result["probs"]), ref, atol=1e-4)
    # The app API (load_bundle) on a path, a PIL image and an array, batched: the same probabilities.
    np.testing.assert_allclose(np.array(result["bundle"]["probs"]), ref, atol=1e-4)
    assert [t[0][0] for t in result["bundle"]["top"]] == ["ship", "cat", "dog"]
    # The CLI printed top-k lines: the right colour class first, with the reference probabilities.
    assert len(cli_out) == len(images) + 1
    for line, path, probs, k in zip(cli_out, images + [images[0]], list(ref) + [ref[0]], [2] * len(images) + [3]):
        name, _, top = line.partition(": ")
        pairs = [t.rsplit(" ", 1) for t in top.split(", ")]
        assert name == str(path) and len(pairs) == k
        assert pairs[0][0] == path.stem.split("_")[1]  # e.g. 0_ship.jpg -> ship
        for label, p in pairs:
            assert float(p) == pytest.approx(probs[CLASSES.index(label)], abs=1.5e-3)


def test_prompts_without_torch(tmp_path):
    """Stored prompts classify torch-free; a new prompt is refused in one line (its encoder needs torch)."""
    model, meta, teacher = ex.load_teacher_deploy(tiny_teacher_cfg())
    ex.export_model(model, meta, tmp_path / "t", prompts=["a cat", "a dog"], teacher=teacher)
    img = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (30, 30, 3), dtype=np.uint8)).save(img)
    onnx = str(tmp_path / "t" / "model.onnx")
    job = {"model": onnx, "prompts": ["a dog", "a cat"], "images": [str(img)],
           "cli": [["predict", onnx, str(img), "--prompts", '["a dog", "a cat"]'],
                   ["predict", onnx, str(img), "--prompts", '["a fox", "a cat"]']]}
    result, cli_out, err = _run_child(job)
    assert result["loaded"] == [] and result["codes"] == [0, 2], err
    # The only import attempt is the new prompt's text encoder, refused with one clear line.
    assert result["attempts"] and {a.partition(".")[0] for a in result["attempts"]} <= {"torch", "open_clip"}
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Cannot embed prompts ['a fox']" in errors[0] and "Re-export with --prompts" in errors[0]
    # Stored prompts: softmax(scale * cos(image, text)), as PyTorch computes it.
    x = torch.from_numpy(preprocess(Image.open(img), meta.view_spec))[None]
    with torch.no_grad():
        emb = nn.functional.normalize(model(x), dim=-1)
        text = nn.functional.normalize(teacher.encode_text(["a dog", "a cat"]), dim=-1)
    expected = torch.softmax(meta.logit_scale * emb @ text.T, dim=-1).numpy()
    assert result["labels"] == ["a dog", "a cat"]
    np.testing.assert_allclose(np.array(result["probs"]), expected, atol=1e-4)
    assert len(cli_out) == 1 and cli_out[0].startswith(f"{img}: ")
    printed = dict(t.rsplit(" ", 1) for t in cli_out[0].partition(": ")[2].split(", "))
    assert set(printed) == {"a dog", "a cat"}
    for label, p in printed.items():
        assert float(p) == pytest.approx(expected[0, ["a dog", "a cat"].index(label)], abs=1.5e-3)


def test_training_commands_name_the_train_extra():
    """On a runtime-only install every training command fails in one line naming the extra, exit status 2."""
    child = CHILD.split("job = json.loads", 1)[0] + (
        "from edgedistill.cli import main\n"
        "codes = [main([c]) for c in json.loads(sys.argv[2])]\n"
        "print('@@' + json.dumps(codes))\n")
    commands = ["cache", "teacher", "train", "eval", "run", "optimize", "export", "retrieve", "distill", "demo"]
    env = {**os.environ, "PYTHONPATH": str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-c", child, json.dumps(BLOCKED), json.dumps(commands)], capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.rpartition("@@")[2]) == [2] * len(commands)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == len(commands), proc.stderr  # one line each, no traceback
    for command, line in zip(commands, lines):
        assert line.startswith(f"error: edgedistill {command} needs the training stack") and \
            line.endswith("pip install 'edgedistill[train]'"), line


def test_package_metadata_keeps_torch_out_of_the_base_install():
    """pyproject.toml: the base dependencies are the runtime; torch & co come only with the [train] extra."""
    import re
    import tomllib

    from edgedistill.cli import TRAIN_STACK

    project = tomllib.loads((SRC.parent / "pyproject.toml").read_text())["project"]

    def names(reqs: list[str]) -> set[str]:
        return {re.split(r"[\s\[<>=!~;]", r, maxsplit=1)[0].lower().replace("_", "-") for r in reqs}

    base = names(project["dependencies"])
    train = names(project["optional-dependencies"]["train"])
    heavy = {"torch", "torchvision", "timm", "open-clip-torch", "lightning", "pytorch-lightning", "torchmetrics",
             "tensorboard", "matplotlib", "safetensors", "onnx", "onnxscript"}
    assert not base & heavy, f"the base install pulls {sorted(base & heavy)}"
    assert base >= {"numpy", "pillow", "onnxruntime"}
    assert {"torch", "torchvision", "timm", "open-clip-torch", "lightning", "torchmetrics"} <= train
    # The CLI's hint covers every import name the extra brings.
    assert {"torch", "torchvision", "timm", "open_clip", "lightning", "torchmetrics", "safetensors"} <= TRAIN_STACK
