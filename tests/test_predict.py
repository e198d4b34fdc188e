"""predict: top-k from ONNX and run directories, folders with bad files, prompts, and one-line errors."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import tiny_teacher_cfg
from edgedistill import storage
from edgedistill.data.views import ViewSpec
from edgedistill.deploy import export as ex
from edgedistill.deploy.predict import collect_images, load_classifier, predict_command
from edgedistill.deploy.runtime import OnnxModel, preprocess
from edgedistill.errors import ConfigError, EdgeDistillError

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


def _torch_probs(run, paths) -> np.ndarray:
    """Reference probabilities: the PyTorch student on the same preprocessed pixels."""
    model, meta = ex.load_student_deploy(run)
    x = torch.from_numpy(np.stack([preprocess(Image.open(p), meta.view_spec) for p in paths]))
    with torch.no_grad():
        return torch.softmax(model(x), dim=1).numpy()


def test_onnx_and_run_dir_agree_and_files_written(student, images, tmp_path, capsys):
    run, exp = student
    predict_command(str(exp / "model.onnx"), [str(images)], top_k=2, out=str(tmp_path / "p.json"), batch_size=2)
    out = json.loads((tmp_path / "p.json").read_text())
    paths = sorted(str(p) for p in [*images.glob("*.png"), *images.glob("[0-9].jpg"), images / "sub" / "4.jpg"])
    assert sorted(p["path"] for p in out["predictions"]) == paths
    assert [e["path"] for e in out["errors"]] == [str(images / "broken.jpg")]
    ref = dict(zip(paths, _torch_probs(run, paths)))
    # Each reported probability is the reference probability of the label it names, in descending order
    # (compared by label, so a near-tie between two classes cannot make the test flaky).
    for p in out["predictions"]:
        expected = ref[p["path"]]
        got = [t["probability"] for t in p["top"]]
        assert len(p["top"]) == 2 and got == sorted(got, reverse=True)
        np.testing.assert_allclose(got, [expected[CLASSES.index(t["label"])] for t in p["top"]], atol=1e-4)
        np.testing.assert_allclose(got, np.sort(expected)[::-1][:2], atol=1e-4)
    err = capsys.readouterr().err
    assert "broken.jpg" in err and "1 of 6 files could not be read" in err
    # The PyTorch run directory gives the same probabilities as the ONNX file.
    predict_command(str(run), [str(images / "*.png"), str(images / "0.jpg")], top_k=3, out=str(tmp_path / "p.csv"))
    rows = (tmp_path / "p.csv").read_text().splitlines()
    assert rows[0] == "path,rank,label,probability,error" and len(rows) == 1 + 3 * 3
    onnx_prob = {(p["path"], t["label"]): t["probability"] for p in out["predictions"] for t in p["top"]}
    seen = set()
    for line in rows[1:]:
        path, rank, label, prob, error = line.split(",")
        assert error == "" and path in ref and rank in "123"
        seen.add((path, label))
        assert float(prob) == pytest.approx(ref[path][CLASSES.index(label)], abs=1e-4)
        if (path, label) in onnx_prob:
            assert float(prob) == pytest.approx(onnx_prob[path, label], abs=1e-4)
    assert {path for path, _ in seen} == {str(images / "1.png"), str(images / "3.png"), str(images / "0.jpg")}
    assert len(seen) == 9  # every class once per image


def test_probabilities_sum_to_one_and_export_dir_equals_file(student, images):
    clf = load_classifier(student[1])  # the export directory
    assert clf.labels == CLASSES and clf.view == ViewSpec(**VIEW)
    x = np.stack([preprocess(Image.open(p), clf.view) for p in collect_images([str(images / "*.png")])[0]])
    probs = clf.score(x)
    assert probs.shape == (2, 3)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    np.testing.assert_allclose(probs, load_classifier(student[1] / "model.onnx").score(x), atol=1e-6)
    np.testing.assert_allclose(probs, load_classifier(student[0]).score(x), atol=1e-4)  # the run directory


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
    with pytest.raises(ConfigError, match="unknown format '.txt'"):
        predict_command(model, [str(images / "0.jpg")], out=str(tmp_path / "p.txt"))
    with pytest.raises(ConfigError, match="top_k=0"):
        predict_command(model, [str(images / "0.jpg")], top_k=0)
    assert not (tmp_path / "p.txt").exists()


def test_cli_exit_code_and_one_line(student, images, tmp_path, capsys):
    from edgedistill.cli import main

    code = main(["predict", "--model", str(student[1]), "--inputs", f"[{tmp_path / 'nope.png'}]"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "nope.png" in err[0]
    # Positional form: MODEL IMAGE...; prints one line per image.
    code = main(["predict", str(student[1] / "model.onnx"), str(images / "0.jpg"), str(images / "1.png"), "--top_k", "1"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert code == 0 and len(lines) == 2 and lines[0].startswith(f"{images / '0.jpg'}: ")
    paths = [images / "0.jpg", images / "1.png"]
    for line, path, ref in zip(lines, paths, _torch_probs(student[0], paths)):  # the PyTorch student's own answer
        name, rest = line.rsplit(": ", 1)
        label, prob = rest.split()
        assert name == str(path) and label == CLASSES[int(ref.argmax())] and float(prob) == pytest.approx(ref.max(), abs=1e-3)


def test_prompts_repurpose_embedding_model(tmp_path, images):
    model, meta, teacher = ex.load_teacher_deploy(tiny_teacher_cfg())
    ex.export_model(model, meta, tmp_path / "t", prompts=["a cat", "a dog"], teacher=teacher)
    path = tmp_path / "t" / "model.onnx"
    # Stored prompts: no teacher needed. Scores are softmax(scale * cos(image, text)).
    clf = load_classifier(path, ["a dog", "a cat"])
    assert clf.labels == ["a dog", "a cat"]
    img = Image.open(images / "0.jpg")
    x = preprocess(img, clf.view)[None]
    with torch.no_grad():
        emb = torch.nn.functional.normalize(model(torch.from_numpy(x)), dim=-1)
        text = torch.nn.functional.normalize(teacher.encode_text(["a dog", "a cat"]), dim=-1)
    expected = torch.softmax(meta.logit_scale * emb @ text.T, dim=-1).numpy()
    np.testing.assert_allclose(clf.score(x), expected, atol=1e-4)
    # A new prompt is embedded once with the teacher recorded in the metadata (the seeded random tiny model here).
    fox = load_classifier(path, ["a fox", "a cat"]).score(x)
    with torch.no_grad():
        text = torch.nn.functional.normalize(teacher.encode_text(["a fox", "a cat"]), dim=-1)
    np.testing.assert_allclose(fox, torch.softmax(meta.logit_scale * emb @ text.T, dim=-1).numpy(), atol=1e-4)
    with pytest.raises(EdgeDistillError, match="give --prompts"):
        load_classifier(path)  # no logits output: classes must be named


def test_prompts_without_teacher_or_embedding(student, tmp_path):
    # A logits-only student cannot be re-purposed.
    with pytest.raises(ConfigError, match="needs a model with an 'embedding' output"):
        load_classifier(student[1], ["a fox"])
    # An embedding model with stored prompts but no recorded teacher: only stored prompts work.
    model, meta, teacher = ex.load_teacher_deploy(tiny_teacher_cfg())
    ex.export_model(model, dataclasses.replace(meta, teacher=None), tmp_path / "t", prompts=["a cat"],
                    teacher=teacher)
    m = OnnxModel(tmp_path / "t")
    assert m.meta.teacher is None and list(m.text) == ["a cat"]
    assert m.classifier(["a cat"]).labels == ["a cat"]
    with pytest.raises(EdgeDistillError, match=r"No text embeddings for prompts \['a fox'\]"):
        m.classifier(["a fox"])


def _photo() -> np.ndarray:
    """A real photo (skimage's chelsea the cat, 300 x 451 RGB)."""
    from skimage import data

    return data.chelsea()


def test_16bit_images_are_scaled_not_clipped(student, tmp_path):
    """A 16-bit grayscale PNG decodes to the same pixels as its 8-bit twin (convert("RGB") would clip it to white)."""
    from edgedistill.data.images import decode_image

    gray8 = np.asarray(Image.fromarray(_photo()).convert("L"))
    Image.fromarray(gray8).save(tmp_path / "g8.png")
    Image.fromarray(gray8.astype(np.uint16) * 257).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I;16")
    np.testing.assert_array_equal(np.asarray(decode_image(tmp_path / "g16.png")), np.asarray(decode_image(tmp_path / "g8.png")))
    # Float images in 0..1 (mode F) are scaled by 255, too.
    as_float = Image.fromarray(gray8.astype(np.float32) / 255.0)
    np.testing.assert_array_equal(np.asarray(preprocess(as_float, ViewSpec(**VIEW))),
                                  np.asarray(preprocess(Image.fromarray(gray8), ViewSpec(**VIEW))))
    clf = load_classifier(student[1])
    from edgedistill.deploy.predict import predict_images

    (p8, p16), errors = predict_images(clf, [tmp_path / "g8.png", tmp_path / "g16.png"], show_progress=False)
    assert not errors and p8["top"] == p16["top"]


def test_exif_orientation_is_applied(student, tmp_path):
    """A photo stored sideways with an EXIF orientation tag decodes upright, in predict and in training alike."""
    from edgedistill.data.images import decode_image
    from edgedistill.data.transforms import AugParams, apply_aug

    upright = Image.fromarray(_photo())
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display": stored turned 90 counter-clockwise
    Image.fromarray(np.rot90(_photo())).save(tmp_path / "sideways.png", exif=exif)
    upright.save(tmp_path / "upright.png")
    assert Image.open(tmp_path / "sideways.png").size == upright.size[::-1]
    decoded = decode_image(tmp_path / "sideways.png")
    np.testing.assert_array_equal(np.asarray(decoded), np.asarray(upright))
    # Training's augmentation path gets the upright image even when handed the raw file's PIL image.
    view = ViewSpec(**VIEW)
    p = AugParams(top=0.1, left=0.2, height=0.5, width=0.6, flip=False)
    torch.testing.assert_close(apply_aug(Image.open(tmp_path / "sideways.png"), p, view), apply_aug(upright, p, view))
    from edgedistill.deploy.predict import predict_images

    (a, b), errors = predict_images(load_classifier(student[1]), [tmp_path / "upright.png", tmp_path / "sideways.png"],
                                    show_progress=False)
    assert not errors and a["top"] == b["top"]


def test_inputs_takes_one_path_or_a_list(student, images, capsys):
    from edgedistill.cli import main

    one = str(images / "0.jpg")
    assert main(["predict", "--model", str(student[1]), "--inputs", one, "--top_k", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{one}: ")
    assert main(["predict", "--model", str(student[1]), "--inputs", json.dumps([one, str(images / "1.png")])]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 2
