"""Two "nodes" of one CPU process each on localhost, launched by torchrun as on a cluster (``--nnodes 2
--node_rank 0/1 --master_addr 127.0.0.1``): ``cache`` splits the shards by global rank and equals a one-process
cache; ``train --train.num_nodes 2`` trains with DDP and leaves one consistent run directory."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY, TINY_CLIP, tiny_teacher_cfg
from edgedistill import storage
from edgedistill.cache import ensure_cache
from edgedistill.config import DataConfig
from test_faults import _folder

ROOT = Path(__file__).resolve().parents[1]

# What each node runs: the CLI, with the tiny test model registered and every shard written slowly
# (so that both nodes get shards to compute on a busy 2-core machine).
NODE = textwrap.dedent(f"""
    import sys, time
    from edgedistill.teachers.openclip import register_model_config
    register_model_config({TINY!r}, {TINY_CLIP!r})
    from edgedistill.cache import store
    from edgedistill.cli import main
    write = store.write_shard
    def slow(*args, **kwargs):
        write(*args, **kwargs)
        time.sleep(0.3)
    store.write_shard = slow
    sys.exit(main(sys.argv[1:]))
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_nodes(tmp_path: Path, args: list[str]) -> None:
    script = tmp_path / "node.py"
    script.write_text(NODE)
    port = _free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1", EDGEDISTILL_NO_PROGRESS="1")
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    procs = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
                               "--node_rank", str(rank), "--master_addr", "127.0.0.1", "--master_port", str(port),
                               str(script), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for rank in (0, 1)]
    outs = [p.communicate(timeout=400)[0] for p in procs]
    for rank, (p, out) in enumerate(zip(procs, outs)):
        assert p.returncode == 0, f"node {rank}:\n{out[-4000:]}"


TEACHER = ["--teacher.kind", "openclip", "--teacher.model", TINY, "--teacher.pretrained", "random", "--teacher.device", "cpu",
           "--teacher.batch_size", "16"]


@pytest.mark.slow
def test_cache_on_two_nodes_equals_one_process(tmp_path: Path) -> None:
    folder = _folder(tmp_path / "data", n=16)
    _two_nodes(tmp_path, ["cache", "--data.dataset", "imagefolder", "--data.root", str(folder), "--data.val_fraction", "0",
                          "--split", "train", *TEACHER, "--cache_dir", str(tmp_path / "cache"), "--shard_size", "6",
                          "--num_workers", "0"])
    data = DataConfig(dataset="imagefolder", root=str(folder), val_fraction=0.0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        (one,) = ensure_cache(data, tiny_teacher_cfg(), "train", tmp_path / "one", shard_size=6, num_workers=0).values()
        (two,) = ensure_cache(data, tiny_teacher_cfg(), "train", tmp_path / "cache", shard_size=6, num_workers=0).values()
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_array_equal(np.asarray(two.embedding), np.asarray(one.embedding))
    assert {s["rank"] for s in two.manifest["shards"]} == {0, 1}  # each node computed shards


@pytest.mark.slow
def test_train_on_two_nodes_leaves_one_consistent_run(tmp_path: Path) -> None:
    folder = _folder(tmp_path / "data", n=8)
    out = tmp_path / "runs"
    _two_nodes(tmp_path, ["train", "--data.dataset", "imagefolder", "--data.root", str(folder), "--data.val_fraction",
                          "0.25", *TEACHER, "--train.target", "logits", "--train.head", "text", "--train.student",
                          "test_resnet", "--train.image_size", "16", "--train.epochs", "1", "--train.batch_size", "3",
                          "--train.num_nodes", "2", "--train.devices", "1", "--train.accelerator", "cpu",
                          "--train.out_dir", str(out), "--train.name", "nodes", "--train.cache_dir", str(tmp_path / "cache")])
    run = out / "nodes"
    m = storage.read_json(run / "metrics.json")
    assert m["finished"] and m["num_nodes"] == 2
    assert m["history"][0]["step"] == 3  # 18 training images over 2 nodes x 3 per batch: 3 steps, not 6
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "config.yaml", "logs", "metrics.json",
                                                    "student.json", "student.safetensors"]
    caches = [p for p in (tmp_path / "cache").rglob("manifest.json") if "pixels" not in p.parts]
    assert caches and all({s["rank"] for s in storage.read_json(p)["shards"]} <= {0, 1} for p in caches)
