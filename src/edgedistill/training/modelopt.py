"""NVIDIA Model Optimizer behind one small adapter: imported lazily, kept quiet, and its state stored without pickle.

* :func:`require_modelopt`: ModelOpt's torch APIs, or one line naming the ``[optimize]`` extra.
* 2:4 sparsity (:func:`sparsify`, :func:`sparsity_report`, :func:`is_two_of_four`) and INT8
  fake quantization (:func:`quantize`, :func:`quantization_report`).
* :func:`save_modelopt` / :func:`load_modelopt`: ModelOpt's modes and metadata as JSON (tuples,
  ``torch.Size`` and dtypes tagged, dtypes from an allow-list) + the model's tensors as safetensors.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Iterator

import numpy as np
import timm.layers
import torch
from torch import Tensor, nn

from edgedistill import storage
from edgedistill.console import log_at_least
from edgedistill.errors import EdgeDistillError

MODELOPT_INSTALL = "pip install 'edgedistill[optimize]'"
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


__all__ = ["MODELOPT_INSTALL", "ModelOptUnavailableError", "is_two_of_four", "load_modelopt", "modelopt_quiet",
           "plain_weights", "prepare_student", "quantization_report", "quantize", "require_modelopt", "save_modelopt",
           "skip_reason", "sparsify", "sparsity_report"]
