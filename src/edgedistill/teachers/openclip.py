"""OpenCLIP image-text models as teachers (any open_clip model name + pretrained tag or local checkpoint).

Weights are resolved without ever hanging on an unreachable hub: the tag is first looked up in
the Hugging Face cache only (huggingface_hub's offline mode, scoped to that call); only if it is
not cached, and the hub answers a 3-second TCP probe, is it downloaded. Otherwise a one-line
``WeightsNotFoundError`` says how to supply the weights. (Without this, open_clip + huggingface_hub
retry for about a minute before failing.)

Preprocessing (``view``) comes from ``model.visual.preprocess_cfg``. open_clip's default
``resize_mode='shortest'`` resizes the short side to ``size`` and center-crops ``size``; in
``ViewSpec`` terms that is a crop_pct just below 1 (``size / (size + 0.5)``, so that
``floor(size / crop_pct) == size``). ``resize_mode='squash'`` is crop_pct 1.0. On square images
(STL10, CIFAR) both are the same plain resize.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

import open_clip
import torch
from torch import Tensor, nn

from edgedistill.data.transforms import ViewSpec
from edgedistill.errors import ConfigError, WeightsNotFoundError
from edgedistill.teachers.base import Teacher, file_sha256, make_fingerprint, state_dict_sha256

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _root_log_below(level: int):
    """Drop log records below ``level`` for the duration (then restore whatever was disabled)."""
    previous = logging.root.manager.disable
    logging.disable(level - 1)
    try:
        yield
    finally:
        logging.disable(previous)


_INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos")


def view_from_preprocess_cfg(cfg: dict) -> ViewSpec:
    """ViewSpec of an open_clip ``preprocess_cfg`` (see module docstring for the crop)."""
    size = cfg["size"]
    size = int(size if isinstance(size, int) else max(size))
    interpolation = cfg.get("interpolation", "bicubic")
    interpolation = interpolation if interpolation in _INTERPOLATIONS else "bicubic"  # 'random' is a train-time option
    crop_pct = 1.0 if cfg.get("resize_mode", "shortest") == "squash" else size / (size + 0.5)
    return ViewSpec(size, tuple(cfg["mean"]), tuple(cfg["std"]), interpolation, crop_pct)


class OpenCLIPTeacher(Teacher):
    """An open_clip model's image tower (``encode_image``) and text tower (``encode_text``).

    Args:
        model: An open_clip CLIP model with weights loaded.
        name: Its open_clip model name (also picks the tokenizer).
        weights_hash: sha256 of its weight file; None: hashed from the state_dict (in-memory weights).
    """

    def __init__(self, model: nn.Module, name: str, weights_hash: str | None = None) -> None:
        super().__init__()
        self.model = model.eval()
        self.name = name
        self.tokenizer = open_clip.get_tokenizer(name)
        self.view = view_from_preprocess_cfg(model.visual.preprocess_cfg)
        self.embed_dim = int(getattr(model.visual, "output_dim", 0) or self._probe_dim())
        self.num_classes, self.class_names = None, None
        self.logit_scale = float(model.logit_scale.detach().exp())
        self.fingerprint = make_fingerprint(name, weights_hash or state_dict_sha256(model), self.view)
        self.freeze()

    def _probe_dim(self) -> int:
        s = self.view.image_size
        with torch.inference_mode():
            return self.model.encode_image(torch.zeros(1, 3, s, s, device=self.device)).shape[-1]

    @property
    def has_text(self) -> bool:
        return True

    def _forward(self, x: Tensor) -> dict[str, Tensor]:
        return {"embedding": self.model.encode_image(x)}  # [B, D], unnormalised

    def _encode_text(self, texts: list[str]) -> Tensor:
        chunks = [texts[i : i + 256] for i in range(0, len(texts), 256)]  # bounded memory for long prompt lists
        out = [self.model.encode_text(self.tokenizer(c).to(self.device)) for c in chunks]
        return torch.cat(out) if out else torch.empty(0, self.embed_dim, device=self.device)


@contextlib.contextmanager
def _hub_cache_only():
    """What HF_HUB_OFFLINE=1 does (answer from the local cache, no HTTP), scoped to this block.

    huggingface_hub reads the env variable once at import, so the module constant is set instead.
    """
    from huggingface_hub import constants

    old = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = old


def _hub_offline_requested() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _hub_reachable(timeout: float = 3.0) -> bool:
    """One TCP connect to the hub endpoint: fails in milliseconds without DNS, ``timeout`` s at most otherwise."""
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _missing_weights(name: str, tag: str, why: str) -> WeightsNotFoundError:
    return WeightsNotFoundError(
        f"OpenCLIP weights {name}/{tag} not found: {why}. Download them once with internet "
        f"(python -c \"import open_clip; open_clip.create_model('{name}', pretrained='{tag}')\") and copy "
        "~/.cache/huggingface here, or set teacher.pretrained=/path/to/open_clip_pytorch_model.bin"
    )


def create_openclip_teacher(
    name: str = "ViT-B-32",
    pretrained: str | None = "laion2b_s34b_b79k",
    image_size: int | None = None,
    device: torch.device | str = "cpu",
    cache_dir: str | None = None,
) -> OpenCLIPTeacher:
    """Build an OpenCLIP teacher from a model name and a pretrained tag or local checkpoint file.

    Args:
        name: open_clip model name (``open_clip.list_models()``).
        pretrained: A pretrained tag (``open_clip.list_pretrained_tags_by_model(name)``), a path to a
            checkpoint file (loaded by open_clip's own ``load_checkpoint``), or None for random
            weights (tests only; a warning is logged).
        image_size: Override the input resolution (ViT position embeddings are interpolated).
        device: Where to put the model.
        cache_dir: Hugging Face cache folder; None: huggingface_hub's default.

    Raises:
        ConfigError: Unknown model name.
        WeightsNotFoundError: Unknown tag / missing file, or tag weights neither cached nor downloadable.
    """
    if open_clip.get_model_config(name) is None and ":" not in name:
        raise ConfigError(f"Unknown open_clip model {name!r}. Valid: {', '.join(open_clip.list_models()[:12])}, ... (open_clip.list_models())")
    kwargs = dict(device=device, force_image_size=image_size, cache_dir=cache_dir)
    tag_cfg = open_clip.get_pretrained_cfg(name, pretrained) if pretrained else {}
    if pretrained is None:
        log.warning("OpenCLIP teacher %s has random weights (pretrained=None)", name)
        return OpenCLIPTeacher(open_clip.create_model(name, pretrained=None, **kwargs), name)
    if not tag_cfg:
        path = Path(pretrained).expanduser()
        if not path.is_file():
            tags = ", ".join(open_clip.list_pretrained_tags_by_model(name)) or "none"
            raise WeightsNotFoundError(
                f"teacher.pretrained={pretrained!r} is neither a pretrained tag of {name} (tags: {tags}) nor a file"
            )
        model = open_clip.create_model(name, pretrained=str(path), **kwargs)
        return OpenCLIPTeacher(model, name, file_sha256(path))

    model = None
    try:
        # open_clip logs a cache miss as an error on the root logger; a miss is expected here.
        with _hub_cache_only(), _root_log_below(logging.CRITICAL):
            model = open_clip.create_model(name, pretrained=pretrained, **kwargs)
    except Exception as e:  # noqa: BLE001 - open_clip wraps hub errors in RuntimeError / FileNotFoundError
        log.info("OpenCLIP %s/%s not in the local cache: %s", name, pretrained, e)
    if model is None:
        if _hub_offline_requested():
            raise _missing_weights(name, pretrained, "not in the local cache and HF_HUB_OFFLINE is set")
        if not _hub_reachable():
            raise _missing_weights(name, pretrained, "not in the local cache and the Hugging Face hub is unreachable")
        try:
            model = open_clip.create_model(name, pretrained=pretrained, **kwargs)
        except Exception as e:  # noqa: BLE001
            raise _missing_weights(name, pretrained, f"download failed ({type(e).__name__})") from e
    with _hub_cache_only():  # now cached: the same call only returns its path, for the weights hash
        path = open_clip.download_pretrained(tag_cfg, cache_dir=cache_dir)
    return OpenCLIPTeacher(model, name, file_sha256(path) if path and os.path.isfile(path) else None)
