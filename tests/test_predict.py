"""predict: top-k from ONNX and run directories, folders with bad files, prompts, and one-line errors."""

from __future__ import annotations

import json

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from edgedistill import export as ex
from edgedistill import storage
from edgedistill.config import TeacherConfig
from edgedistill.errors import EdgeDistillError
from edgedistill.predict import collect_images, load_classifier, predict_command

TINY_CLIP = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
             "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
open_clip.factory._MODEL_CONFIGS["tiny-deploy"] = TINY_CLIP
CLASSES = ["cat", "dog", "ship"]
VIEW = {"image_size": 32, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "interpolation": "bilinear"}


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    """(run dir, export dir) of a tiny random-init 3-class student."""
    from edgedistill.students import create_student

    d = tmp_path_factory.mktemp("predict")
    torch.manual_seed(0)
    run = d / "run"
    storage.save_safetensors(run / "student.safetensors", create_student("test_resnet", 3).state_dict())
    storage.write_json(run / "student.json", {"arch": "test_resnet", "num_outputs": 3, "target": "labels",
                                              "view": VIEW, "class_names": CLASSES})
    model, meta = ex.load_student_deploy(run)
    ex.export_model(model, meta, d / "exp")
    return run, d / "exp"


@pytest.fixture
def images(tmp_path):
    """A folder of 5 generated images (PNG/JPEG, various sizes), one corrupt .jpg and a non-image file."""
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(5):
        arr = rng.integers(0, 255, (20 + 7 * i, 40, 3), dtype=np.uint8)
        Image.fromarray(arr).save(folder / ("sub" if i == 4 else "") / f"{i}.{'png' if i % 2 else 'jpg'}")
    (folder / "broken.jpg").write_bytes(b"definitely not a jpeg")
    (folder / "notes.txt").write_text("ignored: not an image suffix")
    return folder


def test_onnx_and_run_dir_agree_and_files_written(student, images, tmp_path, capsys):
    run, exp = student
    predict_command(str(exp / "model.onnx"), [str(images)], top_k=2, out=str(tmp_path / "p.json"), batch_size=2)
    out = json.loads((tmp_path / "p.json").read_text())
    assert len(out["predictions"]) == 5 and [e["path"] for e in out["errors"]] == [str(images / "broken.jpg")]
    for p in out["predictions"]:
        assert len(p["top"]) == 2 and {t["label"] for t in p["top"]} <= set(CLASSES)
        assert p["top"][0]["probability"] >= p["top"][1]["probability"]
    assert "broken.jpg" in capsys.readouterr().err
    # The PyTorch run directory gives the same probabilities as the ONNX file.
    predict_command(str(run), [str(images / "*.png"), str(images / "0.jpg")], top_k=3, out=str(tmp_path / "p.csv"))
    rows = (tmp_path / "p.csv").read_text().splitlines()
    assert rows[0] == "path,rank,label,probability,error" and len(rows) == 1 + 3 * 3
    onnx_top = {p["path"]: p["top"][0] for p in out["predictions"]}
    first = rows[1].split(",")
    assert onnx_top[first[0]]["label"] == first[2]
    assert float(first[3]) == pytest.approx(onnx_top[first[0]]["probability"], abs=1e-4)


def test_probabilities_sum_to_one(student, images):
    clf = load_classifier(student[1])  # the export directory
    x = np.stack([ex.preprocess_image(Image.open(p), clf.view) for p in collect_images([str(images / "*.png")])[0]])
    probs = clf.score(x)
    assert probs.shape == (2, 3)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)


def test_bad_inputs_raise_one_clear_error(student, images, tmp_path):
    model = str(student[1] / "model.onnx")
    with pytest.raises(EdgeDistillError, match="does not exist"):
        predict_command(model, [str(tmp_path / "missing.jpg")])
    with pytest.raises(EdgeDistillError, match="is not a readable image"):
        predict_command(model, [str(images / "broken.jpg")])
    with pytest.raises(EdgeDistillError, match="matches no files"):
        predict_command(model, [str(tmp_path / "*.webp")])
    fake = tmp_path / "fake.onnx"
    fake.write_text("not a model")
    with pytest.raises(EdgeDistillError, match="not a valid ONNX model"):
        predict_command(str(fake), [str(images / "0.jpg")])
    with pytest.raises(EdgeDistillError, match="Not a model"):
        predict_command(str(images / "notes.txt"), [str(images / "0.jpg")])


def test_cli_exit_code_and_one_line(student, tmp_path, capsys):
    from edgedistill.cli import main

    code = main(["predict", "--model", str(student[1]), "--inputs", f"[{tmp_path / 'nope.png'}]"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "nope.png" in err[0]


def test_prompts_repurpose_embedding_model(tmp_path, images):
    model, meta, teacher = ex.load_teacher_deploy(TeacherConfig(kind="openclip", model="tiny-deploy", pretrained=None))
    ex.export_model(model, meta, tmp_path / "t", prompts=["a cat", "a dog"], teacher=teacher)
    path = tmp_path / "t" / "model.onnx"
    # Stored prompts: no teacher needed. Scores are softmax(scale * cos(image, text)).
    clf = load_classifier(path, ["a dog", "a cat"])
    assert clf.labels == ["a dog", "a cat"]
    img = Image.open(images / "0.jpg")
    x = ex.preprocess_image(img, clf.view)[None]
    with torch.no_grad():
        emb = torch.nn.functional.normalize(model(torch.from_numpy(x)), dim=-1)
        text = torch.nn.functional.normalize(teacher.encode_text(["a dog", "a cat"]), dim=-1)
    expected = torch.softmax(meta["logit_scale"] * emb @ text.T, dim=-1).numpy()
    np.testing.assert_allclose(clf.score(x), expected, atol=1e-4)
    # A new prompt is embedded once with the teacher recorded in the metadata (random tiny-test here).
    assert load_classifier(path, ["a fox", "a cat"]).score(x).shape == (1, 2)
    with pytest.raises(EdgeDistillError, match="give --prompts"):
        load_classifier(path)  # no logits output: classes must be named
