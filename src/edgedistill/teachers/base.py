"""The teacher interface: a frozen network mapping normalised images to embeddings (and logits).

Every teacher, whatever library it wraps, is an ``nn.Module`` that

* is frozen: no parameter requires grad and ``train()`` keeps it in eval mode (as open_clip
  does for its locked towers), so it can sit inside a LightningModule without being trained;
* runs under ``torch.inference_mode`` and, on CUDA, under autocast (bf16 where supported,
  else fp16) and always returns float32;
* carries its own preprocessing (``view``) and a ``fingerprint`` of everything that determines
  its outputs, which keys the teacher-output cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import torch
from torch import Tensor, nn

from edgedistill.data.views import ViewSpec
from edgedistill.deploy.onnx import DeployModel, check_parity, export_onnx
from edgedistill.deploy.runtime import DeployMeta, ort_session
from edgedistill.errors import ConfigError, EdgeDistillError, WeightsNotFoundError
from edgedistill.storage import file_sha256  # noqa: F401 - re-exported for the teacher modules


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> ``cuda`` when available else ``cpu``; anything else must name a usable device.

    Raises:
        ConfigError: Unknown device string, or CUDA asked for but not available.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ConfigError(f"Unknown device {device!r}. Valid: auto, cpu, cuda, cuda:N") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={device!r} but CUDA is not available here. Use 'auto' or 'cpu'")
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"Unsupported device {device!r}. Valid: auto, cpu, cuda, cuda:N")
    return dev


def state_dict_sha256(module: nn.Module) -> str:
    """sha256 of a module's state_dict (names, dtypes, shapes and bytes), for in-memory weights."""
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        # Bytes through a uint8 view: works for every dtype numpy cannot hold (bf16).
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def make_fingerprint(model_name: str, weights_hash: str, view: ViewSpec) -> str:
    """sha256 hex of the model name, its weights hash and its preprocessing (canonical JSON)."""
    payload = {"model": model_name, "weights": weights_hash, "view": view.to_dict()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def require_file(path: str | os.PathLike, what: str) -> Path:
    """``path`` as a Path if it is an existing file; else a WeightsNotFoundError naming it."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise WeightsNotFoundError(f"{what} checkpoint {str(path)!r} is not a file. Pass the path of a local checkpoint")
    return p


class Teacher(nn.Module):
    """A frozen image (and optionally text) encoder. Subclasses implement ``_forward`` (and ``_encode_text``).

    Attributes:
        name: Model name, e.g. ``"ViT-B-32"`` or ``"tf_efficientnet_lite0"``.
        embed_dim: D, the size of ``forward(x)["embedding"]``.
        num_classes: C for classifiers (``forward(x)["logits"]`` is ``[B, C]``), None for CLIP models.
        class_names: The C class names of a classifier, None otherwise.
        view: Its preprocessing (size, resize rule, mean, std, interpolation).
        logit_scale: CLIP: ``exp(model.logit_scale)`` (about 100); classifiers: 1.0.
        fingerprint: sha256 hex of (model name, weights hash, ``view.to_dict()``).
        batch_size: Images per forward pass that callers (the cache) should use.
    """

    name: str
    embed_dim: int
    num_classes: int | None = None
    class_names: list[str] | None = None
    view: ViewSpec
    logit_scale: float = 1.0
    fingerprint: str
    batch_size: int = 128

    def __init__(self) -> None:
        super().__init__()

    def freeze(self) -> None:
        """No grads, eval mode. Called by subclasses once their modules exist."""
        for p in self.parameters():
            p.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> Teacher:
        # Frozen: a parent module's .train() (e.g. Lightning's) must not switch BN/dropout on.
        return super().train(False)

    @property
    def device(self) -> torch.device:
        """Device of the teacher's weights."""
        p = next(self.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    @property
    def has_text(self) -> bool:
        """True for image-text models (``encode_text`` works)."""
        return False

    def _autocast(self):
        # Mixed precision on GPU only: CPU autocast is slower than fp32 for these models.
        dev = self.device
        if dev.type != "cuda":
            return torch.autocast("cpu", enabled=False)
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Embed a batch of images.

        Args:
            x: ``[B, 3, H, W]`` already normalised with ``self.view`` (any device; moved to the teacher's).

        Returns:
            ``{"embedding": [B, D] float32}`` plus ``"logits": [B, C] float32`` for classifiers.
        """
        with torch.inference_mode(), self._autocast():
            out = self._forward(x.to(self.device, non_blocking=True))
        # Cloned outside inference mode: inference tensors cannot be saved for backward, and
        # online distillation uses these as loss targets (e.g. MSE saves its target).
        return {k: v.float().clone() for k, v in out.items()}

    def _forward(self, x: Tensor) -> dict[str, Tensor]:
        raise NotImplementedError

    def encode_text(self, texts: list[str]) -> Tensor:
        """Embed texts.

        Args:
            texts: N strings.

        Returns:
            ``[N, D]`` float32, unnormalised, on the teacher's device.

        Raises:
            EdgeDistillError: The teacher has no text tower.
        """
        if not self.has_text:
            raise EdgeDistillError(
                f"Teacher {self.name!r} has no text encoder; text heads need an openclip teacher. "
                "Use a label-map or linear head instead"
            )
        with torch.inference_mode(), self._autocast():
            emb = self._encode_text(list(texts))
        return emb.float().clone()  # a normal tensor, usable in autograd (see forward)

    def _encode_text(self, texts: list[str]) -> Tensor:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"name={self.name!r}, embed_dim={self.embed_dim}, view={self.view}, fingerprint={self.fingerprint[:12]}"


class OnnxRuntimeTeacher(Teacher):
    """A teacher whose image tower runs in ONNX Runtime (CPU); text, view and metadata come from the torch teacher.

    The tower is exported once to ``<cache_dir>/teachers/<fingerprint[:16]>.onnx`` (opset 17,
    dynamic batch) and checked against PyTorch on fresh inputs every time it is opened, so a
    stale or damaged file is refused. Its outputs differ from PyTorch's by float rounding only,
    but they are other numbers: the fingerprint names the runtime, and its caches are its own.

    Args:
        inner: The torch teacher (kept for ``encode_text`` and as the parity reference).
        cache_dir: Where the exported tower is kept.
        tolerance: Largest allowed max-abs difference from PyTorch.
    """

    def __init__(self, inner: Teacher, cache_dir: str | os.PathLike, tolerance: float = 1e-3) -> None:
        super().__init__()
        self.inner = inner
        for attr in ("name", "embed_dim", "num_classes", "class_names", "view", "logit_scale", "batch_size"):
            setattr(self, attr, getattr(inner, attr))
        self.fingerprint = hashlib.sha256(f"{inner.fingerprint}|onnxruntime".encode()).hexdigest()
        self.outputs = ["embedding", "logits"] if inner.num_classes else ["embedding"]
        self.path = Path(cache_dir).expanduser() / "teachers" / f"{inner.fingerprint[:16]}.onnx"
        self.session = self._open(tolerance, torch.get_num_threads())
        self.freeze()

    def _open(self, tolerance: float, threads: int):
        model = DeployModel(self.inner, None, self.outputs).eval()
        size = self.view.image_size
        probe = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(0))
        if self.path.is_file():
            try:
                check_parity(model, self.path, [probe], tolerance=tolerance)
            except Exception:  # noqa: BLE001 - a damaged or stale file (another exporter, another torch): export again
                self.path.unlink()
        if not self.path.is_file():
            meta = DeployMeta(role="teacher", arch=self.name, outputs=self.outputs, view=self.view.to_dict(),
                              target="embedding", source=f"teacher {self.inner.fingerprint}")
            export_onnx(model, self.path, meta=dataclasses.replace(meta), check={"random": probe}, tolerance=tolerance)
        return ort_session(self.path, threads=threads)  # the process's share of the cores (torch's setting)

    @property
    def has_text(self) -> bool:
        return self.inner.has_text

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def _autocast(self):
        return torch.autocast("cpu", enabled=False)

    def _forward(self, x: Tensor) -> dict[str, Tensor]:
        got = self.session.run(self.outputs, {"image": x.detach().cpu().float().numpy()})
        return {name: torch.from_numpy(value) for name, value in zip(self.outputs, got)}

    def _encode_text(self, texts: list[str]) -> Tensor:
        return self.inner._encode_text(texts)
