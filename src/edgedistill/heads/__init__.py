"""Heads: turn teacher outputs (or an embedding student's output) into class scores for the target classes.

* ``text``: zero-shot, from a CLIP teacher's text embeddings of class prompts (``heads.text``);
* ``label_map``: an ImageNet classifier's probabilities summed per target class (``heads.label_map``);
* ``linear``: a probe fitted on cached teacher embeddings, chosen on ``val`` (``heads.probe``).

A head kind is its class plus one line of ``registry.HEADS``. The class says everything the
rest of the package asks of a head (the head protocol)::

    kind: str                      # its registry name, also written in its saved JSON
    reads: "embedding" | "logits"  # the teacher output it maps to class scores: the one home of that rule
    needs_labels: bool             # fitted on labelled images instead of built (the linear probe, which
                                   # evaluate fits; a plugin's heads are built from the teacher: False)
    title: str                     # how reports name it ("zero-shot text head")
    source: str | None             # optional: what train.head_path means when it is not a saved head
    fits(teacher) -> bool          # whether this teacher can feed it
    build(ctx: HeadContext)        # a head for ctx.classes, from the teacher / its source
    num_classes, arguments(), from_saved(args, tensors)   # saving and loading (below)

Zero-label retrieval (``retrieve``) scores prompts with the text or label-map head only (it builds them from
the prompts' names and synonyms).

Every head saves as ``<path>.safetensors`` (tensors) + ``<path>.json`` (a versioned manifest:
kind, constructor arguments, extra fields) and loads back with :func:`load_head`. Nothing is
unpickled. :func:`build_head` is the one place a head is made from a config, and
:func:`zero_shot_kind` the one place a teacher's zero-shot head is chosen.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from torch import nn

from edgedistill import storage
from edgedistill.errors import ConfigError
from edgedistill.heads.label_map import DEFAULT_LABEL_MAPS, LabelMapHead, default_label_map, load_label_map
from edgedistill.heads.probe import LinearProbe, train_linear_probe
from edgedistill.heads.text import TextHead, build_text_head, prompt_templates
from edgedistill.registry import HEADS

__all__ = ["DEFAULT_LABEL_MAPS", "HEADS", "HeadContext", "LabelMapHead", "LinearProbe", "TextHead", "build_head",
           "build_text_head", "check_head_target", "default_label_map", "head_class", "load_head",
           "load_label_map", "prompt_templates", "save_head", "train_linear_probe", "zero_shot_kind"]


@dataclass
class HeadContext:
    """What a head's ``build`` may use.

    Attributes:
        classes: The target class names (the head must score exactly these).
        dataset: The dataset's name (picks a shipped label map).
        teacher: The teacher (text heads embed the prompts with it); None where no head needs it.
        templates: Prompt templates of a text head (``registry.TEMPLATES``).
        source: The head's own source (``cls.source``: a label map name or JSON path); None: its default.
    """

    classes: Sequence[str]
    dataset: str
    teacher: Any = None
    templates: str = "ensemble"
    source: str | None = None


def head_class(kind: str) -> type[nn.Module]:
    """The class of head ``kind`` (``registry.HEADS``). Raises ConfigError naming the valid kinds."""
    return HEADS[kind]


def zero_shot_kind(teacher: Any) -> str | None:
    """The zero-shot head ``teacher`` gets: the first head of ``registry.HEADS`` that needs no labels and that it can
    feed (``text`` for CLIP, ``label_map`` for ImageNet classifiers); None when there is none."""
    for kind in HEADS:
        cls = HEADS[kind]
        if not cls.needs_labels and cls.fits(teacher):
            return kind
    return None


def check_head_target(kind: str, target: str, flag: str = "train.head") -> None:
    """Refuse a head that cannot serve ``train.target``: an embedding student is classified by a head reading the
    embedding (the student learns the teacher's embedding, not its logits)."""
    if target == "embedding" and head_class(kind).reads != "embedding":
        valid = ", ".join(k for k in HEADS if HEADS[k].reads == "embedding")
        raise ConfigError(f"{flag}={kind!r} is invalid; an embedding student needs a head that reads the teacher's "
                          f"embedding to classify it ({valid})")


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
    if getattr(head, "kind", None) not in HEADS or type(head) is not HEADS[head.kind]:
        raise ConfigError(f"save_head: {type(head).__name__} is not a registered head ({', '.join(HEADS)})")
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
    if not isinstance(kind, str) or kind not in HEADS or not isinstance(meta.get("head"), dict):
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
    """The head of ``kind`` for ``classes``: loaded from ``saved``, or built by its class (``cls.build``).

    Args:
        kind: A name of ``registry.HEADS`` (``text``, ``label_map``, ``linear``, or a plugin's).
        classes: The target class names (the head must score exactly these).
        dataset: The dataset's name (picks the shipped label map).
        teacher: The teacher (text heads embed the prompts with it).
        saved: A head saved by :func:`save_head`; required for heads fitted on labels (``linear``).
        templates: Prompt templates of a text head.
        label_map: The head's own source (``cls.source``; for ``label_map`` a map name or JSON path); None: default.

    Raises:
        ConfigError: an unknown kind, a saved head of another kind, no probe, or a class count mismatch.
    """
    cls = head_class(kind)
    if saved is not None:
        head = load_head(saved)
        if head.kind != kind:
            raise ConfigError(f"{saved!r} holds a {head.kind!r} head, not a {kind!r} head")
    else:
        head = cls.build(HeadContext(list(classes), dataset, teacher, templates, label_map))
    if head.num_classes != len(classes):
        raise ConfigError(f"The {kind} head scores {head.num_classes} classes but dataset {dataset!r} has {len(classes)}")
    return head.requires_grad_(False).eval()
