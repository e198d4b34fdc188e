"""The zero-shot head a prompts file defines: what retrieval scores with and what zero-label students distil.

A CLIP teacher's :class:`TextHead` averages, per class, every term's template-ensembled text embedding;
an ImageNet classifier's :class:`LabelMapHead` matches the names and synonyms to ImageNet classes
(or loads a given label map).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from edgedistill.errors import ConfigError
from edgedistill.heads.label_map import label_map_from_names, load_label_map
from edgedistill.heads.text import TextHead, build_text_head
from edgedistill.prompts import WNID_PATTERN, ClassPrompt, class_names


def prompt_head(
    kind: str,
    prompts: Sequence[ClassPrompt],
    teacher,
    *,
    templates: str = "ensemble",
    label_map: str | None = None,
    max_sense: int = 1,
) -> tuple[Any, dict | None]:
    """The zero-shot head of the prompts' classes: what retrieval scores with and what students distil.

    Args:
        kind: ``text`` (CLIP teachers) or ``label_map`` (ImageNet classifiers).
        prompts: The classes.
        teacher: The teacher (its text tower embeds the terms; its class count is checked for a label map).
        templates: Prompt templates of the text head, applied to every term.
        label_map: A label map name or JSON file; None: built from the names and synonyms (WordNet).
        max_sense: Highest WordNet sense of a term that may match (label map from names).

    Returns:
        ``(head, review)``: a ``TextHead`` (per class: the normalised mean of its terms' template-ensembled
        embeddings) or a ``LabelMapHead``; ``review`` is the label map's reasons when built from names, else None.

    Raises:
        ConfigError: a teacher without text tower or ImageNet-1k logits, a name that matches no ImageNet class.
    """
    names = class_names(prompts)
    if kind == "text":
        terms = [[t for t in c.terms if not WNID_PATTERN.fullmatch(t)] for c in prompts]  # ids are for label maps
        per_term = build_text_head(teacher, [t for ts in terms for t in ts], templates).text_embeddings  # [T, D]
        bounds = np.cumsum([0] + [len(ts) for ts in terms])
        rows = [F.normalize(per_term[a:b].mean(0), dim=-1) for a, b in zip(bounds[:-1], bounds[1:])]  # C x [D]
        return TextHead(torch.stack(rows), teacher.logit_scale), None
    if kind != "label_map":
        raise ConfigError(f"Unknown zero-shot head {kind!r}. Valid: text, label_map")
    if (teacher.num_classes or 0) != 1000:
        raise ConfigError(f"A label map scores ImageNet-1k classes; teacher {getattr(teacher, 'name', teacher)!r} has "
                          f"{teacher.num_classes or 'no'} classes (use a CLIP teacher and the text head)")
    if label_map is not None:
        return load_label_map(label_map, names), None
    return label_map_from_names(names, {c.name: c.synonyms for c in prompts}, max_sense=max_sense)


__all__ = ["prompt_head"]
