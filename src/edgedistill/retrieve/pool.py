"""The pool's cached teacher outputs as one row space, read shard by shard or row by row."""

from __future__ import annotations

import hashlib
from typing import Iterator, Sequence

import numpy as np

from edgedistill import storage
from edgedistill.data.sources import describe_item


class PoolRows:
    """The pool's cached teacher outputs as one row space: global id = source offset + index in the source.

    Args:
        keys: Source keys, in pool order.
        caches: ``{key: cache.TeacherCache}``.
        sources: ``{key: Source}``.
    """

    def __init__(self, keys: Sequence[str], caches: dict, sources: dict) -> None:
        self.keys = list(keys)
        self.caches = [caches[k] for k in self.keys]
        self.sources = [sources[k] for k in self.keys]
        self.offsets = np.cumsum([0] + [len(c) for c in self.caches])  # [S+1]
        self.valid = np.concatenate([c.valid for c in self.caches])  # bool [N]: readable images

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, gid: int) -> tuple[int, int]:
        """(source position, index within it) of global id ``gid``."""
        s = int(np.searchsorted(self.offsets, gid, side="right")) - 1
        return s, int(gid - self.offsets[s])

    def chunks(self, arrays: Sequence[str]) -> Iterator[tuple[int, dict[str, np.ndarray], np.ndarray]]:
        """``(first global id, {array: float32 [S, F]}, valid [S])`` for each cache shard, of every array asked
        (``embedding``, ``logits``); a cache's arrays are sharded alike."""
        for s, cache in enumerate(self.caches):
            local = 0
            for parts in zip(*(getattr(cache, a).parts for a in arrays)):
                n = len(parts[0])
                yield (int(self.offsets[s]) + local, {a: np.asarray(p, dtype=np.float32) for a, p in zip(arrays, parts)},
                       cache.valid[local:local + n])
                local += n

    def rows(self, array: str, gids: np.ndarray) -> np.ndarray:
        """float32 ``[len(gids), F]``: rows of ``array`` for global ids, in the given order (only they are read)."""
        gids = np.asarray(gids, dtype=np.int64)
        out = np.empty((len(gids), *getattr(self.caches[0], array).shape[1:]), dtype=np.float32)
        src = np.searchsorted(self.offsets, gids, side="right") - 1
        for s in np.unique(src):
            sel = np.flatnonzero(src == s)
            local = gids[sel] - self.offsets[s]
            order = np.argsort(local)  # sorted reads are sequential on the memory maps
            out[sel[order]] = getattr(self.caches[s], array)[local[order]]
        return out

    def rows_of(self, arrays: Sequence[str], gids: np.ndarray) -> dict[str, np.ndarray]:
        """``{array: rows(array, gids)}`` for every array asked."""
        return {a: self.rows(a, gids) for a in arrays}

    def content_sha256(self, gid: int) -> str:
        """sha256 of an image's file bytes (a tar member's own bytes): the same photo under any name."""
        s, i = self.locate(gid)
        return item_sha256(self.sources[s], i)

    def describe(self, gid: int) -> tuple[str, int, str]:
        """``(source key, index, path)`` of a global id; the path is a file or ``<tar>::<member>``."""
        s, i = self.locate(gid)
        return self.keys[s], i, describe_item(self.sources[s], i)

    def load(self, gid: int):
        s, i = self.locate(gid)
        return self.sources[s].load(i)


def item_sha256(source, i: int) -> str:
    """sha256 of image ``i``'s bytes as stored: a file's, or a tar member's."""
    if getattr(source, "is_tar", False):
        with open(source.path, "rb") as f:
            f.seek(int(source._offsets[i]))
            return hashlib.sha256(f.read(int(source._sizes[i]))).hexdigest()
    return storage.file_sha256(source.files[i])
