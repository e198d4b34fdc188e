"""Files on disk: written atomically, read back verified, never unpickled.

Every artefact is written to a temp file in the same folder, fsynced and renamed, so a reader
sees either the old file or the complete new one, never a torn write, even if the writer is
killed with SIGKILL or the disk fills up. A write that fails (full disk, read-only folder,
permissions) raises a one-line ``StorageError`` naming the file, and leaves no temp file.
Reads of files a user can be handed (JSON, safetensors, npy) fail with a one-line error
naming the file instead of a traceback; nothing here unpickles.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from edgedistill.errors import EdgeDistillError

_UMASK = os.umask(0)
os.umask(_UMASK)


class StorageError(EdgeDistillError):
    """A file that cannot be written (disk full, read-only, permissions) or read back (damaged, missing)."""


def _why(e: OSError) -> str:
    if e.errno == errno.ENOSPC:
        return "no space left on the device"
    if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"{e.strerror.lower()} (choose a writable output folder)"
    return e.strerror or str(e)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on clean exit fsync it and rename it onto ``path``.

    Raises:
        StorageError: the folder cannot be created or written, or the disk is full.
    """
    path = Path(path)
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp (or a writer replacing it) makes 0600; give the mode open() would
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise StorageError(f"Cannot write {path}: {_why(e)}") from None
    finally:
        if tmp is not None and tmp.exists():
            tmp.unlink()


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Parse a JSON file; a missing, unreadable or damaged file raises a StorageError naming it."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StorageError(f"{path} does not exist") from None
    except OSError as e:
        raise StorageError(f"Cannot read {path}: {_why(e)}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StorageError(f"{path} is damaged (not valid JSON: {e}); restore or delete it") from None


def save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array, allow_pickle=False)


def load_npy(path: str | os.PathLike, mmap: bool = True) -> np.ndarray:
    """An ``.npy`` file (memory-mapped by default; ``allow_pickle=False``); a damaged one raises a StorageError."""
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except FileNotFoundError:
        raise StorageError(f"{path} is missing") from None
    except (OSError, ValueError, EOFError) as e:
        raise StorageError(f"{path} is damaged ({type(e).__name__}: {e})") from None


def save_safetensors(path: str | os.PathLike, tensors: dict, metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)


def load_safetensors(path: str | os.PathLike) -> dict:
    """The tensors of a safetensors file (no code runs); a damaged one raises a StorageError naming it."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise StorageError(f"{path} is missing") from None
    except Exception as e:  # noqa: BLE001 - safetensors raises SafetensorError / OSError for damaged headers
        raise StorageError(f"{path} is damaged or not a safetensors file ({type(e).__name__}: {e})") from None


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """sha256 hex digest of a file's bytes, read in 1 MiB chunks (checkpoints can be GBs)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def jsonable(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (tuples -> lists, numpy -> Python), for comparisons."""
    return json.loads(json.dumps(obj, default=_json_default))


def run_dir_of(path: str | os.PathLike) -> Path:
    """The run (or optimize stage) folder of ``path``: the folder itself, or the folder of a file in it."""
    return Path(path) if Path(path).is_dir() else Path(path).parent
