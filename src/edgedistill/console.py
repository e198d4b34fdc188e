"""What a person sees on the terminal: progress bars, one-line notes, warnings once.

stdout carries results (tables, paths); everything else (progress, notes, warnings) goes
to stderr. ``EDGEDISTILL_NO_PROGRESS=1`` turns every progress bar off (the tests set it).
Torch-free, so the deploy runtime can use it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from typing import Any, Iterator

NO_PROGRESS_ENV = "EDGEDISTILL_NO_PROGRESS"


def progress_enabled() -> bool:
    """False when ``EDGEDISTILL_NO_PROGRESS`` is set to anything but ``""`` or ``"0"``."""
    return os.environ.get(NO_PROGRESS_ENV, "") in ("", "0")


def progress(total: int | None = None, desc: str = "", unit: str = "img", **kwargs: Any):
    """A tqdm bar on stderr (disabled by ``EDGEDISTILL_NO_PROGRESS``)."""
    from tqdm.auto import tqdm

    disable = kwargs.pop("disable", False) or not progress_enabled()
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True, disable=disable, **kwargs)


def say(message: str) -> None:
    """One line of progress information on stderr (above any progress bar on screen, not through it)."""
    from tqdm.auto import tqdm

    tqdm.write(message, file=sys.stderr)


_warned: set[str] = set()


def warn_once(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn`` a message only the first time this process sees it (a grid's rows share it)."""
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, category, stacklevel=3)


@contextlib.contextmanager
def log_at_least(level: int = logging.ERROR, name: str | None = None) -> Iterator[None]:
    """Hold back lower records of a library's logger (``name``; None: the root logger, through which ONNX Runtime's
    quantizer and open_clip log)."""
    logger = logging.getLogger(name)
    old = logger.level
    logger.setLevel(max(level, old))
    try:
        yield
    finally:
        logger.setLevel(old)
