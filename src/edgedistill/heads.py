"""Heads that turn teacher outputs into class scores for the target dataset.

* ``TextHead``: zero-shot, from a CLIP teacher's text embeddings of class prompts;
  ``logits = logit_scale * cos(image, class)``.
* ``LabelMapHead``: for ImageNet classifiers, each target class is a set of ImageNet classes
  whose probabilities are summed (``label_maps/<dataset>.json``).
* ``LinearProbe``: a linear layer trained on cached teacher embeddings of the labeled
  split, its weight decay chosen on the validation split (never on test).

All three save as ``<path>.safetensors`` (tensors) + ``<path>.json`` (manifest with ``kind``
and constructor arguments) and load back with ``load_head``.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgedistill import storage
from edgedistill.errors import ConfigError, EdgeDistillError

TEMPLATE_SETS = ("ensemble", "tutorial", "simple")


def _article(c: str) -> str:
    return f"{'an' if c[:1].lower() in 'aeiou' else 'a'} {c}"


def prompt_templates(templates: str) -> Sequence:
    """The prompt templates of a named set, as open_clip's ``build_zero_shot_classifier`` takes them.

    Args:
        templates: ``ensemble``: open_clip's OPENAI_IMAGENET_TEMPLATES (80 prompts, "a photo of a {c}." ...);
            ``simple``: SIMPLE_IMAGENET_TEMPLATES (2 prompts); ``tutorial``: the reference tutorial's
            single prompt, "a {c}" / "an {c}" by the class name's first letter.
    """
    if templates == "ensemble":
        return open_clip.OPENAI_IMAGENET_TEMPLATES
    if templates == "simple":
        return open_clip.SIMPLE_IMAGENET_TEMPLATES
    if templates == "tutorial":
        return (_article,)
    raise ConfigError(f"Unknown prompt templates {templates!r}. Valid: {', '.join(TEMPLATE_SETS)}")


class TextHead(nn.Module):
    """Zero-shot classifier: scaled cosine similarity to per-class text embeddings.

    Args:
        text_embeddings: ``[C, D]`` class embeddings (normalised here).
        logit_scale: The CLIP teacher's ``exp(logit_scale)`` (about 100).
    """

    def __init__(self, text_embeddings: Tensor, logit_scale: float) -> None:
        super().__init__()
        self.register_buffer("text_embeddings", F.normalize(text_embeddings.detach().float().clone(), dim=-1))
        self.logit_scale = float(logit_scale)

    def forward(self, emb: Tensor) -> Tensor:
        """``emb [B, D]`` -> logits ``[B, C] = logit_scale * cos(emb, text_embeddings)``."""
        return self.logit_scale * F.normalize(emb.float(), dim=-1) @ self.text_embeddings.T

    def manifest(self) -> dict[str, Any]:
        return {"kind": "text", "logit_scale": self.logit_scale, "num_classes": int(self.text_embeddings.shape[0])}


class _TextTower:
    """The two callables ``open_clip.build_zero_shot_classifier`` needs, over any text-capable Teacher."""

    def __init__(self, teacher) -> None:
        self.teacher = teacher

    def tokenizer(self, texts: list[str]) -> list[str]:
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
        templates: ``ensemble`` (80 OpenAI prompts), ``simple`` (2) or ``tutorial`` ("a {c}" / "an {c}").

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


class LabelMapHead(nn.Module):
    """Target class scores from ImageNet logits: ``log(sum of softmax probabilities over the class's group)``.

    Args:
        groups: For each of the C target classes, the teacher class indices it gathers.
        num_teacher_classes: Number of teacher classes (1000 for ImageNet-1k).
    """

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

    def forward(self, teacher_logits: Tensor) -> Tensor:
        """``[B, K]`` teacher logits -> ``[B, C]`` log of summed group probabilities (not renormalised)."""
        logp = F.log_softmax(teacher_logits.float(), dim=-1)  # [B, K]
        return torch.logsumexp(logp[:, None, :] + self.log_mask[None], dim=-1)  # [B, C], stable sum of probs

    def manifest(self) -> dict[str, Any]:
        return {"kind": "label_map", "groups": self.groups, "num_teacher_classes": self.num_teacher_classes}


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
        shipped = resources.files("edgedistill") / "label_maps" / f"{name_or_path}.json"
        if not shipped.is_file():
            names = sorted(p.name[:-5] for p in (resources.files("edgedistill") / "label_maps").iterdir() if p.name.endswith(".json"))
            raise ConfigError(f"Unknown label map {name_or_path!r}: not a file. Shipped maps: {', '.join(names)}")
        mapping = json.loads(shipped.read_text(encoding="utf-8"))

    def key(s: str) -> str:
        return s.lower().replace("_", " ").strip()

    by_key = {key(k): v for k, v in mapping.items()}
    missing = [c for c in class_names if key(c) not in by_key]
    if missing:
        raise ConfigError(
            f"Label map {name_or_path!r} has no entry for classes {missing}. It covers: {', '.join(mapping)}"
        )
    return LabelMapHead([list(by_key[key(c)]) for c in class_names])


class LinearProbe(nn.Module):
    """``Linear(D, C)`` on (optionally L2-normalised) teacher embeddings.

    Args:
        in_dim: D.
        num_classes: C.
        normalize: L2-normalise inputs first (CLIP embeddings are compared by cosine).
    """

    def __init__(self, in_dim: int, num_classes: int, normalize: bool = True) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, num_classes)
        self.normalize = bool(normalize)

    def forward(self, emb: Tensor) -> Tensor:
        """``[B, D]`` embeddings -> ``[B, C]`` logits."""
        emb = emb.float()
        return self.linear(F.normalize(emb, dim=-1) if self.normalize else emb)

    def manifest(self) -> dict[str, Any]:
        return {
            "kind": "linear", "in_dim": self.linear.in_features,
            "num_classes": self.linear.out_features, "normalize": self.normalize,
        }


def _as_tensor(a, dtype) -> Tensor:
    return torch.as_tensor(np.asarray(a), dtype=dtype)


def _fit_lbfgs(probe: LinearProbe, x: Tensor, y: Tensor, weight_decay: float, epochs: int, lr: float) -> None:
    """Full-batch L-BFGS on ``CE + weight_decay * ||W||^2`` (bias not decayed)."""
    opt = torch.optim.LBFGS(probe.parameters(), lr=lr, max_iter=epochs, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(probe(x), y) + weight_decay * probe.linear.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)


@torch.no_grad()
def _accuracy(probe: nn.Module, x: Tensor, y: Tensor) -> float:
    return float((probe(x).argmax(-1) == y).float().mean()) if len(y) else float("nan")


def train_linear_probe(
    train_x,
    train_y,
    val_x,
    val_y,
    *,
    weight_decays: Sequence[float] = (0.0, 1e-5, 1e-4, 1e-3, 1e-2),
    epochs: int = 200,
    lr: float = 1.0,
    seed: int = 0,
    normalize: bool = True,
    num_classes: int | None = None,
    select_on: str = "loss",
) -> tuple[LinearProbe, dict[str, Any]]:
    """Fit a linear probe per weight decay by full-batch L-BFGS and keep the best on validation.

    The probe's probabilities are what response KD distils, so by default the weight decay is
    chosen by validation cross-entropy (a proper scoring rule: it rewards calibrated, not just
    correct, probabilities, and is far less noisy than accuracy on a small validation split).

    Args:
        train_x: ``[N, D]`` embeddings of the labeled training split (array or tensor; any float dtype).
        train_y: ``[N]`` int labels.
        val_x: ``[M, D]`` embeddings of the validation split (selection only; never the test split).
        val_y: ``[M]`` int labels.
        weight_decays: L2 penalties to sweep (coefficient on ``||W||^2`` added to the mean CE).
        epochs: L-BFGS iterations per fit.
        lr: L-BFGS step size (1.0 with the strong-Wolfe line search).
        seed: Seed of the weight initialisation.
        normalize: L2-normalise embeddings before the linear layer (recorded in the probe).
        num_classes: C; None: ``max(label) + 1``.
        select_on: ``loss`` (validation cross-entropy, ties to higher accuracy) or ``acc``
            (validation accuracy, ties to lower loss).

    Returns:
        The selected probe (CPU, eval mode) and a report: ``weight_decay`` chosen, ``val_acc``,
        ``train_acc``, and ``sweep`` (per weight decay: val and train accuracy, val loss).
    """
    if select_on not in ("loss", "acc"):
        raise ConfigError(f"select_on={select_on!r} is invalid; valid: loss, acc")
    x, y = _as_tensor(train_x, torch.float32), _as_tensor(train_y, torch.long)
    vx, vy = _as_tensor(val_x, torch.float32), _as_tensor(val_y, torch.long)
    if x.ndim != 2 or len(x) != len(y) or vx.ndim != 2 or len(vx) != len(vy):
        raise ConfigError(f"train_linear_probe: shapes x{tuple(x.shape)} y{tuple(y.shape)} val_x{tuple(vx.shape)} val_y{tuple(vy.shape)} do not match")
    if len(vy) == 0:
        raise ConfigError("train_linear_probe needs a non-empty validation split to choose the weight decay (data.val_fraction > 0)")
    if (y < 0).any():
        raise ConfigError("train_linear_probe got unlabeled (-1) training rows; pass only the labeled split")
    C = num_classes or int(max(y.max(), vy.max())) + 1
    sweep, best, best_key = [], None, None
    for wd in weight_decays:
        torch.manual_seed(seed)
        probe = LinearProbe(x.shape[1], C, normalize)
        _fit_lbfgs(probe, x, y, float(wd), epochs, lr)
        with torch.no_grad():
            val_loss = float(F.cross_entropy(probe(vx), vy))
        row = {"weight_decay": float(wd), "val_acc": _accuracy(probe, vx, vy), "train_acc": _accuracy(probe, x, y), "val_loss": val_loss}
        sweep.append(row)
        key = (-val_loss, row["val_acc"]) if select_on == "loss" else (row["val_acc"], -val_loss)
        if best_key is None or key > best_key:
            best, best_key, chosen = probe, key, row
    report = {**chosen, "sweep": sweep, "selected_on": f"val {select_on}", "epochs": epochs, "seed": seed, "normalize": normalize,
              "num_train": len(y), "num_val": len(vy), "num_classes": C}
    return best.eval(), report


def save_head(head: nn.Module, path_without_ext: str | Path, manifest: dict | None = None) -> Path:
    """Write ``<path>.safetensors`` (the head's tensors) and ``<path>.json`` (kind, arguments + ``manifest``), atomically.

    Returns:
        The ``.safetensors`` path.
    """
    if not hasattr(head, "manifest"):
        raise ConfigError(f"save_head: {type(head).__name__} is not a TextHead, LabelMapHead or LinearProbe")
    base = Path(path_without_ext)
    tensors_path, json_path = base.with_name(base.name + ".safetensors"), base.with_name(base.name + ".json")
    head_meta = head.manifest()
    storage.save_safetensors(tensors_path, dict(head.state_dict()), metadata={"kind": head_meta["kind"]})
    storage.write_json(json_path, {**(manifest or {}), "head": head_meta, "kind": head_meta["kind"],
                                   "tensors": tensors_path.name})
    return tensors_path


def load_head(path: str | Path) -> nn.Module:
    """Load a head written by ``save_head``. ``path`` may be the base, the ``.json``, the ``.safetensors``,
    or a folder holding ``head.{json,safetensors}`` (a training run directory).

    Raises:
        ConfigError: Files missing, or an unknown head kind.
    """
    from safetensors.torch import load_file

    path = Path(path)
    base = path.with_suffix("") if path.suffix in (".json", ".safetensors") else path
    if base.is_dir():
        base = base / "head"
    json_path, tensors_path = base.with_name(base.name + ".json"), base.with_name(base.name + ".safetensors")
    if not json_path.is_file() or not tensors_path.is_file():
        raise ConfigError(f"No saved head at {str(base)!r}: expected {json_path.name} and {tensors_path.name}")
    meta = storage.read_json(json_path)["head"]
    tensors = load_file(str(tensors_path))
    kind = meta.get("kind")
    if kind == "text":
        head = TextHead(tensors["text_embeddings"], meta["logit_scale"])
    elif kind == "label_map":
        head = LabelMapHead(meta["groups"], meta["num_teacher_classes"])
    elif kind == "linear":
        head = LinearProbe(meta["in_dim"], meta["num_classes"], meta["normalize"])
    else:
        raise ConfigError(f"Unknown head kind {kind!r} in {json_path}. Valid: text, label_map, linear")
    head.load_state_dict(tensors, strict=True)
    return head.eval()
