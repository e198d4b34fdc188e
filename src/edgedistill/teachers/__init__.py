"""Teachers: frozen networks mapping normalised images ``[B, 3, H, W]`` to ``{"embedding", "logits"}``.

See docs/design.md, "teachers/". ``create_teacher`` is the one entry point; each kind of
``TeacherConfig.kind`` is an entry of ``registry.TEACHERS`` (module imported only when used,
since open_clip alone takes seconds to import). A new kind is its module plus one line there,
or ``register_teacher(kind, factory)`` from a plugin.
"""

from __future__ import annotations

from typing import Callable

import torch

from edgedistill.config import DEFAULT_CACHE_DIR, TeacherConfig
from edgedistill.registry import TEACHERS
from edgedistill.teachers.base import OnnxRuntimeTeacher, Teacher, make_fingerprint, resolve_device

__all__ = ["TEACHERS", "Teacher", "create_teacher", "make_fingerprint", "register_teacher", "resolve_device"]

TeacherFactory = Callable[[TeacherConfig, torch.device], Teacher]


def register_teacher(kind: str, factory: TeacherFactory) -> None:
    """Add a teacher kind (``registry.TEACHERS``). Raises ConfigError if ``kind`` is taken."""
    TEACHERS.register(kind, factory)


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
        teacher = TEACHERS[cfg.kind](cfg, device)
    teacher.batch_size = cfg.batch_size
    teacher = teacher.to(device)
    if cfg.runtime == "onnxruntime":
        teacher = OnnxRuntimeTeacher(teacher, cache_dir)
    return teacher
