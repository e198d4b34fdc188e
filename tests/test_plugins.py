"""Plugins: a module outside the package registers a teacher, a head and a loss (one line each), and a tiny
``distill`` runs through all three from a YAML config, through the command line; the registries are the only
source of the config's choices, so names registered after import are valid."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from edgedistill import registry
from edgedistill.cli import main
from edgedistill.config import DistillConfig, TeacherConfig, from_dict
from edgedistill.errors import ConfigError
from test_distill import write_user_folder

PLUGIN = '''
"""A user's plugin: a teacher, a head and a loss, each its own class or function plus one registry line."""
import torch
import torch.nn.functional as F
from torch import nn

from edgedistill.data.views import ViewSpec
from edgedistill.losses import trains
from edgedistill.registry import HEADS, LOSSES, TEACHERS
from edgedistill.teachers.base import Teacher, make_fingerprint, state_dict_sha256

CALLS = {"teacher": 0, "head": 0, "loss": 0}


class ColourTeacher(Teacher):
    """Mean colour of each image quadrant through a fixed random projection: an embedding, no text, no logits."""

    def __init__(self) -> None:
        super().__init__()
        self.name, self.embed_dim = "colour-teacher", 16
        self.proj = nn.Linear(12, 16)  # drawn under create_teacher's fixed seed: every process gets the same
        self.view = ViewSpec(image_size=16, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), interpolation="bilinear")
        self.fingerprint = make_fingerprint(self.name, state_dict_sha256(self), self.view)
        self.freeze()

    def _forward(self, x):
        quads = F.adaptive_avg_pool2d(x, 2).flatten(1)  # [B, 3 * 2 * 2]
        return {"embedding": self.proj(quads)}


class PrototypeHead(nn.Module):
    """Zero-shot from class names alone: each class a seeded random prototype; logits = 10 * cos(embedding, it)."""

    kind, reads, needs_labels, title = "prototype", "embedding", False, "prototype head"

    def __init__(self, prototypes):
        super().__init__()
        self.register_buffer("prototypes", F.normalize(prototypes.float(), dim=-1))

    @classmethod
    def fits(cls, teacher):
        return True

    @classmethod
    def build(cls, ctx):
        CALLS["head"] += 1
        gen = torch.Generator().manual_seed(len(ctx.classes))
        return cls(torch.randn(len(ctx.classes), ctx.teacher.embed_dim, generator=gen))

    @property
    def num_classes(self):
        return self.prototypes.shape[0]

    def forward(self, emb):
        return 10 * F.normalize(emb.float(), dim=-1) @ self.prototypes.T

    def arguments(self):
        return {}

    @classmethod
    def from_saved(cls, args, tensors):
        return cls(tensors["prototypes"])


@trains("logits")
def l1_kd(out, cfg):
    """Mean absolute difference of the student's and the teacher's class probabilities."""
    CALLS["loss"] += 1
    kd = (out.output.float().softmax(-1) - out.teacher.softmax(-1)).abs().sum(-1).mean()
    return {"loss": cfg.kd_weight * kd, "kd": kd.detach()}


def colour_teacher(cfg, device):
    CALLS["teacher"] += 1
    return ColourTeacher()


TEACHERS.register("colour", colour_teacher)
HEADS.register("prototype", PrototypeHead)
LOSSES.register("l1_kd", l1_kd)
'''


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """``my_plugin.py`` written outside the package, importable by name; the registries restored afterwards."""
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "my_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(folder))
    saved = {reg: dict(reg.entries) for reg in (registry.TEACHERS, registry.HEADS, registry.LOSSES)}
    yield folder / "my_plugin.py"
    for reg, entries in saved.items():
        reg._entries = entries
    registry._loaded.clear()
    sys.modules.pop("my_plugin", None)
    sys.modules.pop("edgedistill_plugin_my_plugin", None)


def _distill_yaml(tmp_path: Path, plugins: list[str]) -> Path:
    write_user_folder(tmp_path / "data", n_train=6, n_test=3, n_unlabeled=6)
    out = tmp_path / "out"
    raw = {
        "name": "plugged", "out": str(out), "cache_dir": str(tmp_path / "cache"), "plugins": plugins,
        "data": {"dataset": "imagefolder", "root": str(tmp_path / "data"), "unlabeled": [str(tmp_path / "data" / "extra")],
                 "val_fraction": 0.3},
        "teacher": {"kind": "colour", "device": "cpu", "batch_size": 16},
        "heads": {"zero_shot": "prototype", "probe": False},
        "train": {"student": "test_resnet", "image_size": 16, "epochs": 1, "batch_size": 8, "num_workers": 0,
                  "lr": 0.05, "warmup_epochs": 0.0, "aug": False},
        "students": [{"name": "kd", "train": {"target": "logits", "head": "prototype", "loss": "l1_kd",
                                              "train_split": "train+unlabeled"}}],
        "deploy": {"int8": False, "batch_sizes": [2], "warmup": 0, "iters": 2, "tutorial_teacher": None},
    }
    path = tmp_path / "distill.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.slow
def test_plugin_teacher_head_and_loss_run_a_distill_from_yaml(tmp_path: Path, plugin: Path, capsys) -> None:
    config = _distill_yaml(tmp_path, ["my_plugin"])
    assert main(["distill", "--config", str(config)]) == 0, capsys.readouterr().err

    calls = sys.modules["my_plugin"].CALLS
    assert calls["teacher"] >= 1 and calls["head"] >= 1 and calls["loss"] >= 1  # each plugin entry did the work
    r = json.loads((tmp_path / "out" / "results.json").read_text())
    assert list(r["teacher"]["heads"]) == ["prototype"] and r["teacher"]["describe"].startswith("colour:")
    assert r["best_student"] == "kd" and r["students"][0]["head"] == "prototype"
    assert r["students"][0]["loss"] == "l1_kd"
    assert (tmp_path / "out" / "exports" / "teacher" / "model.onnx").is_file()  # the plugin teacher exported too
    log = (Path(r["students"][0]["run_dir"]) / "logs" / "session0" / "metrics.csv").read_text()
    assert "train/kd" in log.splitlines()[0]


def test_plugin_by_path_makes_its_names_valid_choices(tmp_path: Path, plugin: Path) -> None:
    with pytest.raises(ConfigError, match="teacher.kind='colour' is invalid; valid: openclip, timm, efficientnet_lite0$"):
        TeacherConfig(kind="colour")
    raw = {"plugins": [str(plugin)], "teacher": {"kind": "colour"}, "heads": {"zero_shot": "prototype"},
           "students": [{"name": "kd", "train": {"target": "logits", "head": "prototype", "loss": "l1_kd"}}]}
    cfg = from_dict(DistillConfig, raw, "test")  # the plugin is imported before the sections that name its entries
    assert cfg.teacher.kind == "colour" and "l1_kd" in registry.LOSSES and "prototype" in registry.HEADS
    assert TeacherConfig(kind="colour").kind == "colour"  # registered after import: valid from now on


def test_unknown_plugin_is_one_line(tmp_path: Path, capsys) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"plugins": ["no_such_plugin_module"], "teacher": {"kind": "colour"}}))
    assert main(["distill", "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert "plugins: cannot import 'no_such_plugin_module' (ModuleNotFoundError" in err and len(err.splitlines()) == 1
    with pytest.raises(ConfigError, match="Teacher kind 'openclip' is already registered"):
        registry.TEACHERS.register("openclip", object)
    with pytest.raises(ConfigError, match="Unknown loss 'nope'. Valid: ce, kd, feature"):
        registry.LOSSES["nope"]


def test_help_lists_the_live_registry(plugin: Path, capsys) -> None:
    import my_plugin  # noqa: F401 - registers colour, prototype, l1_kd

    assert main(["train", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "(valid: openclip, timm, efficientnet_lite0, colour)" in out
    assert "(valid: ce, kd, feature, l1_kd)" in out


def test_choice_fields_refuse_wrong_shapes() -> None:
    from edgedistill.config import DeploySettings

    with pytest.raises(ConfigError, match=r"teacher.kind=\['openclip'\] is invalid; valid: openclip"):
        TeacherConfig(kind=["openclip"])  # a list where one name goes
    with pytest.raises(ConfigError, match="deploy.runtimes='onnxruntime' is invalid; give a list of: "):
        DeploySettings(runtimes="onnxruntime")
    with pytest.raises(ConfigError, match="teacher.kind=3 is invalid"):
        TeacherConfig(kind=3)


def test_installed_plugin_by_entry_point(tmp_path: Path, plugin: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An installed package lists its plugin module under the entry-point group; the first registry read imports it."""
    dist = tmp_path / "site" / "my_plugin_pkg-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-plugin-pkg\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[{registry.ENTRY_POINT_GROUP}]\nmine = my_plugin\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setattr(registry, "_entry_points_loaded", False)
    assert "colour" in registry.TEACHERS and TeacherConfig(kind="colour").kind == "colour"
