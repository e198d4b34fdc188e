"""Sharing a cache's shards between processes: ranks, one lock per shard, and the loop that claims and computes.

Processes share the work shard by shard: each takes an exclusive, non-blocking lock on a shard's
lock file (``filelock``: ``flock`` on Unix, so a lock dies with its process and a killed job leaves
nothing stale) before computing it, so concurrent ``cache`` jobs on one folder and the ranks of a
distributed job never repeat a shard. Each rank starts at its own offset
(``rank * num_shards / world``), so ranks on machines that share no lock still split the work;
whichever finds every shard done writes ``manifest.json``. The rank and world size come from
Lightning's cluster environments (torchrun, then SLURM), as training's do.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout
from lightning.fabric.plugins.environments import (
    ClusterEnvironment,
    LightningEnvironment,
    SLURMEnvironment,
    TorchElasticEnvironment,
)

from edgedistill import storage
from edgedistill.cache import store
from edgedistill.cache.store import FORMAT_VERSION, check_identity, check_shard, shard_stem
from edgedistill.console import progress, say
from edgedistill.errors import CacheMismatchError, EdgeDistillError


def cluster_environment() -> ClusterEnvironment:
    """The launcher this process runs under, as Lightning sees it: torchrun (``TORCHELASTIC_RUN_ID``), else an
    ``srun`` task of SLURM, else a lone process (rank 0 of 1).

    Raises:
        EdgeDistillError: SLURM variables Lightning refuses (e.g. ``--ntasks`` without ``--ntasks-per-node``).
    """
    if TorchElasticEnvironment.detect():
        return TorchElasticEnvironment()
    if SLURMEnvironment.detect():
        try:
            return SLURMEnvironment()
        except RuntimeError as e:  # Lightning's own check of the srun variables
            raise EdgeDistillError(f"SLURM environment refused: {e}") from None
    return LightningEnvironment()


def rank_world(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """This process's (rank, world size): explicit arguments, else :func:`cluster_environment`'s."""
    env = cluster_environment()
    world = env.world_size() if world_size is None else world_size
    r = env.global_rank() if rank is None else rank
    if not 0 <= r < world:
        raise EdgeDistillError(f"rank={r} is out of range for world_size={world}")
    return r, world


def shard_lock(folder: Path, k: int) -> FileLock:
    """The lock of shard ``k`` (``shard_k.lock``): exclusive, held while the shard is computed."""
    return FileLock(folder / f"{shard_stem(k)}.lock", thread_local=False, fallback_to_soft=False)  # flock only


@dataclass
class CacheJob:
    """One cache folder and its plan (what is computed, from which source, in which view)."""

    folder: Path
    plan: dict

    def check(self, recorded: dict) -> None:
        """Refuse to continue a folder whose recorded plan is another computation."""
        if recorded.get("format") != FORMAT_VERSION:
            raise CacheMismatchError(f"Cache {str(self.folder)!r} has format {recorded.get('format')}, this version "
                                     f"writes format {FORMAT_VERSION}; delete the folder to recompute it")
        if "teacher" in self.plan:
            check_identity(self.folder, recorded, self.plan["teacher"]["fingerprint"],
                            self.plan["source"]["identity"], self.plan["view"])
        elif recorded.get("source") != self.plan["source"] or recorded.get("view") != self.plan["view"]:
            raise CacheMismatchError(f"Cache {str(self.folder)!r} holds another source or view; delete the folder")


def make_job(folder: Path, plan: dict, shard_size: int) -> CacheJob:
    """A job for ``plan`` in ``folder``; an existing plan or manifest there must be the same computation."""
    job = CacheJob(folder, storage.jsonable(plan))
    for recorded_path in (folder / "manifest.json", folder / "plan.json"):
        if recorded_path.exists():  # resuming or repairing: the finished shards must come from the same computation
            old = storage.read_json(recorded_path)
            job.check(old)
            if old["shard_size"] != shard_size:
                say(f"{folder}: continuing with its recorded shard_size={old['shard_size']} (asked: {shard_size})")
            job.plan = {k: old[k] for k in job.plan}
            return job
    storage.write_json(folder / "plan.json", job.plan)  # every rank writes the same content; rename keeps it whole
    return job


def run_shards(job: CacheJob, compute, desc: str, *, rank: int | None = None, world_size: int | None = None,
               wait_timeout: float = 24 * 3600.0) -> None:
    """Compute every unfinished or damaged shard of ``job`` this process can claim, then wait for the manifest.

    Args:
        job: the folder and plan.
        compute: ``compute(start, stop, pbar) -> {name: array}`` for the rows of one shard (``valid`` included).
        desc: progress bar label.
        rank, world_size: this process's place among several; default: :func:`rank_world`.
        wait_timeout: seconds to wait for shards other processes hold.
    """
    rank, world = rank_world(rank, world_size)
    folder, plan = job.folder, job.plan
    K, S, N = plan["num_shards"], plan["shard_size"], plan["N"]
    if (folder / "manifest.json").exists():
        damaged = {k: why for k in range(K) if (why := check_shard(folder, plan, k))}
        if not damaged:
            return
        for k, why in damaged.items():
            say(f"{folder}: recomputing shard {k} ({why})")
            (folder / f"{shard_stem(k)}.meta.json").unlink(missing_ok=True)
        (folder / "manifest.json").unlink(missing_ok=True)

    def claim_and_compute(k: int, block: bool, pbar) -> bool:
        lock = shard_lock(folder, k)
        try:
            lock.acquire(blocking=block)
        except Timeout:
            return False  # another process is computing it
        try:
            if check_shard(folder, plan, k, full=False):  # not finished by someone else meanwhile
                t0 = time.perf_counter()
                start, stop = k * S, min((k + 1) * S, N)
                arrays = compute(start, stop, pbar)
                store.write_shard(folder, k, start, stop, arrays, time.perf_counter() - t0, rank)
        finally:
            lock.release()
        return True

    todo = [k for k in range(K) if check_shard(folder, plan, k, full=False)]
    if todo:
        offset = rank * K // world
        todo.sort(key=lambda k: (k - offset) % K)  # each rank starts at its own offset
        rows = sum(min((k + 1) * S, N) - k * S for k in todo)
        # Several processes share the shards: each bar counts about its share.
        with progress(-(-rows // world), desc + (f" [rank {rank}/{world}]" if world > 1 else ""),
                      position=rank if world > 1 else None) as pbar:
            waiting = [k for k in todo if not claim_and_compute(k, False, pbar)]
            for k in waiting:  # block until its holder is done (or died), then take it over if unfinished
                claim_and_compute(k, True, pbar)
    deadline = time.monotonic() + wait_timeout
    while not (folder / "manifest.json").exists():
        if not any(check_shard(folder, plan, k, full=False) for k in range(K)):
            store.write_manifest(folder, plan)  # several processes may race here: same shards, atomic rename
            break
        if time.monotonic() > deadline:  # ranks on other machines (no shared lock) still working
            missing = [k for k in range(K) if check_shard(folder, plan, k, full=False)]
            raise EdgeDistillError(f"Timed out after {wait_timeout:.0f}s waiting for other ranks to cache shards "
                                   f"{missing} of {str(folder)!r}; rerun to resume")
        time.sleep(0.5)


__all__ = ["CacheJob", "cluster_environment", "make_job", "rank_world", "run_shards", "shard_lock"]
