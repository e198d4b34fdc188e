"""Teachers: frozen networks mapping normalised images ``[B, 3, H, W]`` to ``{"embedding", "logits"}``.

See docs/design.md, "teachers/". ``create_teacher`` is the one entry point; each kind of
``TeacherConfig.kind`` is an entry of ``TEACHERS`` (module imported only when used, since
open_clip alone takes seconds to import).
"""

from __future__ import annotations

import importlib
from typing import Callable

import torch

from edgedistill.config import DEFAULT_CACHE_DIR, TeacherConfig
from edgedistill.errors import ConfigError
from edgedistill.teachers.base import OnnxRuntimeTeacher, Teacher, make_fingerprint, resolve_device

__all__ = ["TEACHERS", "Teacher", "create_teacher", "make_fingerprint", "register_teacher", "resolve_device"]

TeacherFactory = Callable[[TeacherConfig, torch.device], Teacher]

TEACHERS: dict[str, str | TeacherFactory] = {
    "openclip": "edgedistill.teachers.openclip:openclip_from_config",
    "timm": "edgedistill.teachers.imagenet:timm_from_config",
    "efficientnet_lite0": "edgedistill.teachers.imagenet:lite0_from_config",
}
"""``TeacherConfig.kind`` -> factory (or its ``module:function`` path)."""


def register_teacher(kind: str, factory: TeacherFactory) -> None:
    """Add a teacher kind. Raises ConfigError if ``kind`` is taken."""
    if kind in TEACHERS:
        raise ConfigError(f"Teacher kind {kind!r} is already registered")
    TEACHERS[kind] = factory


def _factory(kind: str) -> TeacherFactory:
    if kind not in TEACHERS:
        raise ConfigError(f"Unknown teacher kind {kind!r}. Valid: {', '.join(TEACHERS)}")
    entry = TEACHERS[kind]
    if isinstance(entry, str):
        module, func = entry.split(":")
        entry = getattr(importlib.import_module(module), func)
    return entry


def create_teacher(cfg: TeacherConfig, cache_dir: str = DEFAULT_CACHE_DIR) -> Teacher:
    """Build the frozen teacher described by ``cfg`` on ``resolve_device(cfg.device)``.

    With ``cfg.runtime="onnxruntime"`` its image tower is exported to ONNX under ``cache_dir``
    (once, parity-checked) and run by ONNX Runtime on the CPU.

    Random-init weights (``pretrained='random'``, tests and benchmarks) are drawn with torch's
    RNG fixed, so every process gets the same teacher (and the same fingerprint).

    Raises:
        ConfigError: Unknown kind, model or device.
        WeightsNotFoundError: Weights that cannot be found locally (or downloaded, for open_clip tags).
    """
    device = resolve_device(cfg.device) if cfg.runtime == "torch" else torch.device("cpu")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        teacher = _factory(cfg.kind)(cfg, device)
    teacher.batch_size = cfg.batch_size
    teacher = teacher.to(device)
    if cfg.runtime == "onnxruntime":
        teacher = OnnxRuntimeTeacher(teacher, cache_dir)
    return teacher
