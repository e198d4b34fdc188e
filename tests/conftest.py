"""Shared fixtures: tiny datasets and a tiny open_clip model, written by the tests (offline, seconds).

- ``TINY_CLIP``: one tiny open_clip config, registered once (open_clip's public ``add_model_config``)
  as ``edgedistill-tiny``; ``tiny_teacher_cfg()`` is a random-init openclip teacher of it.
- ``stl10_root``: STL10 in the official binary layout, with an orientation pattern.
- ``image_folder``: a small labeled ImageFolder of PNGs and JPEGs, class-coloured.
- ``demo_root``: the bundled CIFAR-10 demo archive, extracted once per session.
- ``write_cifar10_batches`` / ``cifar10_official_md5``: CIFAR-10 python files in the official format
  (Python 2 pickles, str keys), and torchvision's md5 table pointed at them for the test.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("EDGEDISTILL_NO_PROGRESS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")  # tiny models on 2 cores: more threads only contend (children inherit it)

TINY = "edgedistill-tiny"
TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


import torch  # noqa: E402

torch.set_num_threads(1)


def _register_tiny() -> None:
    from edgedistill.teachers.openclip import register_model_config

    register_model_config(TINY, TINY_CLIP)


_register_tiny()


def fit_briefly(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 10) -> torch.nn.Module:
    """A few Adam steps so predictions are confident (a random-init model's near-ties flip under any noise).

    One thread: two threads on a shared 2-core machine run about ten times slower. BatchNorm's
    running statistics are refreshed on the training images before switching to eval mode.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        model.train()
        for _ in range(steps):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        with torch.no_grad():
            for _ in range(5):
                model(x)
    finally:
        torch.set_num_threads(threads)
    return model.eval()


def save_tiny_run(run: Path, train: list[tuple[np.ndarray, int]], class_names: list[str], view: dict,
                  **meta) -> torch.nn.Module:
    """A ``test_resnet`` student fitted briefly on ``train`` ((image [3, S, S], label) pairs) and saved as a run folder
    (``student.safetensors`` + ``student.json`` with ``meta``); returns the model in eval mode."""
    from edgedistill import storage
    from edgedistill.students import create_student

    torch.manual_seed(0)
    model = fit_briefly(create_student("test_resnet", len(class_names)), torch.from_numpy(np.stack([x for x, _ in train])),
                        torch.tensor([y for _, y in train]))
    storage.save_safetensors(run / "student.safetensors", model.state_dict())
    storage.write_json(run / "student.json", {"arch": "test_resnet", "num_outputs": len(class_names),
                                              "class_names": class_names, "view": view, **meta})
    return model


def tiny_teacher_cfg(**kw):
    """A TeacherConfig of the tiny random-init open_clip model (same weights in every process: seeded)."""
    from edgedistill.config import TeacherConfig

    return TeacherConfig(**{"kind": "openclip", "model": TINY, "pretrained": "random", "device": "cpu",
                            "batch_size": 16, **kw})


STL10_SIZES = {"train": 20, "test": 10, "unlabeled": 7}
STL10_TOP_ROWS = 8  # rows 0..7 red
STL10_LEFT_COLS = 8  # columns 0..7 (below the red rows) green
IMAGE_FOLDER_CLASSES = ("cat", "dog", "ship")
IMAGE_FOLDER_COLOURS = {"cat": (220, 40, 40), "dog": (40, 220, 40), "ship": (40, 40, 220)}
CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def stl10_pattern(i: int) -> np.ndarray:
    """Image ``i`` of the fake STL10 as ``[96, 96, 3]`` uint8, upright.

    Top rows red, left columns green, the rest blue with an index-dependent value, so a
    transposed (sideways) read puts red on the left and is caught.
    """
    img = np.zeros((96, 96, 3), dtype=np.uint8)
    img[:, :, 2] = 50 + i % 200
    img[:, :STL10_LEFT_COLS] = (0, 255, 0)
    img[:STL10_TOP_ROWS] = (255, 0, 0)
    return img


def write_stl10(root: Path, sizes: dict[str, int] = STL10_SIZES) -> Path:
    """Write ``root/stl10_binary/`` as the official files; labels of image i are ``i % 10 + 1``."""
    d = root / "stl10_binary"
    d.mkdir(parents=True, exist_ok=True)
    offset = 0
    for part, n in sizes.items():
        # Official layout: per image [3, 96, 96] with each channel column-major, i.e. [3, W, H].
        x = np.stack([stl10_pattern(offset + i).transpose(2, 1, 0) for i in range(n)])
        x.tofile(d / f"{part}_X.bin")
        if part != "unlabeled":
            (np.arange(n) % 10 + 1).astype(np.uint8).tofile(d / f"{part}_y.bin")
        offset += n
    (d / "class_names.txt").write_text("\n".join(["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]) + "\n")
    return root


def cifar10_image(i: int) -> np.ndarray:
    """Image ``i`` of the fake CIFAR-10, ``[32, 32, 3]`` uint8: a different value per channel, so a swap shows."""
    img = np.empty((32, 32, 3), dtype=np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = i % 251, 100, 200
    img[0, :, 0] = 255  # top row: orientation
    return img


def write_cifar10_batches(root: Path, per_batch: int = 6, test: int = 5) -> Path:
    """``root/cifar-10-batches-py/`` as the official release writes it.

    The official files are Python 2 pickles: dicts with str keys (``'data'`` rows of 3072 uint8,
    channel-major; ``'labels'``), protocol 2, read back with ``encoding='latin1'``.
    """
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True, exist_ok=True)
    i = 0
    for name, n in [(f"data_batch_{k}", per_batch) for k in range(1, 6)] + [("test_batch", test)]:
        rows = np.stack([cifar10_image(i + j).transpose(2, 0, 1).reshape(-1) for j in range(n)])
        labels = [(i + j) % 10 for j in range(n)]
        with open(d / name, "wb") as f:
            pickle.dump({"batch_label": f"{name} of 6", "labels": labels, "data": rows,
                         "filenames": [f"img_{i + j}.png" for j in range(n)]}, f, protocol=2)
        i += n
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({"label_names": CIFAR10_NAMES, "num_cases_per_batch": per_batch, "num_vis": 3072}, f, protocol=2)
    return root


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def cifar10_official_md5(monkeypatch: pytest.MonkeyPatch):
    """Point torchvision's table of official CIFAR-10 md5s at the files a test wrote (returns the patcher)."""
    from torchvision.datasets import CIFAR10

    def patch(folder: Path) -> None:
        monkeypatch.setattr(CIFAR10, "train_list", [[f"data_batch_{k}", _md5(folder / f"data_batch_{k}")] for k in range(1, 6)])
        monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", _md5(folder / "test_batch")]])
        monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": _md5(folder / "batches.meta")})

    return patch


@pytest.fixture(autouse=True)
def _warnings_once_per_test():
    """``console.warn_once`` shows a message once per process; each test is its own 'process' here."""
    from edgedistill import console

    console._warned.clear()


@pytest.fixture(scope="session")
def stl10_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding ``stl10_binary/`` (train 20, test 10, unlabeled 7 images; 96x96)."""
    return write_stl10(tmp_path_factory.mktemp("stl10"))


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """``<root>/{cat,dog,ship}/NN.{png,jpg}``: 6 images per class, 32x32, coloured by class plus noise."""
    rng = np.random.default_rng(0)
    root = tmp_path / "folder"
    for c in IMAGE_FOLDER_CLASSES:
        (root / c).mkdir(parents=True)
        for k in range(6):
            arr = np.clip(np.array(IMAGE_FOLDER_COLOURS[c]) + rng.integers(-30, 30, (32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(root / c / f"{k:02d}.{'png' if k % 2 else 'jpg'}")
    return root


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled CIFAR-10 demo extracted once: ``labeled/``, ``eval/``, ``unlabeled/``."""
    from edgedistill.data.sources import extract_demo

    return extract_demo(tmp_path_factory.mktemp("demo") / "cifar10-demo")


# ----------------------------------------------------------------------------- what a user without privileges meets

CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 1, 2  # linux/capability.h
PR_CAPBSET_DROP = 24  # linux/prctl.h


def _drop_file_permission_override() -> None:
    """In the child before exec: drop root's power to ignore file modes from the capability bounding set, so the
    program exec'd next runs as uid 0 but meets chmod like any user (what ``capsh --drop=...`` does)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) refused")


def run_unprivileged(script: str, *args: str, fsize: int | None = None, timeout: float = 300):
    """Run ``python -c script args...`` as a user without privileges meets the disk: file modes are obeyed (root
    drops CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH first), and with ``fsize`` no file may grow past that many bytes
    (``RLIMIT_FSIZE``; SIGXFSZ ignored, so the write fails with EFBIG as on a full quota). Returns the
    CompletedProcess (text)."""
    import resource
    import signal
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]

    def limit() -> None:
        if os.geteuid() == 0:
            _drop_file_permission_override()
        if fsize is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    env = dict(os.environ, OMP_NUM_THREADS="1", EDGEDISTILL_NO_PROGRESS="1", PYTHONDONTWRITEBYTECODE="1")
    env["PYTHONPATH"] = os.pathsep.join([str(root / "src"), str(root / "tests"), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True, text=True,
                          timeout=timeout, preexec_fn=limit)


CLI_CHILD = "import sys\nfrom conftest import _register_tiny\nfrom edgedistill.cli import main\nsys.exit(main(sys.argv[1:]))\n"
"""``run_unprivileged(CLI_CHILD, *argv)``: the CLI, with the tiny test teacher registered."""
