"""Teacher-output cache: the teacher runs once per (fingerprint, source, view), students read memory maps.

Layout, one folder per (teacher, source, view)::

    <cache_dir>/<teacher.fingerprint[:16]>/<source.key>/<source id>/<view>/
        plan.json                      what is being computed (written first, checked on resume)
        shard_00000.embedding.npy      float16 [S, D]  or [S, K, D] for K augmented views
        shard_00000.logits.npy         float16 [S, C]  (classifier teachers only)
        shard_00000.valid.npy          bool [S]        False: unreadable image, its rows are zero
        shard_00000.aug.npy            float32 [S, K, 5] AugParams (top, left, height, width, flip)
        shard_00000.meta.json          rows, bad count, seconds, and each file's size and sha256 (written last)
        shard_00000.lock               held (flock) by the process computing the shard
        manifest.json                  written last: the cache is complete

``source id`` is a hash of what the source holds (its resolved path, image count and the names, sizes and
mtimes of its files: ``store.source_id``), so two datasets in folders of the same name never share a
cache, and changed images get a new one. ``view`` is ``"eval"`` (the teacher's plain view) or ``"aug{K}-s{seed}"`` (K augmented views
whose crop/flip parameters come from ``data.transforms.sample_aug_params``, so a student can
train on exactly the crop the teacher saw).

Shard ``k`` covers source indices ``[k*S, (k+1)*S)``. Every file is written atomically and the
shard's ``meta.json`` last, with the size and sha256 of each of its arrays, so "meta exists"
means "shard complete", and a shard whose bytes changed afterwards (overwritten, truncated,
swapped with another) is detected when the cache is opened. A job killed with SIGKILL resumes
where it stopped and never recomputes a finished shard; ``ensure_cache`` (``edgedistill cache``)
recomputes exactly the damaged shards of an existing cache.

Processes share the work shard by shard: each takes an exclusive lock (``filelock``, ``flock``) on a
shard's lock file before computing it, so concurrent ``cache`` jobs on one folder and the ranks of a
distributed job (torchrun, SLURM: Lightning's cluster environments; ``--devices N``) never repeat a
shard. A lock dies with its process, so a killed job leaves nothing stale. Each rank starts at its own
offset (``rank * num_shards / world``), so ranks on machines that share no lock still split
the work; whichever finds every shard done writes ``manifest.json``.

Reading: :class:`TeacherCache` exposes each array as a :class:`ShardedArray`, a thin view that
concatenates the shard memory maps (``np.load(mmap_mode="r")``) without copying them.

Modules, one job each: ``store`` (the layout, shard files and their checks, reading), ``shards`` (ranks,
locks, the claim-and-compute loop), ``teacher`` (the teacher's forward over a shard, one source's job),
``pixels`` (the pixel cache), ``gathered`` (a split's rows from its sources' caches), ``ensure`` (every
source of a split, in one or several processes) and ``command`` (``edgedistill cache``).
"""

from __future__ import annotations

from edgedistill.cache.command import cache_command, format_summary
from edgedistill.cache.ensure import ensure_cache
from edgedistill.cache.gathered import Gathered, gather
from edgedistill.cache.pixels import PixelCache, pixel_cache
from edgedistill.cache.shards import CacheJob, rank_world, run_shards
from edgedistill.cache.store import (
    EVAL_VIEW,
    FORMAT_VERSION,
    CacheDamagedError,
    ShardedArray,
    TeacherCache,
    cache_path,
    source_id,
    view_name,
)
from edgedistill.cache.teacher import TeacherViews, cache_source, plan_cache, run_cache

__all__ = ["EVAL_VIEW", "FORMAT_VERSION", "CacheDamagedError", "CacheJob", "Gathered", "PixelCache", "ShardedArray",
           "TeacherCache", "TeacherViews", "cache_command", "cache_path", "cache_source", "ensure_cache", "format_summary",
           "gather", "pixel_cache", "plan_cache", "rank_world", "run_cache", "run_shards", "source_id", "view_name"]
