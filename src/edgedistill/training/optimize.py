"""INT8 quantization-aware training and 2:4 structured sparsity of a trained student, distillation-aware.

    edgedistill optimize --model runs/train/kd --qat true                   # <run>/optimize/qat/
    edgedistill optimize --model runs/train/kd --sparsity 2:4               # <run>/optimize/sparse24/
    edgedistill optimize --model runs/train/kd --sparsity 2:4 --qat true    # sparse24/, then sparse24-qat/ on it

Both go through NVIDIA Model Optimizer (``nvidia-modelopt``, the ``[optimize]`` extra), imported
only here and only when used (it takes 6-10 s to import). A stage fine-tunes the student with
the run's own recorded ``config.yaml`` (same data, teacher targets from the cache, head and
loss) at ``lr x lr_scale`` for a tenth of its epochs, through ``training.fit``'s
``build_run`` / ``fit_run`` / ``finalize_run``: the same checks, atomic checkpoints, resume and
``metrics.json`` as a training run.

* **QAT**: ``mtq.quantize(INT8_DEFAULT_CFG)``: int8 weights per output channel, int8 activations
  per tensor, ranges (amax) calibrated by their maximum on real training images (eval
  transform); then the fine-tune with fake quantization (straight-through gradients; the
  ranges stay fixed, the weights adapt to them).
* **2:4**: ``mts.sparsify`` with a magnitude mask: in every group of 4 consecutive input
  channels (at each output channel and kernel position) the 2 largest weights stay, the layout
  TensorRT's and cuSPARSELt's sparse kernels read. The mask rides in the model
  (``weight = raw * mask`` on every access), so no optimizer step can undo it. Layers that
  cannot take it (ModelOpt's rule: out channels % 8, in channels % 16) are skipped and listed.
* **Both**: sparsify and fine-tune (the ``sparse24`` stage), then QAT on the sparse student.

A stage directory ``<run>/optimize/<recipe>/`` holds::

    config.yaml            the fine-tune's resolved configs (as a training run's)
    optimize.json          the stage's settings (a resume or a reuse must match them)
    start/                 the ModelOpt model as it entered the fine-tune (the structure a resume rebuilds)
    student.json           the manifest (as a training run's)
    student.safetensors    plain timm weights: sparse with the zeros in; QAT: the float weights (no fake quant)
    modelopt_state.json    ModelOpt's modes and quantizer metadata as JSON (nothing is unpickled)
    modelopt.safetensors   the ModelOpt model's tensors: weights, 2:4 masks, INT8 ranges
    recipe.json            recipe, parent run, calibration images, per-layer zeros and 2:4 check, skipped layers
                           with reasons, fine-tune time and accuracy; written last ("finished": true)
    metrics.json  checkpoints/  logs/    as a training run's

Modules: ``training.modelopt`` (the ModelOpt adapter and its serialisation), ``training.recipes`` (a
stage as others read it: ``load_optimized_student`` rebuilds the model from ``student.json`` + the
ModelOpt state, and ``deploy.export`` exports it: QDQ ONNX for QAT, dense-with-zeros FP32 for 2:4),
this module (the fine-tune's orchestration and the command).
"""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from torch import Tensor, nn

from edgedistill import storage
from edgedistill.config import RECORD_IGNORED, DataConfig, OptimizeConfig, TeacherConfig, TrainConfig, replace
from edgedistill.console import say
from edgedistill.data.transforms import eval_transform
from edgedistill.errors import ConfigError
from edgedistill.students import StudentManifest, load_student
from edgedistill.training.checkpoints import load_checkpoint
from edgedistill.training.fit import build_run, finalize_run, fit_run, lightning_quiet
from edgedistill.training.modelopt import (
    load_modelopt,
    plain_weights,
    prepare_student,
    quantization_report,
    quantize,
    require_modelopt,
    save_modelopt,
    sparsify,
    sparsity_report,
)
from edgedistill.training.record import config_diffs, has_checkpoint, read_run_configs, write_run_config
from edgedistill.training.recipes import OPTIMIZE_FORMAT, RECIPE_PRECISION, SPARSE_STAGE, is_optimized_run, read_recipe


# ----------------------------------------------------------------------------- the fine-tune


def _load_run(path: str) -> tuple[Path, DataConfig, TeacherConfig, TrainConfig, dict]:
    """A finished training run: its folder, recorded configs and metrics."""
    run_dir = Path(path).expanduser().resolve()
    if is_optimized_run(run_dir):
        raise ConfigError(f"{str(run_dir)!r} is an optimize stage; give the training run it came from "
                          "(--sparsity 2:4 --qat true does sparsity, then QAT)")
    for name in ("config.yaml", "student.json", "student.safetensors", "metrics.json"):
        if not (run_dir / name).is_file():
            raise ConfigError(f"optimize.model={path!r} is not a finished training run (no {name}); give the run "
                              "directory 'edgedistill train' wrote")
    data, teacher, train = read_run_configs(run_dir)
    metrics = storage.read_json(run_dir / "metrics.json")
    if not metrics.get("finished"):
        raise ConfigError(f"{str(run_dir)!r} has not finished training; finish it (--train.resume true) first")
    return run_dir, data, teacher, train, metrics


def _calibration(setup, opt: OptimizeConfig, batch: int = 64) -> tuple[list[Tensor], dict[str, Any]]:
    """``calib_size`` images of ``calib_split`` (seeded subset, eval transform) as batches, and their record."""
    dataset = setup.splits.dataset(opt.calib_split, eval_transform(setup.view))
    if not len(dataset):
        raise ConfigError(f"optimize.calib_split={opt.calib_split!r} has no images")
    rng = np.random.default_rng(setup.cfg.seed)
    pick = sorted(rng.choice(len(dataset), size=min(opt.calib_size, len(dataset)), replace=False).tolist())
    images, chosen = [], {}
    for i in pick:
        item = dataset[i]
        if item is None:  # an unreadable image: skipped, as training skips it
            continue
        images.append(torch.as_tensor(item["image"]))
        chosen.setdefault(item["source"], []).append(int(item["index"]))
    if not images:
        raise ConfigError(f"No readable image among the {len(pick)} calibration images of {opt.calib_split!r}")
    batches = [torch.stack(images[i:i + batch]) for i in range(0, len(images), batch)]
    record = {"split": opt.calib_split, "images": len(images), "seed": setup.cfg.seed, "transform": "eval",
              "indices": {src: sorted(idx) for src, idx in chosen.items()}}
    return batches, record


def _stage_settings(opt: OptimizeConfig, stage: str, base: Path, sparsify_here: bool, qat_here: bool) -> dict:
    return {"format": OPTIMIZE_FORMAT, "recipe": stage, "base": str(base), "sparsify": sparsify_here,
            "sparsity_method": opt.sparsity_method if sparsify_here else None, "qat": qat_here,
            "calib_size": opt.calib_size if (qat_here or opt.sparsity_method == "sparsegpt") else None,
            "calib_split": opt.calib_split if (qat_here or opt.sparsity_method == "sparsegpt") else None}


def _finetune_config(train: TrainConfig, opt: OptimizeConfig, parent: Path, stage: str) -> TrainConfig:
    """The run's config as a fine-tune: lr x lr_scale, a tenth of the epochs, no warmup, one device."""
    return replace(
        train, out_dir=str(parent / "optimize"), name=stage, lr=float(f"{train.lr * opt.lr_scale:.6g}"),
        epochs=opt.epochs or max(1, round(train.epochs / 10)), warmup_epochs=0.0, max_steps=opt.max_steps,
        resume=opt.resume, eval_test=False, devices=1, num_nodes=1, pretrained=None,  # weights come from the run
        batch_size=opt.batch_size or train.batch_size,
        num_workers=train.num_workers if opt.num_workers is None else opt.num_workers,
        cache_dir=opt.cache_dir or train.cache_dir,
    )


def _stage_state(stage_dir: Path, settings: dict, data: DataConfig, teacher: TeacherConfig, ft: TrainConfig) -> str:
    """``new``, ``finished`` (same settings: reuse it) or ``started``; refuses a folder made with other settings."""
    if not (stage_dir / "optimize.json").is_file():
        return "new"
    old = storage.read_json(stage_dir / "optimize.json")
    finished = (stage_dir / "recipe.json").is_file()
    diffs = [f"{k}: {old.get(k)!r} -> {v!r}" for k, v in settings.items() if old.get(k) != v]
    # A resume may change the length (as in training); a finished stage is reused only for the same one.
    length = () if finished else ("epochs", "max_steps")
    diffs += config_diffs(stage_dir, data, teacher, ft, ignore=RECORD_IGNORED + length)
    if diffs:
        raise ConfigError(f"{str(stage_dir)!r} was optimized with other settings ({'; '.join(diffs)}); use the recorded "
                          "ones or move the folder away to start over")
    if finished:
        return "finished"
    if has_checkpoint(stage_dir) and not ft.resume:
        raise ConfigError(f"{str(stage_dir)!r} holds an unfinished fine-tune; pass --resume true to continue it, or "
                          "move the folder away to start over")
    return "started"


def _start_student(base: Path, parent: Path, mo: SimpleNamespace) -> nn.Module:
    """The student a stage starts from: the trained run's (plain), or the sparse stage's (ModelOpt, masks active)."""
    if base == parent:
        return prepare_student(load_student(base)[0])
    manifest = StudentManifest.load(base / "student.json")
    return load_modelopt(lambda: prepare_student(manifest.create()), mo, base)


def _run_stage(parent: Path, configs: tuple, stage: str, base: Path, opt: OptimizeConfig, mo: SimpleNamespace, *,
               sparsify_here: bool, qat_here: bool) -> Path:
    """Fine-tune one stage (resumable, atomic); returns its folder. A finished stage with the same settings is reused."""
    data, teacher, train, parent_metrics = configs
    ft = _finetune_config(train, opt, parent, stage)
    stage_dir = Path(ft.out_dir).expanduser().resolve() / stage
    settings = _stage_settings(opt, stage, base, sparsify_here, qat_here)
    state = _stage_state(stage_dir, settings, data, teacher, ft)
    if state == "finished":
        say(f"[optimize] {stage_dir} is finished with these settings; reusing it")
        return stage_dir
    t0 = time.perf_counter()
    setup = build_run(data, teacher, ft)  # every check, data, teacher targets; its fresh student is replaced below
    base_recipe = read_recipe(base) if base != parent else None  # the sparse stage under a QAT stage
    sparse_method = opt.sparsity_method if sparsify_here else (base_recipe or {}).get("sparsity_method")
    quantized = qat_here or bool(base_recipe and base_recipe["qat"])
    calib, calib_record = ([], None)
    if qat_here or (sparsify_here and opt.sparsity_method == "sparsegpt"):
        calib, calib_record = _calibration(setup, opt)
    start = stage_dir / "start"
    if setup.resume_from is not None and (start / "modelopt_state.json").is_file():
        # The checkpoint holds every tensor (weights, masks, ranges); the start state gives the structure they fit.
        manifest = StudentManifest.load(parent / "student.json")
        student = load_modelopt(lambda: prepare_student(manifest.create()), mo, start)
        say(f"[optimize] {stage}: resuming from {setup.resume_from.name}")
    else:
        student = _start_student(base, parent, mo)
        if sparsify_here:
            student = sparsify(student, mo, opt.sparsity_method, calib)
        if qat_here:
            student = quantize(student, mo, calib)
        save_modelopt(student, mo, start)
    report = sparsity_report(student, sparse_method or "magnitude") if sparse_method else None
    if sparsify_here and report["skipped"]:
        say(f"[optimize] 2:4 sparsity skipped {len(report['skipped'])} layer(s): " + "; ".join(
            f"{s['layer']} {s['shape']} ({s['reason']})" for s in report["skipped"]))
    inexact = [e["layer"] for e in (report or {}).get("per_layer", []) if e["status"] == "2:4" and not e["two_of_four"]]
    if sparsify_here and inexact:  # SparseGPT groups a conv's flattened C*R*S axis
        say(f"[optimize] {len(inexact)} layer(s) are 50% sparse but not 2:4 along their input channels, the layout "
            f"TensorRT's sparse kernels need: {', '.join(inexact)}")
    quant = quantization_report(student) if quantized else None
    if qat_here and quant["not_quantized"]:
        say(f"[optimize] INT8: {len(quant['not_quantized'])} layer(s) not quantized: {', '.join(quant['not_quantized'])}")
    setup.module.student = student
    if rank_zero_only.rank == 0:
        write_run_config(stage_dir, data, teacher, ft)
        storage.write_json(stage_dir / "optimize.json", settings)
    what = " + ".join(([f"2:4 ({opt.sparsity_method})"] if sparsify_here else []) + (["INT8 QAT"] if qat_here else []))
    say(f"[optimize] {stage}: {what}, fine-tune {ft.epochs} epoch(s) at lr {ft.lr:g} with the run's {train.target} loss")
    with lightning_quiet(stage_dir / "logs" / "lightning.log"):
        fit = fit_run(setup)
        finalize_run(setup, fit)
    metrics = storage.read_json(stage_dir / "metrics.json")
    best = load_checkpoint(stage_dir / metrics["best_checkpoint"])["state_dict"]
    student.load_state_dict({k.removeprefix("student."): v for k, v in best.items() if k.startswith("student.")})
    student = student.cpu().eval()
    manifest = StudentManifest.load(stage_dir / "student.json")
    reference = manifest.create()
    save_modelopt(student, mo, stage_dir)
    # finalize_run wrote the ModelOpt tensors as student.safetensors; the plain student takes their place.
    storage.save_safetensors(stage_dir / "student.safetensors", plain_weights(student, reference),
                             metadata={"arch": manifest.arch, "recipe": stage})
    elapsed = round(time.perf_counter() - t0, 1)  # this session: setup, calibration, fine-tune, files
    recipe = {
        "format": OPTIMIZE_FORMAT, "finished": True, "recipe": stage, "precision": RECIPE_PRECISION[stage],
        "parent": str(parent), "base": str(base), "modelopt": mo.version, "qat": quantized,
        "sparsity": "2:4" if sparse_method else None, "sparsity_method": sparse_method,
        "finetune": {"epochs": ft.epochs, "lr": ft.lr, "lr_scale": opt.lr_scale, "max_steps": ft.max_steps,
                     "batch_size": ft.batch_size, "loss": ft.target,
                     "steps": (metrics.get("history") or [{}])[-1].get("step"), "elapsed_s": elapsed,
                     "train_elapsed_s": metrics.get("elapsed_s"),  # Lightning's fit, over every (resumed) session
                     "stages_elapsed_s": round(elapsed + (base_recipe["finetune"]["stages_elapsed_s"] if base_recipe
                                                          else 0.0), 1)},
        "accuracy": {"selected_on": metrics.get("selected_on"), "run_best_val_acc": parent_metrics.get("best_val_acc"),
                     "base_best_val_acc": base_recipe["accuracy"]["best_val_acc"] if base_recipe else None,
                     "best_val_acc": metrics.get("best_val_acc")},
        "calibration": calib_record or (base_recipe or {}).get("calibration"),
        "quantization": quant,
        "sparsity_report": sparsity_report(student, sparse_method) if sparse_method else None,
    }
    storage.write_json(stage_dir / "recipe.json", recipe)  # last: the stage is finished
    return stage_dir


def optimize(opt: OptimizeConfig) -> Path:
    """Run the recipe ``opt`` asks for on a trained run; returns the last stage's folder.

    Raises:
        ConfigError: no model, nothing asked, a run that is not finished, a stage made with other settings.
        ModelOptUnavailableError: ``nvidia-modelopt`` is missing (one line naming the extra).
    """
    if opt.model is None:
        raise ConfigError("optimize needs --model RUN, a trained student's run directory")
    if not opt.qat and opt.sparsity is None:
        raise ConfigError("optimize.qat=False and optimize.sparsity=None: nothing to do; give --qat true and/or "
                          "--sparsity 2:4")
    mo = require_modelopt("edgedistill optimize")
    parent, data, teacher, train, metrics = _load_run(opt.model)
    configs = (data, teacher, train, metrics)
    stage_dir = parent
    if opt.sparsity is not None:
        stage_dir = _run_stage(parent, configs, SPARSE_STAGE, parent, opt, mo, sparsify_here=True, qat_here=False)
    if opt.qat:
        stage_dir = _run_stage(parent, configs, opt.recipe(), stage_dir, opt, mo, sparsify_here=False, qat_here=True)
    return stage_dir


def optimize_command(cfg: OptimizeConfig = OptimizeConfig()) -> None:
    """Quantization-aware training (INT8) and/or 2:4 sparsity of a trained student, fine-tuned with its own loss."""
    stage_dir = optimize(cfg)
    recipe = read_recipe(stage_dir)
    acc = recipe["accuracy"]
    line = f"{stage_dir}: {recipe['recipe']}"
    if acc["best_val_acc"] is not None:
        line += f", val acc {100 * acc['best_val_acc']:.2f}%"
        if acc["run_best_val_acc"] is not None:
            line += f" (run: {100 * acc['run_best_val_acc']:.2f}%)"
    rep = recipe["sparsity_report"]
    if rep:
        line += (f", {rep['sparse_layers']}/{rep['layers']} layers 2:4 "
                 f"({'exact' if rep['all_sparse_layers_two_of_four'] else 'NOT exact'}), "
                 f"{100 * rep['zeros_of_all_weights']:.1f}% of weights zero")
    print(line + f", fine-tune {recipe['finetune']['stages_elapsed_s']:.0f}s")


__all__ = ["optimize", "optimize_command"]
