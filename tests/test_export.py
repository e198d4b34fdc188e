"""ONNX export, parity, INT8, FP16 and TensorRT-availability of tiny students and open_clip towers (CPU, seconds)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import open_clip
import pytest
import torch
from PIL import Image
from torch import nn

from edgedistill import export as ex
from edgedistill import storage
from edgedistill.config import DataConfig, TeacherConfig
from edgedistill.errors import EdgeDistillError

TINY_CLIP = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
             "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
open_clip.factory._MODEL_CONFIGS["tiny-deploy"] = TINY_CLIP
CLASSES = ["cat", "dog", "ship"]
VIEW = {"image_size": 32, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "interpolation": "bilinear"}


def make_student_run(path, arch="test_resnet", num_outputs=3, target="labels", seed=0):
    """A run directory as train.py writes it: student.safetensors + student.json."""
    from edgedistill.students import create_student

    torch.manual_seed(seed)
    model = create_student(arch, num_outputs)
    storage.save_safetensors(path / "student.safetensors", model.state_dict())
    storage.write_json(path / "student.json", {"arch": arch, "num_outputs": num_outputs, "small_input": False,
                                               "target": target, "view": VIEW, "class_names": CLASSES})
    return path


@pytest.fixture
def student_run(tmp_path):
    return make_student_run(tmp_path / "run")


def test_student_export_parity_on_fresh_input_and_metadata(student_run, tmp_path):
    model, meta = ex.load_student_deploy(student_run)
    report = ex.export_model(model, meta, tmp_path / "exp")
    path = tmp_path / "exp" / "model.onnx"
    proto = onnx.load(str(path))
    assert proto.opset_import[0].version >= 17
    stored = json.loads({p.key: p.value for p in proto.metadata_props}["edgedistill"])
    assert stored["view"]["image_size"] == 32 and stored["class_names"] == CLASSES and stored["precision"] == "fp32"
    assert report["parity"]["random"] < 1e-4
    # A batch size and resolution never seen at export (dynamic axes), fresh values.
    x = torch.randn(5, 3, 48, 48, generator=torch.Generator().manual_seed(7))
    got = ex.ort_session(path).run(None, {"image": x.numpy()})[0]
    with torch.no_grad():
        ref = model(x).numpy()
    assert got.shape == (5, 3)
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-4)
    assert storage.read_json(tmp_path / "exp" / "export.json")["files"]["fp32"] == "model.onnx"


def test_parity_failure_names_diff_and_tolerance(student_run, tmp_path):
    model, meta = ex.load_student_deploy(student_run)
    path = ex.export_onnx(model, tmp_path / "m.onnx", image_size=32, output_names=["logits"], metadata=meta)
    other, _ = ex.load_student_deploy(make_student_run(tmp_path / "other", seed=1))  # different weights
    with pytest.raises(ex.ParityError, match=r"max abs diff .* > tolerance 1e-06"):
        ex.check_parity(other, path, [torch.randn(2, 3, 32, 32)], tolerance=1e-6)


def test_open_clip_tower_export_parity_and_prompt_embeddings(tmp_path):
    model, meta, teacher = ex.load_teacher_deploy(TeacherConfig(kind="openclip", model="tiny-deploy", pretrained=None))
    report = ex.export_model(model, meta, tmp_path / "t", prompts=["a cat", "a dog"], teacher=teacher)
    path = tmp_path / "t" / "model.onnx"
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = model(x).numpy()
    got = ex.ort_session(path).run(["embedding"], {"image": x.numpy()})[0]
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-4)
    assert report["parity"]["random"] < 1e-4
    stored = ex.read_metadata(path)
    assert stored["text"]["names"] == ["a cat", "a dog"] and stored["dynamic_hw"] is False
    emb = np.load(tmp_path / "t" / stored["text"]["file"])
    np.testing.assert_allclose(emb, teacher.encode_text(["a cat", "a dog"]).numpy(), atol=1e-5)


def test_prompts_without_teacher_raise(student_run, tmp_path):
    model, meta = ex.load_student_deploy(student_run)
    with pytest.raises(EdgeDistillError, match="text encoder"):
        ex.export_model(model, meta, tmp_path / "x", prompts=["a fox"])


def test_embedding_student_run_dir_head_folded_in(tmp_path):
    from edgedistill.heads import TextHead, save_head

    run = make_student_run(tmp_path / "run", num_outputs=16, target="embedding")
    save_head(TextHead(torch.randn(3, 16), 100.0), run / "head")
    model, meta = ex.load_student_deploy(run)
    assert meta["outputs"] == ["logits", "embedding"] and meta["logit_scale"] == 100.0
    ex.export_model(model, meta, tmp_path / "e", text_embeddings=ex.head_text_embeddings(model.head))
    sess = ex.ort_session(tmp_path / "e" / "model.onnx")
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32), dtype=np.float32)
    logits, emb = sess.run(["logits", "embedding"], {"image": x})
    assert logits.shape == (4, 3) and emb.shape == (4, 16)
    text = np.load(tmp_path / "e" / "model.text_embeddings.npy")
    assert ex.read_metadata(tmp_path / "e" / "model.onnx")["text"]["names"] == CLASSES
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    np.testing.assert_allclose(logits, 100.0 * unit @ (text / np.linalg.norm(text, axis=1, keepdims=True)).T, atol=1e-3)


def _color_dataset(n_per_class=24, size=32, seed=0):
    """Class-coloured noisy images, preprocessed: items {"image": Tensor [3, S, S], "label": int}."""
    rng = np.random.default_rng(seed)
    colours = [(220, 40, 40), (40, 220, 40), (40, 40, 220)]
    items = []
    for label, c in enumerate(colours):
        for _ in range(n_per_class):
            arr = np.clip(np.array(c) + rng.integers(-60, 60, (size, size, 3)), 0, 255).astype(np.uint8)
            items.append({"image": torch.from_numpy(ex.preprocess_image(Image.fromarray(arr), ex.view_dict(VIEW))),
                          "label": label})
    return items


def _fit(model: nn.Module, data, steps=30):
    """A few SGD steps so predictions are confident (a random-init model's near-ties flip under any noise)."""
    x = torch.stack([d["image"] for d in data])
    y = torch.tensor([d["label"] for d in data])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


def test_int8_quantization_keeps_predictions(tmp_path):
    from edgedistill.students import create_student

    data = _color_dataset()
    torch.manual_seed(0)
    net = _fit(create_student("test_resnet", 3), data)
    model = ex.DeployModel(net).eval()
    meta = {"role": "student", "arch": "test_resnet", "target": "labels", "outputs": ["logits"],
            "view": ex.view_dict(VIEW), "class_names": CLASSES, "dynamic_hw": True}
    fp32 = ex.export_onnx(model, tmp_path / "model.onnx", image_size=32, output_names=["logits"], metadata=meta, dynamic_hw=True)
    calib = (np.stack([d["image"].numpy() for d in data[i::4]]) for i in range(4))
    int8 = ex.quantize_int8(fp32, tmp_path / "model.int8.onnx", calib)
    proto = onnx.load(str(int8))
    assert any(n.op_type == "QuantizeLinear" for n in proto.graph.node), "not a QDQ model"
    assert ex.read_metadata(int8)["precision"] == "int8"
    assert int8.stat().st_size < 0.5 * fp32.stat().st_size
    test = _color_dataset(n_per_class=10, seed=1)
    x = np.stack([d["image"].numpy() for d in test])
    p32 = ex.ort_session(fp32).run(None, {"image": x})[0].argmax(1)
    p8 = ex.ort_session(int8).run(None, {"image": x})[0].argmax(1)
    assert (p32 == p8).mean() >= 0.9
    acc32, acc8 = ex.onnx_accuracy(fp32, test), ex.onnx_accuracy(int8, test)
    assert acc32 > 0.9 and abs(acc32 - acc8) <= 0.1


def test_fp16_converts_and_loads(student_run, tmp_path):
    model, meta = ex.load_student_deploy(student_run)
    fp32 = ex.export_onnx(model, tmp_path / "m.onnx", image_size=32, output_names=["logits"], metadata=meta, dynamic_hw=True)
    fp16 = ex.convert_fp16(fp32, tmp_path / "m.fp16.onnx")
    proto = onnx.load(str(fp16))
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in proto.graph.initializer)
    assert ex.read_metadata(fp16)["precision"] == "fp16"
    sess = ex.ort_session(fp16)  # loads on CPU; FP16 is meant for GPU runtimes
    assert sess.get_inputs()[0].type == "tensor(float)"  # I/O stay float32


def test_preprocess_matches_training_eval_transform():
    from edgedistill.data.transforms import ViewSpec, eval_transform

    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (37, 53, 3), dtype=np.uint8))
    for view in (VIEW, {**VIEW, "image_size": 24, "interpolation": "bicubic", "crop_pct": 24 / 24.5}):
        ours = ex.preprocess_image(img, ex.view_dict(view))
        ref = eval_transform(ViewSpec(**ex.view_dict(view)))(img).numpy()
        np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_tensorrt_unavailable_is_explained():
    ok, why = ex.tensorrt_status()
    if ok:
        pytest.skip(f"TensorRT is available here ({why}); see test_tensorrt_engine")
    assert "tensorrt" in why.lower() or "cuda" in why.lower()
    with pytest.raises(ex.TensorRTUnavailableError, match="TensorRT is unavailable"):
        ex.build_tensorrt_engine("missing.onnx", "x.engine", image_size=32)


@pytest.mark.gpu
@pytest.mark.skipif(not ex.tensorrt_status()[0], reason=f"TensorRT unavailable: {ex.tensorrt_status()[1]}")
def test_tensorrt_engine(student_run, tmp_path):
    model, meta = ex.load_student_deploy(student_run)
    fp32 = ex.export_onnx(model, tmp_path / "m.onnx", image_size=32, output_names=["logits"], metadata=meta)
    engine = ex.build_tensorrt_engine(fp32, tmp_path / "m.engine", image_size=32, max_batch=8, opt_batch=8)
    assert engine.stat().st_size > 0


def test_export_command_end_to_end_with_real_images(student_run, image_folder, tmp_path, capsys):
    data = DataConfig(dataset="imagefolder", root=str(image_folder), val_fraction=0.34)
    ex.export_command(str(student_run), out=str(tmp_path / "out"), int8=True, fp16=True, tensorrt=True,
                      calib_data=data, calib_size=8)
    report = storage.read_json(tmp_path / "out" / "student" / "export.json")
    assert set(report["files"]) >= {"fp32", "int8", "fp16"}
    assert report["parity"]["real"] < 1e-3 and report["int8_calibration"]["images"] == 8
    assert 0.0 <= report["accuracy"]["int8"] <= 1.0 and 0.0 <= report["accuracy"]["fp32"] <= 1.0
    assert report["tensorrt"]["available"] or "TensorRT unavailable" in capsys.readouterr().err


def test_load_student_errors(tmp_path):
    with pytest.raises(EdgeDistillError, match="does not exist"):
        ex.load_student(tmp_path)
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(EdgeDistillError, match="Not a student model"):
        ex.load_student(tmp_path / "notes.txt")
    with pytest.raises(EdgeDistillError, match="Nothing to export"):
        ex.export_command(None)
