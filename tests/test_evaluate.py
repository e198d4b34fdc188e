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

from conftest import TINY, tiny_teacher_cfg  # noqa: E402
from edgedistill.config import DataConfig  # noqa: E402

CLASSES = ["bird", "cat", "dog"]


def _image_folder(root, per_class: int = 8, classes=CLASSES, seed: int = 0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            # class-dependent colour so a linear probe has something to learn
            colour = CLASSES.index(name) if name in CLASSES else c  # a class keeps its colour in every folder
            img = rng.integers(0, 60, (16, 16, 3)) + np.eye(3, dtype=np.int64)[colour % 3] * 180
            Image.fromarray(img.astype(np.uint8)).save(root / name / f"{i}.png")
    return root


def test_teacher_command_end_to_end(tmp_path, capsys):
    from edgedistill.evaluate import evaluate_teacher, teacher_command

    from edgedistill.data import build_splits, eval_transform
    from edgedistill.heads import build_text_head
    from edgedistill.teachers import create_teacher

    data = DataConfig(dataset="imagefolder", root=str(_image_folder(tmp_path / "imgs")), val_fraction=0.25)
    teacher = tiny_teacher_cfg(batch_size=8)
    out = tmp_path / "out"
    teacher_command(data, teacher, head="all", templates="simple", split="val", cache_dir=str(tmp_path / "cache"),
                    out=str(out))
    printed = capsys.readouterr().out
    assert f"| openclip:{TINY} | text | val" in printed
    r = json.loads((out / "teacher.json").read_text())
    assert set(r["heads"]) == {"text", "linear"}  # a CLIP teacher has no logits: no label map
    assert r["n"] == 6 and r["split"] == "val" and r["bad"] == 0
    for kind, h in r["heads"].items():
        assert sum(map(sum, h["confusion"])) == 6
        assert (out / h["png"]).read_bytes()[:4] == b"\x89PNG"
    # The text head's accuracy, recomputed without the cache: the teacher on each val image, the zero-shot head.
    model = create_teacher(teacher)
    splits = build_splits(data)
    ds = splits.dataset("val", eval_transform(model.view))
    x = torch.stack([ds[i]["image"] for i in range(len(ds))])
    pred = build_text_head(model, CLASSES, "simple")(model(x)["embedding"]).argmax(1).numpy()
    assert r["heads"]["text"]["acc"] == pytest.approx((pred == splits.labels("val")).mean(), abs=1e-6)
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


def test_teacher_eval_checks_arguments_before_computing(tmp_path, monkeypatch):
    """Every argument is checked before the teacher runs on a single image (issue: 146 s of caching, then an error)."""
    from edgedistill import evaluate
    from edgedistill.evaluate import eval_command

    images = _image_folder(tmp_path / "imgs", per_class=2, classes=["ant", "bee"])  # no shipped label map covers these
    monkeypatch.setattr(evaluate, "ensure_cache", lambda *a, **k: pytest.fail("cached before checking the arguments"))
    lite_like = tiny_teacher_cfg()
    with pytest.raises(EdgeDistillError, match="label_map.*no logits"):
        eval_command(images=str(images), teacher=lite_like, head="label_map")
    with pytest.raises(DataError, match="--probe"):
        eval_command(images=str(images), teacher=lite_like, head="linear")  # no val split to fit one on
    with pytest.raises(EdgeDistillError, match="probe.json"):
        eval_command(images=str(images), teacher=lite_like, head="linear", probe=str(tmp_path))


def test_saved_probe_scores_a_users_imagefolder(tmp_path, capsys):
    """A teacher's probe, fitted on one dataset, scores a user's own labelled folder of some of its classes."""
    from edgedistill.evaluate import eval_command, evaluate_teacher

    data = DataConfig(dataset="imagefolder", root=str(_image_folder(tmp_path / "imgs")), val_fraction=0.25)
    teacher = tiny_teacher_cfg(batch_size=8)
    fitted = evaluate_teacher(data, teacher, head="linear", split="val", cache_dir=str(tmp_path / "cache"),
                              out=tmp_path / "t")
    assert fitted["heads"]["linear"]["acc"] == 1.0
    mine = _image_folder(tmp_path / "mine", per_class=3, classes=["cat", "dog"], seed=5)
    eval_command(images=str(mine), teacher=teacher, head="linear", probe=str(tmp_path / "t"),
                 cache_dir=str(tmp_path / "cache"), out=str(tmp_path / "e"))
    assert "| linear | train | 6 | 100.00% |" in capsys.readouterr().out
    r = json.loads((tmp_path / "e" / "teacher.json").read_text())["heads"]["linear"]
    assert r["per_class"] == {"bird": None, "cat": 1.0, "dog": 1.0}  # scored in the probe's own classes


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
