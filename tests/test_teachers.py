"""Teachers: the Lite0 key remap against an independent reference, real photos, tiny OpenCLIP, weights, errors."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import huggingface_hub
import numpy as np
import open_clip
import pytest
import timm
import torch
from huggingface_hub import constants as hf_constants
from PIL import Image

from conftest import TINY, tiny_teacher_cfg
from edgedistill.config import TeacherConfig
from edgedistill.data.transforms import eval_transform
from edgedistill.data.views import ViewSpec, preprocess
from edgedistill.errors import ConfigError, EdgeDistillError, WeightsNotFoundError
from edgedistill.teachers import TEACHERS, Teacher, create_teacher, make_fingerprint, register_teacher, resolve_device
from edgedistill.teachers import openclip as oc
from edgedistill.teachers.base import file_sha256, state_dict_sha256
from edgedistill.teachers.imagenet import lite0_weights_path, remap_lite0_state_dict

VIT_B_32_TAG = "laion2b_s34b_b79k"
VIT_B_32_REPO = "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"


@pytest.fixture(scope="module")
def lite0() -> Teacher:
    return create_teacher(TeacherConfig(kind="efficientnet_lite0", device="cpu"))


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
    assert lite0.view == ViewSpec(224, (0.5,) * 3, (0.5,) * 3, "bicubic", "squash")
    assert lite0.name == "tf_efficientnet_lite0"
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


def test_openclip_tiny_random_init():
    t = create_teacher(tiny_teacher_cfg())
    cfg = t.model.visual.preprocess_cfg
    assert t.view == oc.view_from_preprocess_cfg(cfg)
    assert t.view.image_size == 32 and t.view.mean == tuple(cfg["mean"]) and t.view.std == tuple(cfg["std"])
    assert (t.view.resize_mode, t.view.crop_pct) == ("shortest", 1.0)  # open_clip's default: short side to 32, crop 32
    assert t.embed_dim == 32 and t.num_classes is None and t.class_names is None and t.name == TINY
    assert t.logit_scale == pytest.approx(float(t.model.logit_scale.exp())) and t.batch_size == 16
    x = torch.randn(3, 3, 32, 32)
    out = t(x)
    assert set(out) == {"embedding"} and out["embedding"].shape == (3, 32)
    with torch.no_grad():
        torch.testing.assert_close(out["embedding"], t.model.encode_image(x))
    txt = t.encode_text(["a cat", "a dog", "an airplane"])
    assert txt.shape == (3, 32) and txt.dtype == torch.float32
    t.train()
    assert not t.model.training and not any(p.requires_grad for p in t.parameters())
    assert t.fingerprint == make_fingerprint(TINY, state_dict_sha256(t.model), t.view)


def test_random_init_teachers_are_seeded_and_leave_the_global_rng_alone():
    torch.manual_seed(1)
    a = create_teacher(tiny_teacher_cfg())
    after_a = torch.rand(3)
    torch.manual_seed(2)
    b = create_teacher(tiny_teacher_cfg())
    assert a.fingerprint == b.fingerprint  # same weights whatever the caller's RNG state (and in every process)
    for (k, va), (_, vb) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(va, vb), k
    torch.manual_seed(1)
    assert torch.equal(torch.rand(3), after_a)  # building a teacher did not consume the caller's random stream


def test_openclip_checkpoint_through_open_clip_loader(tmp_path):
    src = open_clip.create_model(TINY)
    path = tmp_path / "tiny.pt"
    torch.save(src.state_dict(), path)
    t = create_teacher(tiny_teacher_cfg(pretrained=str(path), batch_size=7))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(t(x)["embedding"], src.eval().encode_image(x))
    assert t.fingerprint == make_fingerprint(TINY, file_sha256(path), t.view)
    assert t.batch_size == 7


def test_openclip_unknown_model_and_tag(tmp_path):
    with pytest.raises(ConfigError, match="ViT-B-33"):
        oc.create_openclip_teacher("ViT-B-33", VIT_B_32_TAG)
    with pytest.raises(WeightsNotFoundError, match="nope"):
        oc.create_openclip_teacher(TINY, "nope")
    with pytest.raises(WeightsNotFoundError, match="missing.pt"):
        oc.create_openclip_teacher(TINY, str(tmp_path / "missing.pt"))
    with pytest.raises(ConfigError, match=f"teacher.pretrained is unset and {TINY} has no default tag.*'random'"):
        create_teacher(tiny_teacher_cfg(pretrained=None))


# ---------------------------------------------------------------------------------------------
# OpenCLIP weights: the Hugging Face cache first, the hub only if it answers, never a patched constant
# ---------------------------------------------------------------------------------------------


def _hf_constants() -> dict:
    return {k: getattr(hf_constants, k) for k in dir(hf_constants) if k.isupper()}


def _fake_hf_cache(cache: Path, repo: str, files: dict[str, bytes], commit: str = "0123456789abcdef" * 2 + "01234567") -> Path:
    """huggingface_hub's cache layout: ``models--org--name/refs/main`` -> ``snapshots/<commit>/<file>``."""
    base = cache / f"models--{repo.replace('/', '--')}"
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(commit)
    snap = base / "snapshots" / commit
    snap.mkdir(parents=True)
    for name, data in files.items():
        (snap / name).write_bytes(data)
    return snap


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to reach the hub (probe, download, socket) fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network used: {args} {kwargs}")

    monkeypatch.setattr(oc, "_hub_reachable", refuse)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)
    monkeypatch.setattr(open_clip, "download_pretrained", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.parametrize("offline", [False, True])
def test_resolve_weights_uses_the_hf_cache_without_network(tmp_path, monkeypatch, no_network, offline):
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", offline)
    before = _hf_constants()
    tag_cfg = open_clip.get_pretrained_cfg("ViT-B-32", VIT_B_32_TAG)
    snap = _fake_hf_cache(tmp_path / "hub", VIT_B_32_REPO, {"open_clip_pytorch_model.bin": b"bin weights"})
    path = oc.resolve_weights("ViT-B-32", VIT_B_32_TAG, tag_cfg, cache_dir=str(tmp_path / "hub"))
    assert path == snap / "open_clip_pytorch_model.bin"
    (snap / "open_clip_model.safetensors").write_bytes(b"safetensors weights")  # preferred when both are cached
    assert oc.resolve_weights("ViT-B-32", VIT_B_32_TAG, tag_cfg, str(tmp_path / "hub")) == snap / "open_clip_model.safetensors"
    assert _hf_constants() == before
    # A tag naming its own file (``org/model/file.bin``) looks for that file and its safetensors twin.
    snap2 = _fake_hf_cache(tmp_path / "hub", "org/model", {"weights.bin": b"w"})
    assert oc.resolve_weights("M", "t", {"hf_hub": "org/model/weights.bin"}, str(tmp_path / "hub")) == snap2 / "weights.bin"
    assert oc.resolve_weights("M", "t", {"file": "/some/where.pt"}) == Path("/some/where.pt")


def test_resolve_weights_offline_one_line_error_without_touching_constants(tmp_path, monkeypatch, no_network):
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)  # as HF_HUB_OFFLINE=1 sets it at import
    before = _hf_constants()
    tag_cfg = open_clip.get_pretrained_cfg("ViT-B-32", VIT_B_32_TAG)
    with pytest.raises(WeightsNotFoundError) as err:
        oc.resolve_weights("ViT-B-32", VIT_B_32_TAG, tag_cfg, cache_dir=str(tmp_path / "empty"))
    msg = str(err.value)
    assert "\n" not in msg and "ViT-B-32/laion2b_s34b_b79k" in msg and "HF_HUB_OFFLINE is set" in msg
    assert "teacher.pretrained=" in msg
    assert _hf_constants() == before and hf_constants.HF_HUB_OFFLINE is True


def test_resolve_weights_unreachable_hub_fails_fast_and_leaves_constants(tmp_path, monkeypatch):
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    before = _hf_constants()
    downloads = []
    monkeypatch.setattr(oc, "_hub_reachable", lambda timeout=3.0: False)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: downloads.append(a))
    tag_cfg = open_clip.get_pretrained_cfg("ViT-B-32", VIT_B_32_TAG)
    with pytest.raises(WeightsNotFoundError, match="not in the local cache and the Hugging Face hub is unreachable"):
        oc.resolve_weights("ViT-B-32", VIT_B_32_TAG, tag_cfg, cache_dir=str(tmp_path))
    with pytest.raises(WeightsNotFoundError, match="only available by URL"):
        oc.resolve_weights("RN50", "x", {"url": "https://example.invalid/RN50.pt"}, cache_dir=str(tmp_path))
    assert downloads == [] and _hf_constants() == before  # nothing was switched to offline behind the caller's back


def test_resolve_weights_downloads_when_the_hub_answers(tmp_path, monkeypatch):
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(oc, "_hub_reachable", lambda timeout=3.0: True)
    calls = []

    def download(repo, filename, cache_dir=None):
        calls.append((repo, filename, cache_dir))
        if filename.endswith(".safetensors"):
            raise huggingface_hub.errors.EntryNotFoundError("no safetensors in this repo")
        return str(tmp_path / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    tag_cfg = open_clip.get_pretrained_cfg("ViT-B-32", VIT_B_32_TAG)
    assert oc.resolve_weights("ViT-B-32", VIT_B_32_TAG, tag_cfg, "cache") == tmp_path / "open_clip_pytorch_model.bin"
    assert calls == [(VIT_B_32_REPO, "open_clip_model.safetensors", "cache"), (VIT_B_32_REPO, "open_clip_pytorch_model.bin", "cache")]
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: (_ for _ in ()).throw(OSError("reset")))
    with pytest.raises(WeightsNotFoundError, match=r"download failed \(open_clip_model.safetensors: OSError; open_clip_pytorch_model.bin: OSError\)"):
        oc.resolve_weights("ViT-B-32", VIT_B_32_TAG, tag_cfg, "cache")


def test_openclip_tag_from_the_hf_cache_end_to_end(tmp_path, monkeypatch, no_network):
    # A pretrained tag of the tiny model, its weights only in a (fake) Hugging Face cache: loaded offline,
    # with the tag's preprocessing (resize_mode longest here) carried into the teacher's view.
    src = open_clip.create_model(TINY).eval()
    tag = "edgedistill-test-tag"
    tag_cfg = {"hf_hub": "edgedistill/tiny-test/", "mean": (0.5, 0.4, 0.3), "std": (0.2, 0.25, 0.3),
               "interpolation": "bilinear", "resize_mode": "longest", "fill_color": 9}
    real_cfg, real_tags = open_clip.get_pretrained_cfg, open_clip.list_pretrained_tags_by_model
    monkeypatch.setattr(open_clip, "get_pretrained_cfg", lambda m, t: tag_cfg if (m, t) == (TINY, tag) else real_cfg(m, t))
    monkeypatch.setattr(open_clip, "list_pretrained_tags_by_model", lambda m: [tag] if m == TINY else real_tags(m))
    snap = _fake_hf_cache(tmp_path / "hub", "edgedistill/tiny-test", {})
    torch.save(src.state_dict(), snap / "open_clip_pytorch_model.bin")
    before = _hf_constants()
    t = oc.create_openclip_teacher(TINY, tag, cache_dir=str(tmp_path / "hub"))
    assert t.view == ViewSpec(32, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3), "bilinear", "longest", fill=9)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(t(x)["embedding"], src.encode_image(x))
    assert t.fingerprint == make_fingerprint(TINY, file_sha256(snap / "open_clip_pytorch_model.bin"), t.view)
    assert _hf_constants() == before


def test_openclip_tag_unreachable_hub_fails_fast(tmp_path, monkeypatch):
    # Not cached (empty cache dir) and the hub probe fails: one clear error, no download retries.
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(oc, "_hub_reachable", lambda timeout=3.0: False)
    start = time.monotonic()
    with pytest.raises(WeightsNotFoundError, match="unreachable.*teacher.pretrained="):
        oc.create_openclip_teacher("ViT-B-32", VIT_B_32_TAG, cache_dir=str(tmp_path))
    assert time.monotonic() - start < 10


@pytest.mark.slow
def test_openclip_tag_with_hf_hub_offline_fails_fast(tmp_path):
    # The real environment variable, in a fresh process: the default teacher (ViT-B-32 + its default tag).
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path), "EDGEDISTILL_NO_PROGRESS": "1"}
    code = (
        "from huggingface_hub import constants\n"
        "from edgedistill.config import TeacherConfig\n"
        "from edgedistill.teachers import create_teacher\n"
        "from edgedistill.errors import WeightsNotFoundError\n"
        "try:\n    create_teacher(TeacherConfig(kind='openclip', device='cpu'))\n"
        "except WeightsNotFoundError as e:\n    print('ERR', e)\n"
        "print('OFFLINE', constants.HF_HUB_OFFLINE)\n"
    )
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - start
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("ERR")]
    assert len(line) == 1 and "HF_HUB_OFFLINE" in line[0] and "ViT-B-32/laion2b_s34b_b79k" in line[0], proc.stdout + proc.stderr
    assert "OFFLINE True" in proc.stdout
    assert elapsed < 45, elapsed  # mostly interpreter + torch import; hub retries would add about a minute


# ---------------------------------------------------------------------------------------------
# timm teachers
# ---------------------------------------------------------------------------------------------


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


def test_timm_teacher_view_equals_timm_eval_transform(tmp_path):
    from timm.data import create_transform, resolve_data_config

    src = timm.create_model("mobilenetv3_small_050", num_classes=1000).eval()
    path = tmp_path / "m.pth"
    torch.save(src.state_dict(), path)
    t = create_teacher(TeacherConfig(kind="timm", model="mobilenetv3_small_050", pretrained=str(path), device="cpu"))
    data_cfg = resolve_data_config({}, model=src)
    assert data_cfg["crop_pct"] == 0.875 and data_cfg["crop_mode"] == "center"
    assert (t.view.image_size, t.view.resize_mode, t.view.crop_pct) == (224, "shortest", 0.875)
    reference = create_transform(**data_cfg)  # timm's eval transform: short side to 256, center crop 224
    for k, (w, h) in enumerate([(300, 200), (190, 257)]):
        img = Image.fromarray(np.random.default_rng(k).integers(0, 256, (h, w, 3), dtype=np.uint8))
        np.testing.assert_allclose(preprocess(img, t.view), reference(img).numpy(), atol=1e-6, rtol=0)
    # With teacher.image_size, the same rule at the new size.
    small = create_teacher(TeacherConfig(kind="timm", model="mobilenetv3_small_050", pretrained=str(path),
                                         image_size=96, device="cpu"))
    img = Image.fromarray(np.random.default_rng(5).integers(0, 256, (70, 130, 3), dtype=np.uint8))
    reference = create_transform(**{**data_cfg, "input_size": (3, 96, 96)})
    np.testing.assert_allclose(preprocess(img, small.view), reference(img).numpy(), atol=1e-6, rtol=0)


def test_teacher_config_describe_and_validation():
    assert TeacherConfig(kind="efficientnet_lite0").describe() == "efficientnet_lite0:tf_efficientnet_lite0"
    assert TeacherConfig().describe() == "openclip:ViT-B-32"
    assert TeacherConfig(kind="timm", model="resnet50").describe() == "timm:resnet50"
    assert TeacherConfig(kind="openclip", model=TINY).describe() == f"openclip:{TINY}"
    with pytest.raises(ConfigError, match=r"teacher.image_size=0 is invalid; it must be >= 1"):
        TeacherConfig(image_size=0)
    with pytest.raises(ConfigError, match=r"teacher.batch_size=0 is invalid"):
        TeacherConfig(batch_size=0)
    with pytest.raises(ConfigError, match=r"teacher.kind='clip' is invalid; valid: openclip, timm, efficientnet_lite0"):
        TeacherConfig(kind="clip")
    with pytest.raises(ConfigError, match="teacher.kind=timm needs teacher.model"):
        create_teacher(TeacherConfig(kind="timm", pretrained="x.pth", device="cpu"))
    with pytest.raises(ConfigError, match="pretrained='random' is for open_clip"):
        create_teacher(TeacherConfig(kind="efficientnet_lite0", pretrained="random", device="cpu"))


def test_teacher_registry():
    assert set(TEACHERS) >= {"openclip", "timm", "efficientnet_lite0"}
    with pytest.raises(ConfigError, match="already registered"):
        register_teacher("timm", lambda cfg, device: None)


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    for cuda in (False, True):  # both worlds, whatever this machine has
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(torch.cuda, "is_available", lambda cuda=cuda: cuda)
            assert resolve_device("auto") == torch.device("cuda" if cuda else "cpu")
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
