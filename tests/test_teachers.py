"""Teachers: the Lite0 key remap against an independent reference, real photos, tiny OpenCLIP, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import open_clip
import pytest
import timm
import torch
from PIL import Image

from edgedistill.config import TeacherConfig
from edgedistill.data.transforms import ViewSpec, eval_transform
from edgedistill.errors import ConfigError, EdgeDistillError, WeightsNotFoundError
from edgedistill.teachers import Teacher, create_teacher, make_fingerprint, resolve_device
from edgedistill.teachers import openclip as oc
from edgedistill.teachers.base import file_sha256, state_dict_sha256
from edgedistill.teachers.imagenet import create_timm_teacher, lite0_weights_path, remap_lite0_state_dict

TINY = "edgedistill-tiny-test"
TINY_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def lite0() -> Teacher:
    return create_teacher(TeacherConfig(kind="efficientnet_lite0", device="cpu"))


@pytest.fixture(scope="module")
def tiny_clip_name(tmp_path_factory) -> str:
    """A tiny open_clip architecture registered through open_clip's own config mechanism."""
    d = tmp_path_factory.mktemp("clip_cfg")
    (d / f"{TINY}.json").write_text(json.dumps(TINY_CFG))
    open_clip.add_model_config(d)
    return TINY


def _golden_input() -> torch.Tensor:
    n = 3 * 224 * 224
    i = torch.arange(n, dtype=torch.float64)
    return torch.stack([torch.sin(i * 0.013), torch.cos(i * 0.0007) * 0.8]).float().reshape(2, 3, 224, 224)


def test_lite0_remap_matches_reference_package(lite0):
    # Golden logits computed once with the weights' own loader, PyPI efficientnet-lite-pytorch 0.1.0
    # (EfficientNet.from_pretrained("efficientnet-lite0", weights_path=...)), on _golden_input();
    # our remapped timm model matched it to 7e-7.
    idx = [0, 21, 281, 404, 999]
    golden = torch.tensor([[-1.1139, 1.9850, 0.5062, 0.2003, 1.0564], [-0.4278, 0.7248, -0.4964, 1.2952, -0.4585]])
    out = lite0(_golden_input())
    assert out["logits"].shape == (2, 1000) and out["embedding"].shape == (2, 1280)
    torch.testing.assert_close(out["logits"][:, idx], golden, atol=2e-3, rtol=0)
    assert out["logits"].argmax(1).tolist() == [549, 916]


def test_lite0_remap_keys():
    sd = torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)
    out = remap_lite0_state_dict(sd)
    assert out["blocks.0.0.conv_pw.weight"] is sd["_blocks.0._project_conv.weight"]  # stage 0: depthwise-separable
    assert out["blocks.1.0.conv_pw.weight"] is sd["_blocks.1._expand_conv.weight"]  # later stages: inverted residual
    assert out["blocks.6.0.conv_pwl.weight"] is sd["_blocks.15._project_conv.weight"]  # last of 16 flat blocks
    assert out["bn2.weight"] is sd["_bn1.weight"] and out["classifier.bias"] is sd["_fc.bias"]
    assert set(out) == set(timm.create_model("tf_efficientnet_lite0").state_dict())


def test_lite0_recognises_real_photos(lite0):
    skdata = pytest.importorskip("skimage.data")
    tf = eval_transform(lite0.view)
    x = torch.stack([tf(Image.fromarray(skdata.coffee())), tf(Image.fromarray(skdata.chelsea()))])
    top5 = lite0(x)["logits"].topk(5).indices.tolist()
    assert {967, 968} & set(top5[0]), [lite0.class_names[i] for i in top5[0]]  # espresso, cup
    assert set(range(281, 286)) & set(top5[1]), [lite0.class_names[i] for i in top5[1]]  # domestic cats
    assert lite0.class_names[967] == "espresso"


def test_lite0_contract(lite0):
    assert lite0.view == ViewSpec(224, (0.5,) * 3, (0.5,) * 3, "bicubic", 1.0)
    assert (lite0.embed_dim, lite0.num_classes, lite0.logit_scale) == (1280, 1000, 1.0)
    assert len(lite0.class_names) == 1000
    assert lite0.fingerprint == make_fingerprint("tf_efficientnet_lite0", file_sha256(lite0_weights_path()), lite0.view)
    assert lite0.device == torch.device("cpu")
    with pytest.raises(EdgeDistillError, match="no text encoder"):
        lite0.encode_text(["a cat"])


def test_teacher_is_frozen_and_outputs_are_autograd_safe(lite0):
    wrapper = torch.nn.Sequential(lite0)
    wrapper.train()  # a parent's train() (e.g. Lightning's) must not unfreeze BN
    assert not lite0.training and not lite0.model.training
    assert not any(p.requires_grad for p in lite0.parameters())
    x = torch.randn(2, 3, 64, 64)
    a, b = lite0(x)["embedding"], lite0(x)["embedding"]
    torch.testing.assert_close(a, b)  # eval-mode BN: deterministic
    assert a.dtype == torch.float32 and not a.requires_grad
    student = torch.randn(2, 1280, requires_grad=True)
    torch.nn.functional.mse_loss(student, a).backward()  # target saved for backward: no inference tensor
    assert student.grad is not None


def test_fingerprint_depends_on_each_part():
    v = ViewSpec(96, (0.5,) * 3, (0.5,) * 3)
    base = make_fingerprint("m", "abc", v)
    assert len(base) == 64 and base == make_fingerprint("m", "abc", ViewSpec(96, [0.5] * 3, [0.5] * 3))
    assert base != make_fingerprint("m2", "abc", v)
    assert base != make_fingerprint("m", "abd", v)
    assert base != make_fingerprint("m", "abc", ViewSpec(128, (0.5,) * 3, (0.5,) * 3))


def test_openclip_tiny_random_init(tiny_clip_name):
    t = oc.create_openclip_teacher(tiny_clip_name, None)
    cfg = t.model.visual.preprocess_cfg
    assert t.view.image_size == 32 and t.view.mean == tuple(cfg["mean"]) and t.view.std == tuple(cfg["std"])
    assert t.view.crop_pct < 1.0 and int(32 / t.view.crop_pct) == 32  # CLIP: short side to 32, center-crop 32
    assert t.embed_dim == 32 and t.num_classes is None and t.class_names is None
    assert t.logit_scale == pytest.approx(float(t.model.logit_scale.exp()))
    x = torch.randn(3, 3, 32, 32)
    out = t(x)
    assert set(out) == {"embedding"} and out["embedding"].shape == (3, 32)
    with torch.no_grad():
        torch.testing.assert_close(out["embedding"], t.model.encode_image(x))
    txt = t.encode_text(["a cat", "a dog", "an airplane"])
    assert txt.shape == (3, 32) and txt.dtype == torch.float32
    t.train()
    assert not t.model.training and not any(p.requires_grad for p in t.parameters())
    assert t.fingerprint == make_fingerprint(tiny_clip_name, state_dict_sha256(t.model), t.view)


def test_openclip_checkpoint_through_open_clip_loader(tiny_clip_name, tmp_path):
    src = open_clip.create_model(tiny_clip_name)
    path = tmp_path / "tiny.pt"
    torch.save(src.state_dict(), path)
    t = create_teacher(TeacherConfig(kind="openclip", model=tiny_clip_name, pretrained=str(path), device="cpu", batch_size=7))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(t(x)["embedding"], src.eval().encode_image(x))
    assert t.fingerprint == make_fingerprint(tiny_clip_name, file_sha256(path), t.view)
    assert t.batch_size == 7


def test_openclip_unknown_model_and_tag(tiny_clip_name, tmp_path):
    with pytest.raises(ConfigError, match="ViT-B-33"):
        oc.create_openclip_teacher("ViT-B-33", "laion2b_s34b_b79k")
    with pytest.raises(WeightsNotFoundError, match="nope"):
        oc.create_openclip_teacher(tiny_clip_name, "nope")
    with pytest.raises(WeightsNotFoundError, match="missing.pt"):
        oc.create_openclip_teacher(tiny_clip_name, str(tmp_path / "missing.pt"))


def test_openclip_tag_unreachable_hub_fails_fast(tmp_path, monkeypatch):
    # Not cached (empty cache dir) and the hub probe fails: one clear error, no download retries.
    monkeypatch.setattr(oc, "_hub_reachable", lambda timeout=3.0: False)
    start = time.monotonic()
    with pytest.raises(WeightsNotFoundError, match="unreachable.*teacher.pretrained="):
        oc.create_openclip_teacher("ViT-B-32", "laion2b_s34b_b79k", cache_dir=str(tmp_path))
    assert time.monotonic() - start < 10


def test_openclip_tag_with_hf_hub_offline_fails_fast(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path), "EDGEDISTILL_NO_PROGRESS": "1"}
    code = (
        "from edgedistill.config import TeacherConfig\n"
        "from edgedistill.teachers import create_teacher\n"
        "from edgedistill.errors import WeightsNotFoundError\n"
        "try:\n    create_teacher(TeacherConfig(kind='openclip', device='cpu'))\n"
        "except WeightsNotFoundError as e:\n    print('ERR', e)\n"
    )
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - start
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("ERR")]
    assert line and "HF_HUB_OFFLINE" in line[0] and "ViT-B-32/laion2b_s34b_b79k" in line[0], proc.stdout + proc.stderr
    assert elapsed < 45, elapsed  # mostly interpreter + torch import; hub retries would add about a minute


def test_timm_teacher_from_local_checkpoint(tmp_path):
    src = timm.create_model("resnet10t", num_classes=1000).eval()
    path = tmp_path / "r10.pth"
    torch.save(src.state_dict(), path)
    t = create_teacher(TeacherConfig(kind="timm", model="resnet10t", pretrained=str(path), image_size=64, device="cpu"))
    assert t.view.image_size == 64 and t.view.crop_pct == pytest.approx(src.pretrained_cfg["crop_pct"])
    x = torch.randn(2, 3, 64, 64)
    out = t(x)
    with torch.no_grad():
        torch.testing.assert_close(out["logits"], src(x), atol=1e-4, rtol=1e-4)
    assert out["embedding"].shape == (2, src.num_features) and t.class_names[281].startswith("tabby")


def test_timm_teacher_errors(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="pretrained"):
        create_teacher(TeacherConfig(kind="timm", model="resnet10t", pretrained=None, device="cpu"))
    with pytest.raises(WeightsNotFoundError, match="missing.pth"):
        create_teacher(TeacherConfig(kind="timm", model="resnet10t", pretrained=str(tmp_path / "missing.pth"), device="cpu"))
    with pytest.raises(ConfigError, match="resnet19"):
        create_teacher(TeacherConfig(kind="timm", model="resnet19", pretrained=str(tmp_path / "x.pth"), device="cpu"))
    with pytest.raises(WeightsNotFoundError, match="missing.pth"):
        create_teacher(TeacherConfig(kind="efficientnet_lite0", pretrained=str(tmp_path / "missing.pth"), device="cpu"))


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="tpu"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_lite0_on_gpu_mixed_precision_matches_cpu(lite0):
    x = _golden_input()
    gpu = create_teacher(TeacherConfig(kind="efficientnet_lite0", device="cuda"))
    out = gpu(x)
    assert out["logits"].dtype == torch.float32 and out["logits"].device.type == "cuda"
    np.testing.assert_allclose(out["logits"].cpu().numpy(), lite0(x)["logits"].numpy(), atol=0.15)
