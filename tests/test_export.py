"""ONNX export, parity, INT8, FP16 and TensorRT-availability of tiny students and open_clip towers (CPU, seconds)."""

from __future__ import annotations

import dataclasses
import json
import sys
import types

import numpy as np
import onnx
import pytest
import torch
from PIL import Image
from torch import nn

from conftest import IMAGE_FOLDER_COLOURS, fit_briefly, tiny_teacher_cfg
from edgedistill import storage
from edgedistill.config import DataConfig
from edgedistill.data.views import ViewSpec, preprocess
from edgedistill.deploy import export as ex
from edgedistill.deploy import quantize as qz
from edgedistill.deploy.runtime import DeployMeta, ort_session, read_metadata
from edgedistill.errors import ConfigError, EdgeDistillError

CLASSES = ["cat", "dog", "ship"]
VIEW = {"image_size": 32, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "interpolation": "bilinear"}
SPEC = ViewSpec(**VIEW)


def write_student_run(path, model: nn.Module, arch="test_resnet", num_outputs=3, target="labels"):
    """A run directory as training writes it: student.safetensors + student.json."""
    storage.save_safetensors(path / "student.safetensors", model.state_dict())
    storage.write_json(path / "student.json", {"arch": arch, "num_outputs": num_outputs, "class_names": CLASSES,
                                               "view": VIEW, "target": target, "small_input": False})
    return path


def make_student_run(path, arch="test_resnet", num_outputs=3, target="labels", seed=0):
    """A run directory of a random-init student."""
    from edgedistill.students import create_student

    torch.manual_seed(seed)
    return write_student_run(path, create_student(arch, num_outputs), arch, num_outputs, target)


@pytest.fixture
def student_run(tmp_path):
    return make_student_run(tmp_path / "run")


def _meta(**kw) -> DeployMeta:
    return DeployMeta(**{"role": "student", "arch": "test_resnet", "outputs": ["logits"], "view": SPEC.to_dict(),
                         "class_names": CLASSES, "dynamic_hw": True, **kw})


def test_student_export_parity_on_fresh_input_and_metadata(student_run, tmp_path):
    model, meta = ex.load_student_deploy(student_run)
    assert isinstance(meta, DeployMeta) and meta.outputs == ["logits"] and meta.class_names == CLASSES
    report = ex.export_model(model, meta, tmp_path / "exp")
    path = tmp_path / "exp" / "model.onnx"
    proto = onnx.load(str(path))
    assert proto.opset_import[0].version >= 17
    stored = json.loads({p.key: p.value for p in proto.metadata_props}["edgedistill"])
    assert stored["view"] == SPEC.to_dict() and stored["class_names"] == CLASSES and stored["precision"] == "fp32"
    assert read_metadata(path) == dataclasses.replace(meta, precision="fp32", opset=17)
    assert report["parity"]["random"] < 1e-4
    # A batch size and resolution never seen at export (dynamic axes), fresh values.
    x = torch.randn(5, 3, 48, 48, generator=torch.Generator().manual_seed(7))
    got = ort_session(path).run(None, {"image": x.numpy()})[0]
    with torch.no_grad():
        ref = model(x).numpy()
    assert got.shape == (5, 3)
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-4)
    saved = storage.read_json(tmp_path / "exp" / "export.json")
    assert saved["files"] == {"fp32": "model.onnx"} and saved["parity"] == report["parity"]
    assert (tmp_path / "exp" / "labels.txt").read_text().splitlines() == CLASSES
    assert sorted(p.name for p in (tmp_path / "exp").iterdir()) == ["README.md", "export.json", "labels.txt", "model.onnx"]  # no temp files


def test_parity_failure_names_diff_and_tolerance(student_run, tmp_path):
    model, meta = ex.load_student_deploy(student_run)
    path, parity = ex.export_onnx(model, tmp_path / "m.onnx", meta=meta)
    assert path == tmp_path / "m.onnx" and path.is_file() and parity == {}  # no check asked for
    x = [torch.randn(2, 3, 32, 32)]
    assert ex.check_parity(model, path, x, tolerance=1e-4) < 1e-4
    other, _ = ex.load_student_deploy(make_student_run(tmp_path / "other", seed=1))  # different weights
    with pytest.raises(ex.ParityError, match=r"max abs diff .* > tolerance 1e-06"):
        ex.check_parity(other, path, x, tolerance=1e-6)


class _ExportsDifferently(nn.Module):
    """Stands in for an exporter bug: the traced graph adds 0.5 that eager PyTorch does not."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 3)

    def forward(self, x):
        out = self.fc(x.mean((2, 3)))
        return out + 0.5 if torch.onnx.is_in_onnx_export() else out


def test_parity_failure_writes_nothing(tmp_path):
    model = ex.DeployModel(_ExportsDifferently())
    target = tmp_path / "exp" / "model.onnx"
    with pytest.raises(ex.ParityError, match=r"on random inputs: max abs diff 0\.5 > tolerance 0\.001"):
        ex.export_onnx(model, target, meta=_meta(), check={"random": torch.randn(2, 3, 32, 32)})
    assert not target.exists() and list(target.parent.iterdir()) == []  # neither the model nor its temp file
    # The same through export_model: no model, no export.json.
    with pytest.raises(ex.ParityError):
        ex.export_model(model, _meta(), tmp_path / "exp2")
    assert not (tmp_path / "exp2").exists() or list((tmp_path / "exp2").iterdir()) == []
    # An earlier good export at the target is not replaced by a failing one.
    ok = ex.DeployModel(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 3)))
    ex.export_onnx(ok, target, meta=_meta(), check={"random": torch.randn(2, 3, 32, 32)})
    before = target.read_bytes()
    with pytest.raises(ex.ParityError):
        ex.export_onnx(model, target, meta=_meta(), check={"random": torch.randn(2, 3, 32, 32)})
    assert target.read_bytes() == before and [p.name for p in target.parent.iterdir()] == ["model.onnx"]


def test_old_opset_refused(student_run, tmp_path):
    model, meta = ex.load_student_deploy(student_run)
    with pytest.raises(ConfigError, match="opset=13"):
        ex.export_onnx(model, tmp_path / "m.onnx", meta=meta, opset=13)
    assert not (tmp_path / "m.onnx").exists()


def test_open_clip_tower_export_parity_and_prompt_embeddings(tmp_path):
    model, meta, teacher = ex.load_teacher_deploy(tiny_teacher_cfg())
    report = ex.export_model(model, meta, tmp_path / "t", prompts=["a cat", "a dog"], teacher=teacher)
    path = tmp_path / "t" / "model.onnx"
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = model(x).numpy()
    got = ort_session(path).run(["embedding"], {"image": x.numpy()})[0]
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-4)
    assert report["parity"]["random"] < 1e-4
    stored = read_metadata(path)
    assert stored.role == "teacher" and stored.outputs == ["embedding"] and stored.teacher["pretrained"] == "random"
    assert stored.text["names"] == ["a cat", "a dog"] and stored.dynamic_hw is False
    assert stored.logit_scale == pytest.approx(float(teacher.logit_scale))
    emb = np.load(tmp_path / "t" / stored.text["file"])
    np.testing.assert_allclose(emb, teacher.encode_text(["a cat", "a dog"]).numpy(), atol=1e-5)


def test_prompts_without_teacher_raise(student_run, tmp_path):
    model, meta = ex.load_student_deploy(student_run)
    with pytest.raises(EdgeDistillError, match="text encoder"):
        ex.export_model(model, meta, tmp_path / "x", prompts=["a fox"])
    assert not (tmp_path / "x" / "model.onnx").exists()


def test_embedding_student_run_dir_head_folded_in(tmp_path):
    from edgedistill.heads import TextHead, save_head

    run = make_student_run(tmp_path / "run", num_outputs=16, target="embedding")
    save_head(TextHead(torch.randn(3, 16), 100.0), run / "head")
    model, meta = ex.load_student_deploy(run)
    assert meta.outputs == ["logits", "embedding"] and meta.logit_scale == 100.0
    ex.export_model(model, meta, tmp_path / "e", text_embeddings=ex.head_text_embeddings(model.head))
    sess = ort_session(tmp_path / "e" / "model.onnx")
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32), dtype=np.float32)
    logits, emb = sess.run(["logits", "embedding"], {"image": x})
    assert logits.shape == (4, 3) and emb.shape == (4, 16)
    text = np.load(tmp_path / "e" / "model.text_embeddings.npy")
    assert read_metadata(tmp_path / "e" / "model.onnx").text["names"] == CLASSES
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    np.testing.assert_allclose(logits, 100.0 * unit @ (text / np.linalg.norm(text, axis=1, keepdims=True)).T, atol=1e-3)


def _color_images(n_per_class=24, size=32, seed=0):
    """Class-coloured noisy PIL images (the colours of conftest's image_folder): [(image, label)]."""
    rng = np.random.default_rng(seed)
    out = []
    for label, name in enumerate(CLASSES):
        for _ in range(n_per_class):
            arr = np.clip(np.array(IMAGE_FOLDER_COLOURS[name]) + rng.integers(-60, 60, (size, size, 3)), 0, 255)
            out.append((Image.fromarray(arr.astype(np.uint8)), label))
    return out


def _color_dataset(n_per_class=24, seed=0):
    """Preprocessed class-coloured images: items {"image": Tensor [3, S, S], "label": int}."""
    return [{"image": torch.from_numpy(preprocess(img, SPEC)), "label": label}
            for img, label in _color_images(n_per_class, seed=seed)]


def _fit(model: nn.Module, data, steps=10):
    return fit_briefly(model, torch.stack([d["image"] for d in data]), torch.tensor([d["label"] for d in data]), steps)


@pytest.fixture(scope="module")
def trained():
    """A test_resnet fitted on class-coloured images (seconds)."""
    from edgedistill.students import create_student

    torch.manual_seed(0)
    return _fit(create_student("test_resnet", 3), _color_dataset(n_per_class=12))


def test_int8_quantization_keeps_predictions(trained, tmp_path):
    data = _color_dataset(n_per_class=12)
    fp32, _ = ex.export_onnx(ex.DeployModel(trained).eval(), tmp_path / "model.onnx", meta=_meta())
    calib = (np.stack([d["image"].numpy() for d in data[i::4]]) for i in range(4))
    int8 = qz.quantize_int8(fp32, tmp_path / "model.int8.onnx", calib)
    proto = onnx.load(str(int8))
    assert any(n.op_type == "QuantizeLinear" for n in proto.graph.node), "not a QDQ model"
    assert read_metadata(int8) == dataclasses.replace(read_metadata(fp32), precision="int8")
    assert int8.stat().st_size < 0.5 * fp32.stat().st_size
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.int8.onnx", "model.onnx"]  # pre-processed file removed
    test = _color_dataset(n_per_class=10, seed=1)
    x = np.stack([d["image"].numpy() for d in test])
    y = np.array([d["label"] for d in test])
    p32 = ort_session(fp32).run(None, {"image": x})[0].argmax(1)
    p8 = ort_session(int8).run(None, {"image": x})[0].argmax(1)
    assert (p32 == p8).mean() >= 0.9
    acc32, acc8 = ex.onnx_accuracy(fp32, test), ex.onnx_accuracy(int8, test)
    assert acc32 == pytest.approx((p32 == y).mean()) and acc8 == pytest.approx((p8 == y).mean())
    assert acc32 > 0.9 and abs(acc32 - acc8) <= 0.1


def test_onnx_accuracy_skips_unlabeled_and_needs_logits(trained, tmp_path):
    fp32, _ = ex.export_onnx(ex.DeployModel(trained).eval(), tmp_path / "model.onnx", meta=_meta())
    test = _color_dataset(n_per_class=4, seed=2)
    x = torch.stack([d["image"] for d in test])
    with torch.no_grad():
        pred = trained(x).argmax(1).numpy()
    wrong = [{"image": d["image"], "label": (int(p) + 1) % 3} for d, p in zip(test, pred)]  # every label wrong
    assert ex.onnx_accuracy(fp32, wrong) == 0.0
    half = [{**d, "label": -1} if i % 2 else d for i, d in enumerate(wrong)] + [None]  # -1 and None are skipped
    assert ex.onnx_accuracy(fp32, half + test, batch_size=5) == pytest.approx(len(test) / (len(test) + (len(wrong) + 1) // 2))
    with pytest.raises(EdgeDistillError, match="without labeled images"):
        ex.onnx_accuracy(fp32, [{**d, "label": -1} for d in test])


def test_fp16_converts_and_loads(student_run, tmp_path):
    model, meta = ex.load_student_deploy(student_run)
    fp32, _ = ex.export_onnx(model, tmp_path / "m.onnx", meta=meta)
    fp16 = qz.convert_fp16(fp32, tmp_path / "m.fp16.onnx")
    proto = onnx.load(str(fp16))
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in proto.graph.initializer)
    assert read_metadata(fp16).precision == "fp16"
    sess = ort_session(fp16)  # loads on CPU; FP16 is meant for GPU runtimes
    assert sess.get_inputs()[0].type == "tensor(float)"  # I/O stay float32
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = model(x).numpy()
    np.testing.assert_allclose(sess.run(None, {"image": x.numpy()})[0], ref, atol=0.05 * np.abs(ref).max() + 1e-2)


def test_preprocess_matches_training_eval_transform_and_torchvision():
    from torchvision import transforms as T

    from edgedistill.data.transforms import eval_transform

    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (37, 53, 3), dtype=np.uint8))
    modes = {"bilinear": T.InterpolationMode.BILINEAR, "bicubic": T.InterpolationMode.BICUBIC}
    for view in (SPEC, ViewSpec(24, VIEW["mean"], VIEW["std"], "bicubic", "shortest", crop_pct=24 / 28)):
        ours = preprocess(img, view)
        np.testing.assert_array_equal(ours, eval_transform(view)(img).numpy())
        # Independent reference: torchvision's PIL pipeline (timm's eval transform is this composition).
        resize = ([T.Resize((view.image_size,) * 2, modes[view.interpolation])] if view.resize_mode == "squash" else
                  [T.Resize(int(view.image_size / view.crop_pct), modes[view.interpolation]), T.CenterCrop(view.image_size)])
        ref = T.Compose([*resize, T.ToTensor(), T.Normalize(view.mean, view.std)])(img).numpy()
        assert ours.shape == ref.shape == (3, view.image_size, view.image_size)
        np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_tensorrt_status_says_which_part_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    ok, why = qz.tensorrt_status()
    assert not ok and "'tensorrt' Python package is not installed" in why
    with pytest.raises(qz.TensorRTUnavailableError, match="TensorRT is unavailable: the 'tensorrt' Python package"):
        qz.build_tensorrt_engine("missing.onnx", "x.engine", image_size=32)
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.0.1"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    ok, why = qz.tensorrt_status()
    assert not ok and "no CUDA GPU" in why and "installed" in why
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "Fake GPU")
    assert qz.tensorrt_status() == (True, "TensorRT 10.0.1 on Fake GPU")


@pytest.mark.gpu
@pytest.mark.skipif(not qz.tensorrt_status()[0], reason=f"TensorRT unavailable: {qz.tensorrt_status()[1]}")
def test_tensorrt_engine(student_run, tmp_path):
    model, meta = ex.load_student_deploy(student_run)
    fp32, _ = ex.export_onnx(model, tmp_path / "m.onnx", meta=dataclasses.replace(meta, dynamic_hw=False))
    engine = qz.build_tensorrt_engine(fp32, tmp_path / "m.engine", image_size=32, max_batch=8, opt_batch=8)
    assert engine.stat().st_size > 0


def test_export_command_end_to_end_with_real_images(trained, image_folder, tmp_path, capsys):
    run = write_student_run(tmp_path / "run", trained)
    data = DataConfig(dataset="imagefolder", root=str(image_folder), val_fraction=0.34)
    ex.export_command(str(run), out=str(tmp_path / "out"), int8=True, fp16=True, tensorrt=True,
                      calib_data=data, calib_size=8)
    out = tmp_path / "out" / "student"
    report = storage.read_json(out / "export.json")
    ok, why = qz.tensorrt_status()
    expected = {"fp32", "int8", "fp16"} | ({"tensorrt_fp16", "tensorrt_int8"} if ok else set())
    assert set(report["files"]) == expected and all((out / f).is_file() for f in report["files"].values())
    assert report["parity"]["real"] < 1e-3 and report["int8_calibration"] == {"split": "train", "images": 8}
    assert report["tensorrt"] == {"available": ok, "reason": why}
    if not ok:
        assert f"TensorRT unavailable, engine skipped: {why}" in capsys.readouterr().err
        assert not list(out.glob("*.engine"))
    # Independent check of the reported accuracy: the PyTorch model on the same val images.
    val = ex.real_images(data, "val", VIEW)
    x = torch.stack([val[i]["image"] for i in range(len(val))])
    y = np.array([val[i]["label"] for i in range(len(val))])
    assert len(y) >= 5 and set(y) == {0, 1, 2}
    with torch.no_grad():
        torch_acc = float((trained(x).argmax(1).numpy() == y).mean())
    acc = report["accuracy"]
    assert acc["fp32"] == pytest.approx(torch_acc) and acc["fp32"] > 0.9
    assert abs(acc["int8"] - acc["fp32"]) <= 1 / len(y) + 1e-9  # at most one image flips
    assert acc["int8"] == pytest.approx(ex.onnx_accuracy(out / "model.int8.onnx", val))


def test_load_student_errors(tmp_path):
    from edgedistill.students import load_student

    with pytest.raises(EdgeDistillError, match="does not exist"):
        load_student(tmp_path)
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(EdgeDistillError, match="Not a student model"):
        load_student(tmp_path / "notes.txt")
    with pytest.raises(EdgeDistillError, match="does not exist"):
        ex.load_student_deploy(tmp_path)
    with pytest.raises(EdgeDistillError, match="Nothing to export"):
        ex.export_command(None)


def test_int8_needs_calibration_images_before_any_export(student_run, tmp_path):
    with pytest.raises(ConfigError, match="--int8 needs real calibration images"):
        ex.export_command(str(student_run), out=str(tmp_path / "out"), int8=True)
    assert not (tmp_path / "out").exists()
