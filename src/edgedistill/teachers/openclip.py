"""OpenCLIP image-text models as teachers (any open_clip model name + pretrained tag or local checkpoint).

Weights are resolved without ever hanging on an unreachable hub: a tag's file is looked up
in the Hugging Face cache first (``huggingface_hub.try_to_load_from_cache``); only if it is
not cached, ``HF_HUB_OFFLINE`` is unset and the hub answers a 3-second TCP probe, is it
downloaded (``hf_hub_download``). Otherwise a one-line ``WeightsNotFoundError`` says how to
supply the weights. The local file is then built by ``open_clip.create_model`` with the
tag's preprocessing and QuickGELU setting, as loading by tag would.

Preprocessing (``view``) is open_clip's own ``model.visual.preprocess_cfg``: its size,
mean, std, interpolation, ``resize_mode`` (shortest, longest or squash) and fill colour.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

import open_clip
import torch
from torch import Tensor, nn

from edgedistill.config import DEFAULT_OPENCLIP_MODEL, TeacherConfig
from edgedistill.data.views import RESAMPLE, ViewSpec
from edgedistill.errors import ConfigError, WeightsNotFoundError
from edgedistill.teachers.base import Teacher, file_sha256, make_fingerprint, state_dict_sha256

log = logging.getLogger(__name__)

DEFAULT_TAGS = {DEFAULT_OPENCLIP_MODEL: "laion2b_s34b_b79k"}
"""Pretrained tag used when ``teacher.pretrained`` is unset (the tutorial's teacher)."""
RANDOM = "random"
"""``teacher.pretrained`` value for random weights (tests and speed benchmarks)."""


def register_model_config(name: str, config: dict) -> None:
    """Make an open_clip model config (a dict as in open_clip's ``model_configs/*.json``) known under ``name``.

    Goes through open_clip's public ``add_model_config`` (a JSON file in a temp folder), not its private dict.
    """
    import json
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        (Path(d) / f"{name}.json").write_text(json.dumps(config))
        open_clip.add_model_config(d)


def view_from_preprocess_cfg(cfg: dict) -> ViewSpec:
    """ViewSpec of an open_clip ``preprocess_cfg`` (size, mean, std, interpolation, resize_mode, fill_color)."""
    size = cfg["size"]
    if not isinstance(size, int):
        if len(set(size)) != 1:
            raise ConfigError(f"open_clip preprocess size {size} is not square; edgedistill views are square")
        size = size[0]
    interpolation = cfg.get("interpolation", "bicubic")
    interpolation = interpolation if interpolation in RESAMPLE else "bicubic"  # 'random' is a train-time option
    fill = cfg.get("fill_color", 0)
    return ViewSpec(int(size), tuple(cfg["mean"]), tuple(cfg["std"]), interpolation,
                    resize_mode=cfg.get("resize_mode", "shortest"), fill=int(fill if isinstance(fill, int) else fill[0]))


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


def _hub_files(hf_hub: str) -> tuple[str, list[str]]:
    """A tag's hub repository and its candidate weight files, safetensors first (as open_clip prefers).

    open_clip writes ``org/model/file`` or, for the default file name, ``org/model/``.
    """
    repo, filename = os.path.split(hf_hub)
    filename = filename or "open_clip_pytorch_model.bin"
    stem, ext = os.path.splitext(filename)
    safe = "open_clip_model.safetensors" if filename == "open_clip_pytorch_model.bin" else (
        f"{stem}.safetensors" if ext in (".bin", ".pth") else None)
    return repo, [f for f in (safe, filename) if f]


def resolve_weights(name: str, tag: str, tag_cfg: dict, cache_dir: str | None = None) -> Path:
    """A local file holding a tag's weights: from the Hugging Face cache, else downloaded if the hub answers.

    Raises:
        WeightsNotFoundError: not cached and the hub is offline, unreachable or the download failed.
    """
    from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache

    if tag_cfg.get("file"):
        return Path(tag_cfg["file"])
    if not tag_cfg.get("hf_hub"):  # URL-only tags (a few old ones): open_clip's own downloader
        if not _hub_reachable():
            raise _missing_weights(name, tag, "it is only available by URL and the network is unreachable")
        return Path(open_clip.download_pretrained(tag_cfg, cache_dir=cache_dir))
    repo, files = _hub_files(tag_cfg["hf_hub"])
    for f in files:
        cached = try_to_load_from_cache(repo, f, cache_dir=cache_dir)
        if isinstance(cached, str) and os.path.isfile(cached):
            return Path(cached)
    if constants.HF_HUB_OFFLINE:
        raise _missing_weights(name, tag, "not in the local cache and HF_HUB_OFFLINE is set")
    if not _hub_reachable():
        raise _missing_weights(name, tag, "not in the local cache and the Hugging Face hub is unreachable")
    errors = []
    for f in files:
        try:
            return Path(hf_hub_download(repo, f, cache_dir=cache_dir))
        except Exception as e:  # noqa: BLE001 - EntryNotFound for the safetensors variant, network errors
            errors.append(f"{f}: {type(e).__name__}")
    raise _missing_weights(name, tag, f"download failed ({'; '.join(errors)})")


_PREPROCESS_KEYS = ("size", "mode", "mean", "std", "interpolation", "resize_mode", "fill_color")


def create_openclip_teacher(
    name: str = DEFAULT_OPENCLIP_MODEL,
    pretrained: str | None = None,
    image_size: int | None = None,
    device: torch.device | str = "cpu",
    cache_dir: str | None = None,
) -> OpenCLIPTeacher:
    """Build an OpenCLIP teacher from a model name and a pretrained tag or local checkpoint file.

    Args:
        name: open_clip model name (``open_clip.list_models()``).
        pretrained: A pretrained tag (``open_clip.list_pretrained_tags_by_model(name)``), a path to a
            checkpoint file (loaded by open_clip with ``weights_only=True``), ``random`` for random
            weights (tests; a warning is logged), or None for the model's default tag.
        image_size: Override the input resolution (ViT position embeddings are interpolated).
        device: Where to put the model.
        cache_dir: Hugging Face cache folder; None: huggingface_hub's default.

    Raises:
        ConfigError: Unknown model name, or no default tag for it.
        WeightsNotFoundError: Unknown tag / missing file, or tag weights neither cached nor downloadable.
    """
    if open_clip.get_model_config(name) is None and ":" not in name:
        raise ConfigError(f"Unknown open_clip model {name!r}. Valid: {', '.join(open_clip.list_models()[:12])}, ... "
                          "(open_clip.list_models())")
    tags = open_clip.list_pretrained_tags_by_model(name)
    if pretrained is None:
        if name not in DEFAULT_TAGS:
            raise ConfigError(f"teacher.pretrained is unset and {name} has no default tag; pass one of: "
                              f"{', '.join(tags) or 'none'}, a checkpoint file, or 'random'")
        pretrained = DEFAULT_TAGS[name]
    kwargs = dict(device=device, force_image_size=image_size)
    if pretrained == RANDOM:
        log.warning("OpenCLIP teacher %s has random weights (pretrained='random')", name)
        return OpenCLIPTeacher(open_clip.create_model(name, pretrained=None, **kwargs), name)
    tag_cfg = open_clip.get_pretrained_cfg(name, pretrained)
    if tag_cfg:
        path = resolve_weights(name, pretrained, tag_cfg, cache_dir)
        kwargs["force_quick_gelu"] = bool(tag_cfg.get("quick_gelu", False))
        kwargs["force_preprocess_cfg"] = {k: tag_cfg[k] for k in _PREPROCESS_KEYS if tag_cfg.get(k) is not None}
    else:
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise WeightsNotFoundError(
                f"teacher.pretrained={pretrained!r} is neither a pretrained tag of {name} (tags: {', '.join(tags) or 'none'}) "
                "nor a file"
            )
    model = open_clip.create_model(name, pretrained=str(path), **kwargs)
    return OpenCLIPTeacher(model, name, file_sha256(path))


def openclip_from_config(cfg: TeacherConfig, device: torch.device) -> OpenCLIPTeacher:
    """Registry entry ``openclip``."""
    return create_openclip_teacher(cfg.model or DEFAULT_OPENCLIP_MODEL, cfg.pretrained, cfg.image_size, device=device)
