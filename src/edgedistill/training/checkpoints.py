"""Lightning checkpoints on disk: written atomically, loaded without running code, confined to the run.

* :class:`SafeCheckpointIO` writes every checkpoint to a temp file and renames it, so a
  full disk or a kill leaves the previous checkpoint whole; it loads with
  ``torch.load(weights_only=True)``, which refuses any pickled object that is not plain
  data (a planted checkpoint's payload never runs).
* :func:`resume_checkpoint` picks the checkpoint a resume continues from: ``last.ckpt`` if it
  loads, else the newest loadable ``*.ckpt`` of the run, with a message saying which.
* :func:`confined` refuses paths outside the run's checkpoint folder (Lightning restores
  ``best_model_path`` from ``last.ckpt``, so a crafted file could point anywhere).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from edgedistill import storage
from edgedistill.console import say
from edgedistill.errors import EdgeDistillError


class UnsafeCheckpointError(EdgeDistillError):
    """A checkpoint that cannot be loaded as plain data (damaged, or holding code)."""


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """A Lightning checkpoint as plain data (``weights_only=True``): tensors, numbers, strings, containers.

    Raises:
        UnsafeCheckpointError: the file is damaged, or holds objects that would run code when unpickled.
    """
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - UnpicklingError (a payload), RuntimeError (a torn zip), EOFError, ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UnsafeCheckpointError(f"Checkpoint {path} cannot be loaded as plain data ({type(e).__name__}: "
                                    f"{first[:200]}); it is damaged or not one this run wrote") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise UnsafeCheckpointError(f"Checkpoint {path} holds no state_dict; it is not a Lightning checkpoint")
    return ckpt


class SafeCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` that writes atomically (temp file + rename) and loads only plain data."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        with storage.atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)

    def load_checkpoint(self, path, map_location: Callable | Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        return load_checkpoint(path, map_location if map_location is not None else "cpu")


def confined(path: str | os.PathLike | None, folder: Path) -> Path | None:
    """``path`` resolved, if it is a file inside ``folder``; else None."""
    if not path:
        return None
    p = Path(path).resolve()
    try:
        p.relative_to(folder.resolve())
    except ValueError:
        say(f"ignoring checkpoint path {path} (outside {folder})")
        return None
    return p if p.is_file() else None


def resume_checkpoint(ckpt_dir: Path) -> Path | None:
    """The checkpoint a resume continues from: ``last.ckpt`` if it loads, else the newest loadable one.

    Raises:
        UnsafeCheckpointError: checkpoints exist but none loads as plain data (nothing is started over silently).
    """
    candidates = sorted(ckpt_dir.glob("*.ckpt"), key=lambda p: (p.name != "last.ckpt", -p.stat().st_mtime_ns))
    for path in candidates:
        try:
            load_checkpoint(path)
        except UnsafeCheckpointError as e:
            say(f"[train] {e}; trying an older checkpoint")
            continue
        if path.name != "last.ckpt":
            say(f"[train] resuming from {path.name}, the newest checkpoint that loads")
        return path
    if candidates:
        raise UnsafeCheckpointError(f"No checkpoint in {ckpt_dir} loads as plain data ({', '.join(p.name for p in candidates)}); "
                                    "move the run directory away to start it over")
    return None
