"""Zero-shot head: a CLIP teacher's text embeddings of class prompts; ``logits = logit_scale * cos(image, class)``."""

from __future__ import annotations

from typing import Any, Sequence

import open_clip
import torch.nn.functional as F
from torch import Tensor, nn

from edgedistill.errors import ConfigError, EdgeDistillError
from edgedistill.registry import TEMPLATES

def _article(c: str) -> str:
    return f"{'an' if c[:1].lower() in 'aeiou' else 'a'} {c}"


TUTORIAL_TEMPLATES = (_article,)
"""The reference tutorial's single prompt: "a {c}" / "an {c}" by the class name's first letter."""


def prompt_templates(templates: str) -> Sequence:
    """The prompt templates of a named set (``registry.TEMPLATES``), as open_clip's ``build_zero_shot_classifier``
    takes them.

    Args:
        templates: ``ensemble``: open_clip's OPENAI_IMAGENET_TEMPLATES (80 prompts, "a photo of a {c}." ...);
            ``simple``: SIMPLE_IMAGENET_TEMPLATES (7 prompts); ``tutorial``: :data:`TUTORIAL_TEMPLATES`; or any
            set a plugin registered.

    Raises:
        ConfigError: an unknown set (the valid ones listed).
    """
    return TEMPLATES[templates]


class TextHead(nn.Module):
    """Zero-shot classifier: scaled cosine similarity to per-class text embeddings.

    Args:
        text_embeddings: ``[C, D]`` class embeddings (normalised here).
        logit_scale: The CLIP teacher's ``exp(logit_scale)`` (about 100).
    """

    kind = "text"
    reads = "embedding"
    needs_labels = False
    title = "zero-shot text head"

    @classmethod
    def fits(cls, teacher: Any) -> bool:
        """Any teacher with a text tower (CLIP)."""
        return bool(getattr(teacher, "has_text", False))

    @classmethod
    def build(cls, ctx: Any) -> TextHead:
        """The class prompts (``ctx.templates``) embedded by ``ctx.teacher``'s text tower."""
        return build_text_head(ctx.teacher, ctx.classes, ctx.templates)

    def __init__(self, text_embeddings: Tensor, logit_scale: float) -> None:
        super().__init__()
        self.register_buffer("text_embeddings", F.normalize(text_embeddings.detach().float().clone(), dim=-1))
        self.logit_scale = float(logit_scale)

    @property
    def num_classes(self) -> int:
        return int(self.text_embeddings.shape[0])

    def forward(self, emb: Tensor) -> Tensor:
        """``emb [B, D]`` -> logits ``[B, C] = logit_scale * cos(emb, text_embeddings)``."""
        return self.logit_scale * F.normalize(emb.float(), dim=-1) @ self.text_embeddings.T

    def arguments(self) -> dict[str, Any]:
        """Constructor arguments besides the tensors (saved in the head's JSON)."""
        return {"logit_scale": self.logit_scale, "num_classes": self.num_classes}

    @classmethod
    def from_saved(cls, args: dict[str, Any], tensors: dict[str, Tensor]) -> TextHead:
        return cls(tensors["text_embeddings"], args["logit_scale"])


class _TextTower:
    """The two callables ``open_clip.build_zero_shot_classifier`` needs, over any text-capable Teacher."""

    def __init__(self, teacher) -> None:
        self.teacher = teacher

    def tokenizer(self, texts: list[str]) -> _Texts:
        return _Texts(texts)

    def encode_text(self, texts: _Texts, normalize: bool = False) -> Tensor:
        emb = self.teacher.encode_text(list(texts))  # [N, D]
        return F.normalize(emb, dim=-1) if normalize else emb


class _Texts(list):
    """A list of strings that survives ``tokenizer(texts).to(device)`` inside open_clip (the teacher tokenizes)."""

    def to(self, device) -> _Texts:
        return self


def build_text_head(teacher, class_names: Sequence[str], templates: str = "ensemble") -> TextHead:
    """Zero-shot head from a CLIP teacher: per class, the normalised mean of its normalised prompt embeddings.

    Uses ``open_clip.build_zero_shot_classifier`` (prompts -> normalise -> average -> normalise).

    Args:
        teacher: A Teacher with a text tower (``teacher.encode_text``).
        class_names: The C target class names; underscores become spaces in prompts.
        templates: ``ensemble`` (80 OpenAI prompts), ``simple`` (7) or ``tutorial`` ("a {c}" / "an {c}").

    Returns:
        A TextHead with ``[C, D]`` embeddings (on CPU) and the teacher's logit scale.

    Raises:
        EdgeDistillError: The teacher has no text encoder.
    """
    if not getattr(teacher, "has_text", False):
        raise EdgeDistillError(
            f"Teacher {getattr(teacher, 'name', teacher)!r} has no text encoder, so no text head; "
            "use head=label_map or head=linear"
        )
    if not class_names:
        raise ConfigError("build_text_head needs at least one class name")
    tower = _TextTower(teacher)
    weights = open_clip.build_zero_shot_classifier(
        tower, tower.tokenizer, [c.replace("_", " ") for c in class_names], prompt_templates(templates),
        num_classes_per_batch=10,
    )  # [D, C]
    return TextHead(weights.T.cpu(), teacher.logit_scale)
