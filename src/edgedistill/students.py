"""Student networks: any timm model by name, with a CIFAR-style stem option and local weights.

A student outputs either class logits (``num_outputs = C``) or an embedding of the
teacher's width (``num_outputs = D``, feature distillation), which a frozen teacher head
(``heads.TextHead`` / ``heads.LinearProbe``) turns into class logits.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import timm
from torch import nn

from edgedistill import storage
from edgedistill.config import from_dict
from edgedistill.errors import ConfigError, EdgeDistillError, WeightsNotFoundError

STUDENT_FORMAT = 1


@dataclass
class StudentManifest:
    """``student.json``: everything needed to rebuild and use a trained student (no pickles).

    Attributes:
        arch: timm model name.
        num_outputs: Output width: C (logits) or the teacher's D (embedding students).
        class_names: The C class names, in output order.
        view: Its eval preprocessing (``ViewSpec.to_dict()``).
        target: What it learned: labels, logits or embedding.
        small_input: CIFAR-style stem.
        kwargs: Extra ``timm.create_model`` arguments (e.g. ``channels``).
        head: Embedding students: ``{"kind", "path", "saved"}`` of the head that classifies them.
        teacher: The teacher it was distilled from (kind, model, pretrained, fingerprint, embed_dim, view).
        checkpoint: The Lightning checkpoint the weights came from, relative to the run directory.
        format: Manifest format version.
    """

    arch: str
    num_outputs: int
    class_names: list[str]
    view: dict[str, Any]
    target: str = "labels"
    small_input: bool = False
    kwargs: dict[str, Any] = field(default_factory=dict)
    head: dict[str, Any] | None = None
    teacher: dict[str, Any] | None = None
    checkpoint: str | None = None
    format: int = STUDENT_FORMAT

    def __post_init__(self) -> None:
        if self.format != STUDENT_FORMAT:
            raise EdgeDistillError(f"student manifest format {self.format} is not {STUDENT_FORMAT}; retrain or re-export")
        if self.num_outputs < 1 or not isinstance(self.arch, str):
            raise EdgeDistillError(f"student manifest: arch={self.arch!r}, num_outputs={self.num_outputs!r} are invalid")

    def save(self, path: str | os.PathLike) -> None:
        storage.write_json(path, asdict(self))

    def create(self) -> nn.Module:
        """A fresh student of this manifest's architecture (weights to be loaded into it)."""
        return create_student(self.arch, self.num_outputs, small_input=self.small_input, kwargs=self.kwargs)

    @classmethod
    def load(cls, path: str | os.PathLike) -> StudentManifest:
        """Read and validate ``student.json``; a damaged or foreign file raises one line naming it."""
        data = storage.read_json(path)
        try:
            return from_dict(cls, data, str(path))
        except (ConfigError, EdgeDistillError, TypeError) as e:
            raise EdgeDistillError(f"{path} is not a valid student manifest ({e})") from None


def create_student(
    arch: str,
    num_outputs: int,
    *,
    small_input: bool = False,
    pretrained: str | None = None,
    drop_rate: float = 0.0,
    kwargs: dict[str, Any] | None = None,
) -> nn.Module:
    """Build a timm model as a student.

    Args:
        arch: timm model name (``timm.list_models()``), e.g. ``resnet18``, ``mobilenetv3_small_100``.
        num_outputs: Width of the output: the number of classes (logits) or the teacher's
            embedding width (feature distillation).
        small_input: Replace the stem for small images (CIFAR's 32 px): the first conv becomes
            3x3 stride 1 and the max-pool is removed, so a 32 px image keeps a 4x4 map at the
            last stage instead of 1x1. Implemented for timm ResNets.
        pretrained: Path to a local ImageNet checkpoint of the same architecture (``.pth``,
            ``.bin`` or ``.safetensors``). Loaded non-strictly, without the classifier;
            None trains from scratch. Never downloads.
        drop_rate: Dropout before the classifier.
        kwargs: Extra ``timm.create_model`` arguments, e.g. ``{"channels": (32, 64, 128, 256)}`` for a
            narrow ResNet.

    Returns:
        The model; ``model(x [B, 3, H, W]) -> [B, num_outputs]``.

    Raises:
        ConfigError: Unknown ``arch`` (close matches listed), ``num_outputs < 1``, or
            ``small_input`` on an architecture that does not support it.
        WeightsNotFoundError: ``pretrained`` is not a file, or shares no weights with ``arch``.
    """
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=6, cutoff=0.6)
        hint = f" Close matches: {', '.join(close)}." if close else ""
        raise ConfigError(f"Unknown student arch {arch!r} (not a timm model).{hint} See timm.list_models().")
    if num_outputs < 1:
        raise ConfigError(f"num_outputs={num_outputs} must be >= 1")
    try:
        model = timm.create_model(arch, pretrained=False, num_classes=num_outputs, drop_rate=drop_rate, **(kwargs or {}))
    except TypeError as e:  # an argument the architecture does not take
        raise ConfigError(f"train.student_kwargs={kwargs!r} do not fit student {arch!r}: {e}") from None
    if pretrained is not None:
        _load_backbone(model, arch, pretrained)
    if small_input:
        _small_input_stem(model, arch)
    return model


def _load_backbone(model: nn.Module, arch: str, path: str) -> None:
    """Load ImageNet weights into everything but the classifier (whose shape differs)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise WeightsNotFoundError(f"student pretrained={path!r} is not a file; give a local checkpoint of {arch!r} or null")
    state = timm.models.load_state_dict(str(file))  # handles .safetensors, "state_dict"/"model" wrappers
    classifier = model.pretrained_cfg.get("classifier") or "fc"
    prefixes = tuple(f"{c}." for c in ((classifier,) if isinstance(classifier, str) else classifier))
    own = model.state_dict()
    backbone = {
        k: v for k, v in state.items() if not k.startswith(prefixes) and k in own and own[k].shape == v.shape
    }
    if not backbone:
        raise WeightsNotFoundError(
            f"student pretrained={path!r} shares no weights with {arch!r}; is it a checkpoint of another architecture?"
        )
    model.load_state_dict(backbone, strict=False)


def _small_input_stem(model: nn.Module, arch: str) -> None:
    """CIFAR stem: first conv 3x3 stride 1, no max-pool (He et al. 2016, section 4.2)."""
    if not isinstance(model, timm.models.resnet.ResNet):
        raise ConfigError(
            f"small_input=True is not supported for student {arch!r} ({type(model).__name__}); it is implemented "
            "for timm ResNets (resnet18, resnet34, resnet50, resnet10t, ...). Use small_input=False and a larger image_size."
        )
    if isinstance(model.conv1, nn.Conv2d):
        old = model.conv1
        model.conv1 = nn.Conv2d(old.in_channels, old.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
    else:
        # Deep stems (resnet*d / *t: three 3x3 convs) keep their convs; only the first stride goes.
        first = next(m for m in model.conv1.modules() if isinstance(m, nn.Conv2d))
        first.stride = (1, 1)
    model.maxpool = nn.Identity()


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (trainable or not)."""
    return sum(p.numel() for p in model.parameters())


def _student_files(path: Path) -> tuple[Path, Path]:
    if path.is_dir():
        return path / "student.safetensors", path / "student.json"
    if path.suffix == ".safetensors":
        return path, path.with_suffix(".json") if path.with_suffix(".json").exists() else path.with_name("student.json")
    raise EdgeDistillError(
        f"Not a student model: {str(path)!r}. Expected a run directory with student.safetensors + student.json, "
        "or a student .safetensors file with its .json manifest beside it"
    )


def load_student(path: str | os.PathLike) -> tuple[nn.Module, StudentManifest]:
    """Load a trained student from its run directory or ``student.safetensors`` checkpoint.

    Args:
        path: run directory (with ``student.safetensors`` and ``student.json``) or the weights file.

    Returns:
        (model in eval mode mapping [B, 3, H, W] -> [B, num_outputs], its manifest).

    Raises:
        EdgeDistillError: files missing or damaged, or weights that do not fit the manifest (one line each).
    """
    weights, manifest_path = _student_files(Path(path))
    for f in (weights, manifest_path):
        if not f.is_file():
            raise EdgeDistillError(f"Student file {str(f)!r} does not exist; a student needs student.safetensors + student.json")
    manifest = StudentManifest.load(manifest_path)
    model = manifest.create()
    state = storage.load_safetensors(weights)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise EdgeDistillError(f"{weights} does not fit the {manifest.arch} student of {manifest_path.name} "
                               f"({str(e).splitlines()[0][:200]})") from None
    return model.eval(), manifest


__all__ = ["StudentManifest", "count_parameters", "create_student", "load_student"]
