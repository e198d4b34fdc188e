"""Label-map head: an ImageNet classifier's probabilities summed over the ImageNet classes of each target class.

Maps ship as ``label_maps/<name>.json`` (``{class_name: [ImageNet indices]}``); a dataset
whose classes a shipped map covers uses it by default.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgedistill import storage
from edgedistill.errors import ConfigError

DEFAULT_LABEL_MAPS = {"cifar10": "cifar10", "demo": "cifar10", "stl10": "stl10"}
"""Dataset -> its shipped label map (the one home of this fact)."""


class LabelMapHead(nn.Module):
    """Target class scores from ImageNet logits: ``log(sum of softmax probabilities over the class's group)``.

    Args:
        groups: For each of the C target classes, the teacher class indices it gathers.
        num_teacher_classes: Number of teacher classes (1000 for ImageNet-1k).
    """

    kind = "label_map"

    def __init__(self, groups: list[list[int]], num_teacher_classes: int = 1000) -> None:
        super().__init__()
        if not groups or any(not g for g in groups):
            raise ConfigError("LabelMapHead needs a non-empty list of teacher classes for every target class")
        bad = sorted({i for g in groups for i in g if not 0 <= i < num_teacher_classes})
        if bad:
            raise ConfigError(f"Label map indices {bad} out of range [0, {num_teacher_classes})")
        self.groups = [sorted({int(i) for i in g}) for g in groups]
        self.num_teacher_classes = num_teacher_classes
        mask = torch.full((len(groups), num_teacher_classes), float("-inf"))
        for c, g in enumerate(self.groups):
            mask[c, g] = 0.0
        self.register_buffer("log_mask", mask)  # [C, K]: 0 inside the group, -inf outside

    @property
    def num_classes(self) -> int:
        return len(self.groups)

    def forward(self, teacher_logits: Tensor) -> Tensor:
        """``[B, K]`` teacher logits -> ``[B, C]`` log of summed group probabilities (not renormalised)."""
        logp = F.log_softmax(teacher_logits.float(), dim=-1)  # [B, K]
        return torch.logsumexp(logp[:, None, :] + self.log_mask[None], dim=-1)  # [B, C], stable sum of probs

    def arguments(self) -> dict[str, Any]:
        return {"groups": self.groups, "num_teacher_classes": self.num_teacher_classes}

    @classmethod
    def from_saved(cls, args: dict[str, Any], tensors: dict[str, Tensor]) -> LabelMapHead:
        return cls(args["groups"], args["num_teacher_classes"])


def _shipped() -> dict[str, Path]:
    folder = resources.files("edgedistill") / "label_maps"
    return {p.name[:-5]: Path(str(p)) for p in folder.iterdir() if p.name.endswith(".json")}


def _key(s: str) -> str:
    return s.lower().replace("_", " ").strip()


def default_label_map(dataset: str, class_names: Sequence[str]) -> str:
    """The shipped map of ``dataset``, else the first shipped map covering every class name.

    Raises:
        ConfigError: no shipped map fits (the message says how to give one).
    """
    if dataset in DEFAULT_LABEL_MAPS:
        return DEFAULT_LABEL_MAPS[dataset]
    wanted = {_key(c) for c in class_names}
    for name, path in sorted(_shipped().items()):
        if wanted <= {_key(k) for k in json.loads(path.read_text(encoding="utf-8"))}:
            return name
    raise ConfigError(f"No shipped label map covers the classes of dataset {dataset!r} ({', '.join(class_names)}); "
                      f"pass a JSON file {{class: [ImageNet indices]}} as the label map (shipped: {', '.join(_shipped())})")


def load_label_map(name_or_path: str, class_names: Sequence[str]) -> LabelMapHead:
    """A LabelMapHead for ``class_names`` from a shipped map (``cifar10``, ``stl10``) or a JSON file.

    The JSON is ``{class_name: [teacher indices]}``; class names match case-insensitively with
    ``_``/space equivalent (STL10 "car" is not CIFAR's "automobile": pick the matching map).

    Raises:
        ConfigError: Unknown map name, or classes the map does not cover (named in the message).
    """
    path = Path(name_or_path).expanduser()
    if path.is_file():
        mapping = storage.read_json(path)
    else:
        shipped = _shipped()
        if name_or_path not in shipped:
            raise ConfigError(f"Unknown label map {name_or_path!r}: not a file. Shipped maps: {', '.join(sorted(shipped))}")
        mapping = json.loads(shipped[name_or_path].read_text(encoding="utf-8"))
    if not isinstance(mapping, dict):
        raise ConfigError(f"Label map {name_or_path!r} must be a JSON object {{class: [ImageNet indices]}}")
    by_key = {_key(k): v for k, v in mapping.items()}
    missing = [c for c in class_names if _key(c) not in by_key]
    if missing:
        raise ConfigError(
            f"Label map {name_or_path!r} has no entry for classes {missing}. It covers: {', '.join(mapping)}"
        )
    return LabelMapHead([list(by_key[_key(c)]) for c in class_names])
