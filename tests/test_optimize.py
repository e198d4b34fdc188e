"""``edgedistill optimize`` on a tiny distilled student: INT8 QAT (calibrate, fine-tune with the KD loss, QDQ export,
ONNX Runtime parity), 2:4 sparsity (exact masks after fine-tune steps, skipped layers listed), both, resume and
reuse, and one clear line when NVIDIA Model Optimizer is missing (that test runs without it too; the others need
``pip install '.[optimize]'``). CPU, offline, ~1 min; the first ModelOpt test pays its import (6-20 s)."""

from __future__ import annotations

import collections
import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import yaml
from PIL import Image

from conftest import IMAGE_FOLDER_CLASSES, IMAGE_FOLDER_COLOURS, tiny_teacher_cfg
from edgedistill import storage
from edgedistill.config import DataConfig, OptimizeConfig, TrainConfig
from edgedistill.deploy import export as ex
from edgedistill.deploy.runtime import ort_session, read_metadata
from edgedistill.errors import ConfigError, EdgeDistillError
from edgedistill.students import create_student, load_student
from edgedistill.training import modelopt as mo_adapter
from edgedistill.training import optimize as op
from edgedistill.training import recipes

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)
needs_modelopt = pytest.mark.skipif(importlib.util.find_spec("modelopt") is None,
                                    reason="nvidia-modelopt is not installed (pip install '.[optimize]')")


def _write_folder(root: Path, n: int = 12, size: int = 16) -> Path:
    """``root/train/<class>/NN.png``: class-coloured noisy images."""
    rng = np.random.default_rng(0)
    for c in IMAGE_FOLDER_CLASSES:
        (root / "train" / c).mkdir(parents=True)
        for k in range(n):
            arr = np.clip(np.array(IMAGE_FOLDER_COLOURS[c]) + rng.integers(-60, 60, (size, size, 3)), 0, 255)
            Image.fromarray(arr.astype(np.uint8)).save(root / "train" / c / f"{k:02d}.png")
    return root


@pytest.fixture(scope="module")
def kd_run(tmp_path_factory) -> Path:
    """A test_resnet distilled (response KD, the tiny CLIP's text head, cached targets) for 2 epochs: ~3 s."""
    from edgedistill.training.fit import train

    root = tmp_path_factory.mktemp("opt")
    data = DataConfig(dataset="imagefolder", root=str(_write_folder(root / "data")), val_fraction=0.25)
    cfg = TrainConfig(student="test_resnet", image_size=16, epochs=2, batch_size=6, num_workers=0, lr=0.05,
                      warmup_epochs=0.5, aug=False, target="logits", head="text", out_dir=str(root / "runs"), name="kd",
                      cache_dir=str(root / "cache"))
    return train(data, tiny_teacher_cfg(), cfg)


def _opt(run: Path, **kw) -> OptimizeConfig:
    return OptimizeConfig(model=str(run), calib_size=8, **kw)


def _ops(path: Path) -> collections.Counter:
    return collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def _masked(model) -> dict:
    return {n: m for n, m in model.named_modules()
            if getattr(m, "_weight_mask", None) is not None and not bool(m._weight_mask.all())}


# ----------------------------------------------------------------------------- pure pieces


def test_two_of_four_check_and_skip_reasons():
    w = torch.tensor([[1.0, 0.0, 2.0, 0.0, 0.0, 0.0, 3.0, 4.0]])  # [out 1, in 8]: groups (1,0,2,0) (0,0,3,4)
    assert mo_adapter.is_two_of_four(w)
    assert not mo_adapter.is_two_of_four(torch.tensor([[1.0, 2.0, 3.0, 0.0]]))
    assert not mo_adapter.is_two_of_four(torch.zeros(4, 6))  # 6 input channels: no groups of 4
    conv = torch.zeros(2, 4, 3, 3)  # groups run along the input channels at every (k, r, s)
    conv[:, :2] = 1.0
    assert mo_adapter.is_two_of_four(conv)
    conv[0, 2, 1, 1] = 1.0
    assert not mo_adapter.is_two_of_four(conv)
    assert mo_adapter.skip_reason([16, 3, 3, 3], "magnitude") == "in=3 is not a multiple of 16"
    assert mo_adapter.skip_reason([10, 256], "magnitude") == "out=10 is not a multiple of 8"
    assert mo_adapter.skip_reason([12, 6], "sparsegpt") == "in=6 is not a multiple of 4"
    assert mo_adapter.skip_reason([16, 32], "magnitude") == "excluded by ModelOpt's rules"


def test_config_checks_and_recipes(tmp_path):
    assert OptimizeConfig(qat=True).recipe() == "qat"
    assert OptimizeConfig(sparsity="2:4").recipe() == "sparse24"
    assert OptimizeConfig(sparsity="2:4", qat=True).recipe() == "sparse24-qat"
    with pytest.raises(ConfigError, match=r"optimize.sparsity='1:4' is invalid; valid: 2:4"):
        OptimizeConfig(sparsity="1:4")
    with pytest.raises(ConfigError, match=r"optimize.lr_scale=0 is invalid"):
        OptimizeConfig(qat=True, lr_scale=0)
    with pytest.raises(ConfigError, match="nothing to do"):
        op.optimize(OptimizeConfig(model=str(tmp_path)))
    with pytest.raises(ConfigError, match="needs --model"):
        op.optimize(OptimizeConfig(qat=True))
    with pytest.raises(ConfigError, match="not a finished training run"):
        op.optimize(OptimizeConfig(model=str(tmp_path), qat=True))


def test_cli_parses_sparsity_and_refuses_bad_values(capsys):
    from edgedistill import cli

    parser, _ = cli.build_parser("optimize")
    cfg = parser.parse_args(["--model", "runs/x", "--sparsity", "2:4", "--qat", "true"])
    assert cfg.sparsity == "2:4" and cfg.qat is True and cfg.model == "runs/x"
    assert cli.main(["optimize", "--model", "runs/x", "--sparsity", "4:8"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "sparsity" in err and "2:4" in err


# ----------------------------------------------------------------------------- QAT


@pytest.fixture(scope="module")
def qat_stage(kd_run) -> Path:
    return op.optimize(_opt(kd_run, qat=True))


@needs_modelopt
def test_qat_calibrates_finetunes_and_records(kd_run, qat_stage):
    assert qat_stage == kd_run / "optimize" / "qat"
    recipe = storage.read_json(qat_stage / "recipe.json")
    assert recipe["finished"] and recipe["qat"] and recipe["precision"] == "qat-int8" and recipe["sparsity"] is None
    cal = recipe["calibration"]
    assert cal["split"] == "train" and cal["images"] == 8 and sum(map(len, cal["indices"].values())) == 8
    q = recipe["quantization"]
    assert q["quantized_layers"] == 16 and q["not_quantized"] == [] and q["quantizers_enabled"] > 16
    # the fine-tune is the run's own KD loss at a tenth of the learning rate, for a tenth of the epochs (at least 1)
    run_cfg = yaml.safe_load((kd_run / "config.yaml").read_text())["train"]
    ft_cfg = yaml.safe_load((qat_stage / "config.yaml").read_text())["train"]
    assert ft_cfg["lr"] == pytest.approx(0.1 * run_cfg["lr"]) and ft_cfg["epochs"] == 1 and ft_cfg["warmup_epochs"] == 0
    assert {k: ft_cfg[k] for k in ("target", "head", "temperature", "kd_weight", "ce_weight", "train_split")} == \
        {k: run_cfg[k] for k in ("target", "head", "temperature", "kd_weight", "ce_weight", "train_split")}
    metrics = storage.read_json(qat_stage / "metrics.json")
    assert metrics["finished"] and metrics["history"][0]["step"] == 4  # 27 training images / 6 per batch, last dropped
    assert np.isfinite(metrics["history"][0]["train_loss"]) and "train_kd" in metrics["history"][0]
    assert recipe["accuracy"]["best_val_acc"] == metrics["best_val_acc"]
    assert recipe["finetune"]["lr"] == ft_cfg["lr"] and recipe["finetune"]["loss"] == "logits"

    # Restored from student.json + JSON state + safetensors: the model Lightning validated, ranges as calibrated.
    model, manifest, _ = recipes.load_optimized_student(qat_stage)
    start = mo_adapter.load_modelopt(lambda: mo_adapter.prepare_student(create_student("test_resnet", 3)), mo_adapter.require_modelopt("t"),
                             qat_stage / "start")
    amax = {k: v for k, v in model.state_dict().items() if k.endswith("_amax")}
    assert amax and all(torch.equal(v, start.state_dict()[k]) for k, v in amax.items())  # fixed during QAT
    assert not torch.equal(model.state_dict()["layer1.0.conv1.weight"], start.state_dict()["layer1.0.conv1.weight"])
    best = torch.load(qat_stage / metrics["best_checkpoint"], weights_only=True)["state_dict"]
    assert all(torch.equal(v, best[f"student.{k}"]) for k, v in model.state_dict().items())
    # student.safetensors is the plain student: loads without ModelOpt, same weights, no fake quantization
    plain, _ = load_student(qat_stage)
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        fq, fp = model(x), plain(x)
    assert torch.equal(plain.state_dict()["layer1.0.conv1.weight"], model.state_dict()["layer1.0.conv1.weight"])
    assert not torch.equal(fq, fp) and torch.allclose(fq, fp, atol=0.1 * float(fp.abs().max()) + 1e-3)


@needs_modelopt
def test_qat_qdq_export_runs_in_onnx_runtime_with_parity(qat_stage, tmp_path):
    ex.export_command(str(qat_stage), out=str(tmp_path / "exp"), tensorrt=True)
    out = tmp_path / "exp" / "student"
    report = storage.read_json(out / "export.json")
    assert report["files"] == {"fp32": "model.onnx", "int8": "model.int8.onnx"}  # tensorrt: none here, says why
    assert report["tensorrt"]["available"] is False or "tensorrt_int8" in report["files"]
    ops = _ops(out / "model.int8.onnx")
    assert ops["QuantizeLinear"] >= 16 and ops["DequantizeLinear"] >= 16 and "QuantizeLinear" not in _ops(out / "model.onnx")
    meta = read_metadata(out / "model.int8.onnx")
    assert meta.precision == "qat-int8" and meta.extra["optimize"]["recipe"] == "qat"
    assert read_metadata(out / "model.onnx").precision == "fp32"
    assert set(report["parity_int8_vs_fake_quant"]) == {"random", "real"}
    assert "fp32" in report["accuracy"] and "int8" in report["accuracy"]
    # ONNX Runtime vs the fake-quantized PyTorch model on inputs export never saw: batch 5, 24 px, real-like range
    model, _, _ = recipes.load_optimized_student(qat_stage)
    x = torch.randn(5, 3, 24, 24, generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        ref = model(x).numpy()
    got = ort_session(out / "model.int8.onnx").run(None, {"image": x.numpy()})[0]
    assert got.shape == (5, 3)
    assert np.abs(got - ref).max() <= 0.05 * np.abs(ref).max() + 1e-4
    assert (got.argmax(1) == ref.argmax(1)).all()


# ----------------------------------------------------------------------------- 2:4 sparsity


@pytest.fixture(scope="module")
def sparse_stage(kd_run) -> Path:
    return op.optimize(_opt(kd_run, sparsity="2:4", max_steps=3))


@needs_modelopt
def test_sparse_masks_exact_after_finetune_and_skips_listed(kd_run, sparse_stage, capsys):
    recipe = storage.read_json(sparse_stage / "recipe.json")
    rep = recipe["sparsity_report"]
    assert recipe["precision"] == "sparse-fp32" and not recipe["qat"] and recipe["calibration"] is None
    assert rep["sparse_layers"] == 14 and rep["layers"] == 16 and rep["all_sparse_layers_two_of_four"]
    assert rep["skipped"] == [{"layer": "conv1.0", "shape": [16, 3, 3, 3], "reason": "in=3 is not a multiple of 16"},
                              {"layer": "fc", "shape": [3, 96], "reason": "out=3 is not a multiple of 8"}]
    for layer in rep["per_layer"]:
        assert (layer["status"] == "2:4") == layer["two_of_four"]
        assert layer["zeros"] >= 0.5 if layer["status"] == "2:4" else layer["zeros"] < 0.5
    assert storage.read_json(sparse_stage / "metrics.json")["history"][-1]["step"] == 3
    # The masks held through 3 optimizer steps that changed the weights
    run_w = load_student(kd_run)[0].state_dict()
    model, _, _ = recipes.load_optimized_student(sparse_stage)  # plain timm student, zeros in its weights
    sd = model.state_dict()
    masked = [r["layer"] for r in rep["per_layer"] if r["status"] == "2:4"]
    assert all(mo_adapter.is_two_of_four(sd[f"{n}.weight"]) for n in masked)
    changed = [n for n in masked if not torch.equal(sd[f"{n}.weight"] != 0, run_w[f"{n}.weight"] != 0)
               or not torch.equal(sd[f"{n}.weight"], run_w[f"{n}.weight"] * (sd[f"{n}.weight"] != 0))]
    assert changed, "the fine-tune steps did not change the kept weights"
    mo = mo_adapter.require_modelopt("t")
    with_masks = mo_adapter.load_modelopt(lambda: mo_adapter.prepare_student(create_student("test_resnet", 3)), mo, sparse_stage)
    assert sorted(_masked(with_masks)) == sorted(masked)
    assert all(torch.equal(with_masks.get_submodule(n).weight, model.get_submodule(n).weight) for n in masked)


@needs_modelopt
def test_sparse_export_is_dense_with_zeros(sparse_stage, tmp_path):
    ex.export_command(str(sparse_stage), out=str(tmp_path / "exp"), int8=True)  # ORT's post-training INT8 on top
    out = tmp_path / "exp" / "student"
    report = storage.read_json(out / "export.json")
    assert read_metadata(out / "model.onnx").precision == "sparse-fp32"
    onnx_sp = report["optimize"]["onnx_sparsity"]["model.onnx"]
    assert onnx_sp["weights"] == 16 and onnx_sp["two_of_four"] == 14  # BN folded into the convs keeps the zeros
    assert report["parity"]["random"] < 1e-3 and report["files"]["int8"] == "model.int8.onnx"
    assert "QuantizeLinear" not in _ops(out / "model.onnx") and "Conv" in _ops(out / "model.onnx")


def _block_modelopt(monkeypatch) -> None:
    for name in ("modelopt", "modelopt.torch", "modelopt.torch.opt", "modelopt.torch.quantization",
                 "modelopt.torch.sparsity"):
        monkeypatch.setitem(sys.modules, name, None)  # import -> ImportError, as when it is not installed


def test_missing_modelopt_is_one_line_naming_the_extra(kd_run, tmp_path, monkeypatch, capsys):
    from edgedistill import cli

    _block_modelopt(monkeypatch)
    before = sorted(p.name for p in (kd_run / "optimize").iterdir()) if (kd_run / "optimize").exists() else []
    assert cli.main(["optimize", "--model", str(kd_run), "--sparsity", "2:4"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("error: edgedistill optimize needs NVIDIA Model Optimizer: pip install 'edgedistill[optimize]'")
    after = sorted(p.name for p in (kd_run / "optimize").iterdir()) if (kd_run / "optimize").exists() else []
    assert after == before  # refused before any work


@needs_modelopt
def test_exporting_a_qat_stage_without_modelopt_is_one_line(qat_stage, sparse_stage, tmp_path, monkeypatch, capsys):
    from edgedistill import cli

    _block_modelopt(monkeypatch)  # the stages were made with it; exporting the QAT one needs it, the 2:4 one does not
    assert cli.main(["export", "--model", str(qat_stage), "--out", str(tmp_path / "q")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "needs NVIDIA Model Optimizer: pip install 'edgedistill[optimize]'" in err
    assert cli.main(["export", "--model", str(sparse_stage), "--out", str(tmp_path / "s")]) == 0
    assert read_metadata(tmp_path / "s" / "student" / "model.onnx").precision == "sparse-fp32"


# ----------------------------------------------------------------------------- both, resume, reuse


@needs_modelopt
def test_combined_recipe_sparsifies_then_quantizes(kd_run, sparse_stage, tmp_path, capsys, monkeypatch):
    final = op.optimize(_opt(kd_run, sparsity="2:4", qat=True, max_steps=3))
    assert "sparse24 is finished with these settings; reusing it" in capsys.readouterr().err  # the sparse stage
    assert final == kd_run / "optimize" / "sparse24-qat"
    recipe = storage.read_json(final / "recipe.json")
    assert recipe["qat"] and recipe["sparsity"] == "2:4" and recipe["precision"] == "sparse-qat-int8"
    assert recipe["base"] == str(sparse_stage) and recipe["sparsity_report"]["all_sparse_layers_two_of_four"]
    assert recipe["finetune"]["stages_elapsed_s"] > recipe["finetune"]["elapsed_s"]
    model, _, _ = recipes.load_optimized_student(final)
    masked = _masked(model)
    assert len(masked) == 14 and all(mo_adapter.is_two_of_four(m.weight) for m in masked.values())
    assert all(m.weight_quantizer.is_enabled for m in masked.values())
    built = []  # TensorRT as the model asks: INT8 from the QDQ file, sparse weights allowed (faked: no GPU here)

    def fake_engine(src, dst, *, image_size, fp16=True, int8=False, sparse=False, **kw):
        built.append((Path(src).name, Path(dst).name, int8, sparse))
        Path(dst).write_bytes(b"engine")
        return Path(dst)

    monkeypatch.setattr(ex, "tensorrt_status", lambda: (True, "TensorRT 10 on a fake GPU"))
    monkeypatch.setattr(ex, "build_tensorrt_engine", fake_engine)
    ex.export_command(str(final), out=str(tmp_path / "exp"), tensorrt=True)
    out = tmp_path / "exp" / "student"
    report = storage.read_json(out / "export.json")
    assert read_metadata(out / "model.int8.onnx").precision == "sparse-qat-int8"
    assert report["optimize"]["onnx_sparsity"]["model.int8.onnx"]["two_of_four"] == 14  # through Q/DQ to the weights
    assert built == [("model.onnx", "model.fp16.engine", False, True), ("model.int8.onnx", "model.int8.engine", True, True)]
    assert report["files"]["tensorrt_int8"] == "model.int8.engine"


@needs_modelopt
def test_sparsegpt_failure_is_one_line_and_writes_nothing(kd_run, tmp_path):
    import shutil

    run = tmp_path / "kd"
    shutil.copytree(kd_run, run, ignore=shutil.ignore_patterns("optimize"))
    # 16 px: the last stage's 3x3 convs see 1x1 maps, which SparseGPT's unpadded unfold cannot take
    with pytest.raises(EdgeDistillError, match=r"sparsity_method=sparsegpt failed on this student \(.*\); use "
                                               r"sparsity_method=magnitude"):
        op.optimize(_opt(run, sparsity="2:4", sparsity_method="sparsegpt"))
    assert not (run / "optimize").exists()


@needs_modelopt
def test_interrupted_stage_resumes_and_a_finished_one_is_reused(kd_run, tmp_path, monkeypatch, capsys):
    import shutil

    from edgedistill.training.module import DistillModule

    run = tmp_path / "kd"  # a copy of the run: its optimize/ folder is this test's own
    shutil.copytree(kd_run, run, ignore=shutil.ignore_patterns("optimize"))

    def crash(self):
        if self.current_epoch == 1:
            raise RuntimeError("killed")

    monkeypatch.setattr(DistillModule, "on_train_epoch_start", crash, raising=False)
    cfg = _opt(run, sparsity="2:4", epochs=2, lr_scale=0.2)
    stage = run / "optimize" / "sparse24"
    with pytest.raises(RuntimeError, match="killed"):
        op.optimize(cfg)
    assert (stage / "checkpoints" / "last.ckpt").is_file() and not (stage / "recipe.json").exists()
    with pytest.raises(ConfigError, match="unfinished fine-tune; pass --resume true"):
        op.optimize(cfg)
    monkeypatch.undo()
    done = op.optimize(OptimizeConfig(**{**cfg.__dict__, "resume": True}))
    assert done == stage
    metrics = storage.read_json(done / "metrics.json")
    assert [h["epoch"] for h in metrics["history"]] == [0, 1] and metrics["finished"]
    assert storage.read_json(done / "recipe.json")["sparsity_report"]["all_sparse_layers_two_of_four"]
    before = (done / "recipe.json").stat().st_mtime_ns
    capsys.readouterr()
    op.optimize(cfg)  # finished with the same settings: reused, nothing retrained
    assert "reusing it" in capsys.readouterr().err and (done / "recipe.json").stat().st_mtime_ns == before
    with pytest.raises(ConfigError, match=r"other settings \(.*lr: 0\.01 -> 0\.005"):
        op.optimize(_opt(run, sparsity="2:4", epochs=2))


@needs_modelopt
def test_damaged_modelopt_state_is_one_line(qat_stage, tmp_path):
    import shutil

    copy = tmp_path / "qat"
    shutil.copytree(qat_stage, copy)
    state = storage.read_json(copy / "modelopt_state.json")
    storage.write_json(copy / "modelopt_state.json", {**state, "modelopt_state_dict": [{"__tuple__": ["nope", {}]}]})
    with pytest.raises(EdgeDistillError, match="does not hold a ModelOpt state of this student"):
        recipes.load_optimized_student(copy)
    (copy / "recipe.json").unlink()
    with pytest.raises(EdgeDistillError, match="has not finished"):
        recipes.load_optimized_student(copy)
