"""Heads: turn teacher outputs (or an embedding student's output) into class scores for the target classes.

* ``text``: zero-shot, from a CLIP teacher's text embeddings of class prompts (``heads.text``);
* ``label_map``: an ImageNet classifier's probabilities summed per target class (``heads.label_map``);
* ``linear``: a probe fitted on cached teacher embeddings, chosen on ``val`` (``heads.probe``).

Every head saves as ``<path>.safetensors`` (tensors) + ``<path>.json`` (a versioned manifest:
kind, constructor arguments, extra fields) and loads back with :func:`load_head`. Nothing is
unpickled. :func:`build_head` is the one place a head is made from a config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from torch import nn

from edgedistill import storage
from edgedistill.errors import ConfigError
from edgedistill.heads.label_map import DEFAULT_LABEL_MAPS, LabelMapHead, default_label_map, load_label_map
from edgedistill.heads.probe import LinearProbe, train_linear_probe
from edgedistill.heads.text import TextHead, build_text_head, prompt_templates

__all__ = ["DEFAULT_LABEL_MAPS", "HEADS", "LabelMapHead", "LinearProbe", "TextHead", "build_head", "build_text_head",
           "default_label_map", "load_head", "load_label_map", "prompt_templates", "save_head",
           "train_linear_probe"]

HEADS: dict[str, type[nn.Module]] = {"text": TextHead, "label_map": LabelMapHead, "linear": LinearProbe}
"""Head kind -> class (each has ``kind``, ``num_classes``, ``arguments()`` and ``from_saved(args, tensors)``)."""

HEAD_FORMAT = 1


def _paths(path: str | Path) -> tuple[Path, Path]:
    path = Path(path).expanduser()
    base = path.with_suffix("") if path.suffix in (".json", ".safetensors") else path
    if base.is_dir():
        base = base / "head"
    return base.with_name(base.name + ".json"), base.with_name(base.name + ".safetensors")


def save_head(head: nn.Module, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``<path>.safetensors`` (the head's tensors) and ``<path>.json`` (kind, arguments, ``extra``), atomically.

    Returns:
        The ``.safetensors`` path.
    """
    if type(head) not in HEADS.values():
        raise ConfigError(f"save_head: {type(head).__name__} is not one of {', '.join(c.__name__ for c in HEADS.values())}")
    json_path, tensors_path = _paths(path)
    storage.save_safetensors(tensors_path, dict(head.state_dict()), metadata={"kind": head.kind})
    storage.write_json(json_path, {**(extra or {}), "format": HEAD_FORMAT, "kind": head.kind,
                                   "head": head.arguments(), "tensors": tensors_path.name})
    return tensors_path


def load_head(path: str | Path) -> nn.Module:
    """Load a head written by ``save_head``. ``path`` may be the base, the ``.json``, the ``.safetensors``,
    or a folder holding ``head.{json,safetensors}`` (a training run directory).

    Raises:
        ConfigError: files missing or damaged, or an unknown head kind.
    """
    json_path, tensors_path = _paths(path)
    if not json_path.is_file() or not tensors_path.is_file():
        raise ConfigError(f"No saved head at {str(path)!r}: expected {json_path.name} and {tensors_path.name}")
    meta = storage.read_json(json_path)
    kind = meta.get("kind") if isinstance(meta, dict) else None
    if kind not in HEADS or not isinstance(meta.get("head"), dict):
        raise ConfigError(f"{json_path} is not a saved head (kind {kind!r}; valid: {', '.join(HEADS)})")
    tensors = storage.load_safetensors(tensors_path)
    try:
        head = HEADS[kind].from_saved(meta["head"], tensors)
        head.load_state_dict(tensors, strict=True)
    except (KeyError, RuntimeError, TypeError) as e:
        raise ConfigError(f"Saved head {json_path} does not match its tensors ({type(e).__name__}: {e})") from None
    return head.eval()


def build_head(
    kind: str,
    *,
    classes: Sequence[str],
    dataset: str,
    teacher=None,
    saved: str | None = None,
    templates: str = "ensemble",
    label_map: str | None = None,
) -> nn.Module:
    """The head of ``kind`` for ``classes``: loaded from ``saved``, or built from the teacher / a label map.

    Args:
        kind: ``text``, ``label_map`` or ``linear``.
        classes: The target class names (the head must score exactly these).
        dataset: The dataset's name (picks the shipped label map).
        teacher: The teacher (text heads embed the prompts with it).
        saved: A head saved by :func:`save_head`; required for ``linear``.
        templates: Prompt templates of a text head.
        label_map: Label map name or JSON path; None: :func:`default_label_map`.

    Raises:
        ConfigError: an unknown kind, a saved head of another kind, no probe, or a class count mismatch.
    """
    if kind not in HEADS:
        raise ConfigError(f"Unknown head {kind!r}. Valid: {', '.join(HEADS)}")
    if saved is not None:
        head = load_head(saved)
        if head.kind != kind:
            raise ConfigError(f"{saved!r} holds a {head.kind!r} head, not a {kind!r} head")
    elif kind == "linear":
        raise ConfigError("A linear head needs a probe saved by 'edgedistill teacher' (e.g. runs/teacher/probe)")
    elif kind == "text":
        head = build_text_head(teacher, classes, templates)
    else:
        head = load_label_map(label_map or default_label_map(dataset, classes), classes)
    if head.num_classes != len(classes):
        raise ConfigError(f"The {kind} head scores {head.num_classes} classes but dataset {dataset!r} has {len(classes)}")
    return head.requires_grad_(False).eval()
