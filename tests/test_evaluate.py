"""Metrics (golden numbers), the confusion PNG, and teacher_command end to end on a tiny ImageFolder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edgedistill.errors import DataError, EdgeDistillError
from edgedistill.evaluate import evaluate_logits, plot_confusion


def test_evaluate_logits_golden():
    logits = torch.tensor([[2.0, 1, 0], [0, 3, 1], [1, 0, 2], [3, 0, 0], [0, 0, 9]])
    labels = torch.tensor([0, 1, 1, 0, -1])  # the last row is hidden (-1): ignored
    r = evaluate_logits(logits, labels, ["a", "b", "c"])
    assert r["acc"] == pytest.approx(0.75)
    assert r["n"] == 4
    assert r["per_class"] == {"a": 1.0, "b": 0.5, "c": None}  # c has no samples
    assert r["confusion"] == [[2, 0, 0], [0, 1, 1], [0, 0, 0]]


def test_evaluate_logits_numpy_and_errors():
    r = evaluate_logits(np.eye(3, dtype=np.float16), np.array([0, 1, 0]), ["x", "y", "z"])
    assert r["acc"] == pytest.approx(2 / 3)
    with pytest.raises(EdgeDistillError, match="3 classes"):
        evaluate_logits(np.zeros((2, 4)), np.array([0, 1]), ["x", "y", "z"])
    with pytest.raises(DataError, match="no labeled"):
        evaluate_logits(np.zeros((2, 3)), np.array([-1, -1]), ["x", "y", "z"])


def test_plot_confusion_writes_png(tmp_path):
    path = plot_confusion([[3, 1], [0, 4]], ["cat", "dog"], tmp_path / "sub" / "cm.png", "title")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(path.parent.glob(".*.tmp"))  # atomic write left no temp file


# ----------------------------------------------------------------------------- end to end

import open_clip  # noqa: E402

from edgedistill.config import DataConfig, TeacherConfig  # noqa: E402

open_clip.factory._MODEL_CONFIGS["tiny-test"] = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
CLASSES = ["bird", "cat", "dog"]


def _image_folder(root, per_class: int = 8, classes=CLASSES, seed: int = 0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            # class-dependent colour so a linear probe has something to learn
            img = rng.integers(0, 60, (16, 16, 3)) + np.eye(3, dtype=np.int64)[c % 3] * 180
            Image.fromarray(img.astype(np.uint8)).save(root / name / f"{i}.png")
    return root


def test_teacher_command_end_to_end(tmp_path, capsys):
    from edgedistill.evaluate import evaluate_teacher, teacher_command

    data = DataConfig(dataset="imagefolder", root=str(_image_folder(tmp_path / "imgs")), val_fraction=0.25)
    teacher = TeacherConfig(kind="openclip", model="tiny-test", pretrained=None, device="cpu", batch_size=8)
    out = tmp_path / "out"
    teacher_command(data, teacher, head="all", templates="simple", split="val", cache_dir=str(tmp_path / "cache"),
                    out=str(out))
    printed = capsys.readouterr().out
    assert "| tiny-test" not in printed and "openclip:tiny-test | text | val" in printed
    r = json.loads((out / "teacher.json").read_text())
    assert set(r["heads"]) == {"text", "linear"}  # a CLIP teacher has no logits: no label map
    assert r["n"] == 6 and r["split"] == "val" and r["bad"] == 0
    for kind, h in r["heads"].items():
        assert 0.0 <= h["acc"] <= 1.0 and sum(map(sum, h["confusion"])) == 6
        assert (out / h["png"]).read_bytes()[:4] == b"\x89PNG"
    assert r["heads"]["linear"]["acc"] == 1.0  # colours separate the classes even through a random ViT
    assert (out / "probe.safetensors").is_file() and (out / "probe.json").is_file()
    # a second run reuses the cache and the saved probe
    again = evaluate_teacher(data, teacher, head="linear", split="val", cache_dir=str(tmp_path / "cache"), out=out)
    assert again["heads"]["linear"]["acc"] == r["heads"]["linear"]["acc"]
    assert "loaded_from" in again["heads"]["linear"]["probe"]
    # other train/val images (another seed for the carve-out): the saved probe is not reused
    reseeded = DataConfig(dataset="imagefolder", root=data.root, val_fraction=0.25, seed=1)
    other = evaluate_teacher(reseeded, teacher, head="linear", split="val", cache_dir=str(tmp_path / "cache"), out=out)
    assert "loaded_from" not in other["heads"]["linear"]["probe"]
    assert json.loads((out / "probe.json").read_text())["key"] != again["heads"]["linear"]["probe"]["key"]
    with pytest.raises(EdgeDistillError, match="label_map"):
        evaluate_teacher(data, teacher, head="label_map", split="val", cache_dir=str(tmp_path / "cache"), out=None)


def _fake_run(run, classes=CLASSES):
    """A run directory as train.py writes it: student.safetensors + student.json."""
    from edgedistill import storage
    from edgedistill.data import student_view
    from edgedistill.students import create_student

    torch.manual_seed(0)
    model = create_student("test_resnet", len(classes))
    storage.save_safetensors(run / "student.safetensors", model.state_dict())
    storage.write_json(run / "student.json", {
        "arch": "test_resnet", "num_outputs": len(classes), "small_input": False, "target": "labels", "head": None,
        "view": student_view(16).to_dict(), "class_names": classes, "teacher": None, "checkpoint": "x"})
    return model


def test_eval_student_on_imagefolder(tmp_path, capsys):
    from edgedistill.data import eval_transform, student_view
    from edgedistill.data.sources import ImageFolderSource
    from edgedistill.evaluate import eval_command

    model = _fake_run(tmp_path)
    images = _image_folder(tmp_path / "holdout", per_class=3, classes=["cat", "dog"])  # a subset of the classes
    eval_command(run=str(tmp_path), images=str(images), device="cpu", num_workers=0)
    assert "test_resnet | student | holdout | 6" in capsys.readouterr().out
    r = json.loads((tmp_path / "eval_holdout.json").read_text())
    src = ImageFolderSource(images, "x", classes=CLASSES)
    x = torch.stack([eval_transform(student_view(16))(src.load(i)) for i in range(len(src))])
    with torch.no_grad():
        want = (model.eval()(x).argmax(1).numpy() == src.labels).mean()
    assert r["acc"] == pytest.approx(want) and r["per_class"]["bird"] is None
    assert (tmp_path / r["png"]).is_file()
    _image_folder(tmp_path / "holdout", per_class=1, classes=["horse"])
    with pytest.raises(DataError, match="horse"):
        eval_command(run=str(tmp_path), images=str(images), device="cpu", num_workers=0)
