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

``load_optimized_student`` rebuilds the model from ``student.json`` + the ModelOpt state;
``deploy.export`` exports it (QDQ ONNX for QAT, dense-with-zeros FP32 for 2:4).
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Iterator

import numpy as np
import torch
import yaml
from torch import Tensor, nn

from edgedistill import storage
from edgedistill.config import (
    RECORD_IGNORED,
    DataConfig,
    OptimizeConfig,
    TeacherConfig,
    TrainConfig,
    from_dict,
    replace,
)
from edgedistill.console import log_at_least, say
from edgedistill.data.transforms import eval_transform
from edgedistill.errors import ConfigError, EdgeDistillError
from edgedistill.students import StudentManifest, load_student
from edgedistill.training.checkpoints import load_checkpoint
from edgedistill.training.fit import build_run, config_diffs, finalize_run, fit_run, lightning_quiet, record_of

OPTIMIZE_FORMAT = 1
MODELOPT_INSTALL = "pip install 'edgedistill[optimize]'"
SPARSE_STAGE = "sparse24"
RECIPE_PRECISION = {"qat": "qat-int8", "sparse24": "sparse-fp32", "sparse24-qat": "sparse-qat-int8"}
"""Recipe -> the precision label its exported model carries (``DeployMeta.precision``)."""
_MODES = {"magnitude": "sparse_magnitude", "sparsegpt": "sparsegpt"}


class ModelOptUnavailableError(EdgeDistillError):
    """NVIDIA Model Optimizer is not installed (or cannot be imported)."""


# ----------------------------------------------------------------------------- Model Optimizer, lazily


@contextlib.contextmanager
def modelopt_quiet(log: list[str] | None = None) -> Iterator[None]:
    """Keep ModelOpt's chatter off the terminal: its prints ("Inserted 88 quantizers", one "Searching for
    sparse mask" line per layer) and warnings (a skipped layer, no CUDA runtime, no transformers) are
    appended to ``log`` (the caller reports what matters in its own words)."""
    out = io.StringIO()
    try:
        with (contextlib.redirect_stdout(out), warnings.catch_warnings(record=True) as caught,
              log_at_least(logging.ERROR, "torch.utils.cpp_extension")):
            warnings.simplefilter("always")
            yield
    finally:
        if log is not None:
            log.extend(line for line in out.getvalue().splitlines() if line.strip())
            log.extend(str(w.message) for w in caught)


def require_modelopt(what: str) -> SimpleNamespace:
    """Import ModelOpt's torch APIs (``mto``, ``mtq``, ``mts``), or raise one line naming the extra to install.

    Raises:
        ModelOptUnavailableError: ``<what> needs NVIDIA Model Optimizer: pip install 'edgedistill[optimize]' (...)``.
    """
    try:
        with modelopt_quiet():
            import modelopt
            import modelopt.torch.opt as mto
            import modelopt.torch.quantization as mtq
            import modelopt.torch.sparsity as mts
    except ImportError as e:  # not installed, or a dependency of it missing (0.47 imports requests undeclared)
        raise ModelOptUnavailableError(f"{what} needs NVIDIA Model Optimizer: {MODELOPT_INSTALL} "
                                       f"({type(e).__name__}: {e})") from None
    return SimpleNamespace(mto=mto, mtq=mtq, mts=mts, version=getattr(modelopt, "__version__", "?"))


def prepare_student(model: nn.Module) -> nn.Module:
    """Make every layer visible to ModelOpt, in place; outputs are unchanged.

    ModelOpt converts ``nn.Linear``/``nn.Conv2d`` and subclasses that keep their forward;
    ``timm.layers.Linear`` (mobilenetv3's classifier) overrides forward (only for TorchScript), so
    it would be silently neither quantized nor sparsified. Its forward is ``F.linear`` otherwise,
    so it becomes a plain ``nn.Linear``. A restore must rebuild the model the same way.
    """
    import timm.layers

    for module in model.modules():
        if type(module) is timm.layers.Linear:
            module.__class__ = nn.Linear
    return model


# ----------------------------------------------------------------------------- 2:4 sparsity


def is_two_of_four(weight: Tensor | np.ndarray) -> bool:
    """True when every group of 4 consecutive input-channel weights holds at least 2 zeros.

    A conv weight ``[K, C, R, S]`` is grouped along C at each (k, r, s); a linear ``[out, in]`` along
    ``in``: the layout of ModelOpt's magnitude mask, TensorRT and cuSPARSELt. False when C % 4 != 0.
    """
    w = weight.detach().cpu().numpy() if isinstance(weight, Tensor) else np.asarray(weight)
    if w.ndim < 2 or w.shape[1] % 4:
        return False
    groups = np.moveaxis(w, 1, -1).reshape(-1, 4)  # [K * R * S, C] -> [K * R * S * C / 4, 4]
    return bool(((groups == 0).sum(axis=1) >= 2).all())


def skip_reason(shape: list[int] | tuple[int, ...], method: str) -> str:
    """Why ModelOpt (0.47) leaves a layer dense: its size rule (magnitude: out % 8, in % 16; sparsegpt: both % 4)."""
    out_ch, in_ch = shape[0], shape[1]
    rule = (8, 16) if method == "magnitude" else (4, 4)
    bad = [f"{what}={n} is not a multiple of {m}" for what, n, m in (("out", out_ch, rule[0]), ("in", in_ch, rule[1]))
           if n % m]
    return ", ".join(bad) if bad else "excluded by ModelOpt's rules"


def sparsity_report(model: nn.Module, method: str = "magnitude") -> dict[str, Any]:
    """Per Conv2d/Linear layer: share of zeros in its effective weight, the 2:4 check, and its status.

    Status: ``2:4`` (masked by ModelOpt), ``skipped`` (ModelOpt left it dense; reason: its size rule) or
    ``not converted`` (a layer type ModelOpt does not sparsify). Works on a ModelOpt model (the mask
    buffers say which layers are sparse) and on a plain one (then the 2:4 check decides).
    """
    layers = []
    modelopt = any(hasattr(m, "_weight_mask") for m in model.modules())
    for name, m in model.named_modules():
        if not isinstance(m, (nn.Conv2d, nn.Linear)):
            continue
        w = m.weight.detach()  # ModelOpt: raw * mask
        ok = is_two_of_four(w)
        entry = {"layer": name, "shape": list(w.shape), "zeros": round(float((w == 0).float().mean()), 4), "two_of_four": ok}
        if modelopt and not hasattr(m, "_weight_mask"):
            entry.update(status="not converted", reason=f"{type(m).__name__} is not a layer ModelOpt sparsifies")
        elif modelopt:
            mask = m._weight_mask
            sparse = mask is not None and not bool(mask.all())
            entry.update(status="2:4" if sparse else "skipped", reason=None if sparse else skip_reason(w.shape, method))
        else:
            entry.update(status="2:4" if ok else "dense", reason=None)
        layers.append(entry)
    sparse = [entry for entry in layers if entry["status"] == "2:4"]
    weights = sum(int(np.prod(entry["shape"])) for entry in layers)
    zeros = sum(entry["zeros"] * int(np.prod(entry["shape"])) for entry in layers)
    return {
        "sparse_layers": len(sparse),
        "layers": len(layers),
        "all_sparse_layers_two_of_four": all(entry["two_of_four"] for entry in sparse),
        "zeros_of_all_weights": round(zeros / max(weights, 1), 4),
        "skipped": [{"layer": entry["layer"], "shape": entry["shape"], "reason": entry["reason"]}
                    for entry in layers if entry["status"] in ("skipped", "not converted")],
        "per_layer": layers,
    }


def sparsify(model: nn.Module, mo: SimpleNamespace, method: str = "magnitude",
             calib: list[Tensor] | None = None) -> nn.Module:
    """2:4-sparsify ``model`` in place with ModelOpt (``magnitude`` or ``sparsegpt``, which needs ``calib``).

    Raises:
        EdgeDistillError: SparseGPT failed (its conv Hessian unfolds without padding, so a 3x3 conv whose input
            is smaller than 3x3, e.g. the last stage of a ResNet at 32 px, cannot be handled).
    """
    config = None
    if method == "sparsegpt":
        config = {"data_loader": calib, "collect_func": lambda batch: batch, "verbose": False}
    try:
        with modelopt_quiet():
            return mo.mts.sparsify(model, _MODES[method], config=config)
    except RuntimeError as e:
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise EdgeDistillError(f"sparsity_method=sparsegpt failed on this student ({why[:110]}{'...' if len(why) > 110 else ''}); "
                               "use sparsity_method=magnitude, or a larger image_size") from None


# ----------------------------------------------------------------------------- INT8


def quantize(model: nn.Module, mo: SimpleNamespace, calib: list[Tensor]) -> nn.Module:
    """Insert INT8 fake quantizers (``INT8_DEFAULT_CFG``) in place and calibrate them on ``calib`` batches.

    Calibration runs in eval mode (BatchNorm on its running statistics, as deployed).
    """
    model.eval()

    def forward_loop(m: nn.Module) -> None:
        with torch.no_grad():
            for x in calib:
                m(x)

    with modelopt_quiet():
        return mo.mtq.quantize(model, mo.mtq.INT8_DEFAULT_CFG, forward_loop)


def quantization_report(model: nn.Module) -> dict[str, Any]:
    """Which Conv2d/Linear layers carry an enabled INT8 weight quantizer, and which do not."""
    done, left = [], []
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            q = getattr(m, "weight_quantizer", None)
            (done if q is not None and q.is_enabled else left).append(name)
    quantizers = [m for m in model.modules() if type(m).__name__ == "TensorQuantizer"]
    return {"config": "INT8_DEFAULT_CFG: int8 weights per output channel, int8 activations per tensor, max calibration",
            "quantized_layers": len(done), "quantizers_enabled": sum(bool(q.is_enabled) for q in quantizers),
            "not_quantized": left}


# ----------------------------------------------------------------------------- ModelOpt state as JSON + safetensors

# mto.modelopt_state() is plain data except tuples (mode entries), torch.Size and torch.dtype; they are tagged in
# JSON and rebuilt on load (dtypes from an allow-list: no string is ever evaluated).
_DTYPES = {str(d): d for d in (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int8, torch.uint8,
                               torch.int16, torch.int32, torch.int64, torch.bool)}


def _encode(o: Any) -> Any:
    if isinstance(o, torch.Size):
        return {"__size__": list(o)}
    if isinstance(o, torch.dtype):
        return {"__dtype__": str(o)}
    if isinstance(o, tuple):
        return {"__tuple__": [_encode(v) for v in o]}
    if isinstance(o, list):
        return [_encode(v) for v in o]
    if isinstance(o, dict):
        if any(not isinstance(k, str) for k in o):
            raise EdgeDistillError(f"ModelOpt state has non-string keys {[k for k in o if not isinstance(k, str)][:3]}")
        return {k: _encode(v) for k, v in o.items()}
    if o is None or isinstance(o, (str, int, float, bool)):
        return o
    raise EdgeDistillError(f"ModelOpt state holds a {type(o).__name__} that cannot be stored as JSON: {o!r:.80}")


def _decode(o: Any, path: Path) -> Any:
    if isinstance(o, list):
        return [_decode(v, path) for v in o]
    if isinstance(o, dict):
        if set(o) == {"__size__"}:
            return torch.Size(o["__size__"])
        if set(o) == {"__dtype__"}:
            if o["__dtype__"] not in _DTYPES:
                raise EdgeDistillError(f"{path} names an unexpected dtype {o['__dtype__']!r}; it is damaged")
            return _DTYPES[o["__dtype__"]]
        if set(o) == {"__tuple__"}:
            return tuple(_decode(v, path) for v in o["__tuple__"])
        return {k: _decode(v, path) for k, v in o.items()}
    return o


def save_modelopt(model: nn.Module, mo: SimpleNamespace, folder: Path) -> None:
    """``folder/modelopt_state.json`` (modes, quantizer metadata) + ``folder/modelopt.safetensors`` (all tensors)."""
    storage.write_json(folder / "modelopt_state.json", _encode(mo.mto.modelopt_state(model)))
    # clone: safetensors refuses tensors sharing storage
    storage.save_safetensors(folder / "modelopt.safetensors",
                             {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()})


def load_modelopt(build: Callable[[], nn.Module], mo: SimpleNamespace, folder: Path) -> nn.Module:
    """Rebuild a ModelOpt model: ``build()`` (the plain student, :func:`prepare_student`-ed), its modes, its tensors.

    Raises:
        EdgeDistillError: a damaged or foreign state, named.
    """
    path = folder / "modelopt_state.json"
    state = _decode(storage.read_json(path), path)
    try:
        with modelopt_quiet():
            model = mo.mto.restore_from_modelopt_state(build(), modelopt_state=state)
        model.load_state_dict(storage.load_safetensors(folder / "modelopt.safetensors"))
    except (RuntimeError, KeyError, ValueError, AssertionError) as e:
        raise EdgeDistillError(f"{folder} does not hold a ModelOpt state of this student "
                               f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})") from None
    return model


def plain_weights(model: nn.Module, reference: nn.Module) -> dict[str, Tensor]:
    """The ModelOpt model's tensors under the plain student's keys, 2:4 masks multiplied in (quantizers dropped)."""
    state = model.state_dict()
    out = {}
    for key in reference.state_dict():
        value = state[key]
        mask = state.get(key.removesuffix("weight") + "_weight_mask") if key.endswith("weight") else None
        out[key] = (value * mask if mask is not None else value).detach().cpu().contiguous().clone()
    return out


# ----------------------------------------------------------------------------- loading an optimized student


def is_optimized_run(path: str | Path) -> bool:
    """Whether ``path`` (a folder or a file in it) is a finished or started optimize stage."""
    folder = storage.run_dir_of(path)
    return (folder / "optimize.json").is_file()


def read_recipe(path: str | Path) -> dict[str, Any]:
    """The ``recipe.json`` of a finished stage.

    Raises:
        EdgeDistillError: the stage never finished (no recipe.json).
    """
    folder = storage.run_dir_of(path)
    if not (folder / "recipe.json").is_file():
        raise EdgeDistillError(f"{str(folder)!r} is an optimize stage that has not finished (no recipe.json); "
                               "run 'edgedistill optimize ... --resume true' to finish it")
    return storage.read_json(folder / "recipe.json")


def load_optimized_student(path: str | Path) -> tuple[nn.Module, Any, dict[str, Any]]:
    """A finished stage's student in eval mode, its manifest and its recipe.

    QAT recipes: the fake-quantized ModelOpt model (needs ``nvidia-modelopt``); 2:4 alone: the plain
    timm student with the zeros in its weights (no ModelOpt needed).
    """
    folder = storage.run_dir_of(path)
    recipe = read_recipe(folder)
    if not recipe["qat"]:
        model, manifest = load_student(folder)
        return model, manifest, recipe
    mo = require_modelopt(f"Loading the QAT student of {str(folder)!r}")
    manifest = StudentManifest.load(folder / "student.json")
    return load_modelopt(lambda: prepare_student(manifest.create()), mo, folder).eval(), manifest, recipe


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
    try:
        rec = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{run_dir / 'config.yaml'} is damaged ({type(e).__name__})") from None
    if not isinstance(rec, dict):
        raise ConfigError(f"{run_dir / 'config.yaml'} is not a run record")
    where = str(run_dir / "config.yaml")
    data = from_dict(DataConfig, rec.get("data"), f"{where}: data")
    teacher = from_dict(TeacherConfig, rec.get("teacher"), f"{where}: teacher")
    train = from_dict(TrainConfig, rec.get("train"), f"{where}: train")
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
    has_ckpt = any((stage_dir / "checkpoints").glob("*.ckpt"))  # a missing folder globs to nothing
    if has_ckpt and not ft.resume:
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
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

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
        storage.write_text(stage_dir / "config.yaml", yaml.safe_dump(record_of(data, teacher, ft), sort_keys=False))
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


__all__ = ["ModelOptUnavailableError", "is_two_of_four", "load_optimized_student", "optimize", "optimize_command",
           "read_recipe", "require_modelopt", "sparsity_report"]
