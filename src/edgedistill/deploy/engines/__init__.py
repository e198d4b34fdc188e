"""The runtimes ``bench`` and the deployment race run models on: a registry, one module per engine.

A runtime is a name bound to a :class:`Runtime` (its engine module, which of a bench entry's files
it runs, execution providers / device, whether it needs CUDA). Adding one is one engine file
(``available``, ``prepare``, ``load``; see :mod:`edgedistill.deploy.engines.onnxruntime`) and one
:func:`register_runtime` line below. ``RUNTIMES`` is a plain dict, so configs validate against it.

Engine modules import their library only inside their functions: this package, like the deploy
runtime, imports neither torch nor any engine.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from types import ModuleType

from edgedistill.errors import ConfigError

__all__ = ["RUNTIMES", "Runtime", "engine_module", "register_runtime", "runtime_available", "runtime_from_json",
           "runtime_to_json"]


@dataclass(frozen=True)
class Runtime:
    """One way to run a model.

    Attributes:
        engine: Its module under ``edgedistill.deploy.engines`` (pytorch, onnxruntime, tensorrt, openvino, executorch),
            or a full dotted module path (a plugin's engine).
        files: Which of a bench entry's files it runs: ``torch`` (the eager model), ``onnx``, ``engines`` (TensorRT),
            ``openvino`` (OpenVINO IR where exported, else the ONNX file) or ``pte`` (ExecuTorch programs).
        providers: ONNX Runtime execution providers.
        device: The engine's device name (OpenVINO: ``CPU``, ``GPU``, ``NPU``).
        cuda: Needs a CUDA GPU.
    """

    engine: str
    files: str
    providers: tuple = ()
    device: str = "CPU"
    cuda: bool = False


RUNTIMES: dict[str, Runtime] = {}


def register_runtime(name: str, runtime: Runtime) -> Runtime:
    """Make ``runtime`` available to ``bench --runtimes`` and ``deploy.runtimes`` under ``name``.

    Raises:
        ConfigError: ``name`` is already registered.
    """
    if name in RUNTIMES:
        raise ConfigError(f"runtime {name!r} is already registered ({RUNTIMES[name]}); choose another name")
    RUNTIMES[name] = runtime
    return runtime


def engine_module(runtime: Runtime) -> ModuleType:
    """The engine module of a runtime (cheap: engine modules import their library lazily)."""
    name = runtime.engine if "." in runtime.engine else f"edgedistill.deploy.engines.{runtime.engine}"
    return importlib.import_module(name)


def runtime_to_json(runtime: Runtime) -> dict:
    """A runtime as JSON (a benchmark child rebuilds it with :func:`runtime_from_json`, registered or not)."""
    return dataclasses.asdict(runtime)


def runtime_from_json(data: dict) -> Runtime:
    providers = tuple(tuple(p) if isinstance(p, list) else p for p in data.get("providers", ()))
    return Runtime(**{**data, "providers": providers})


def runtime_available(name: str) -> tuple[bool, str]:
    """(True, "") if the runtime can run here, else (False, why not)."""
    runtime = RUNTIMES[name]
    return engine_module(runtime).available(runtime)


_TRT_FP16 = ("TensorrtExecutionProvider", {"trt_fp16_enable": True})
register_runtime("pytorch", Runtime("pytorch", "torch"))
register_runtime("pytorch-cuda", Runtime("pytorch", "torch", cuda=True))
register_runtime("onnxruntime", Runtime("onnxruntime", "onnx", ("CPUExecutionProvider",)))
register_runtime("onnxruntime-cuda", Runtime("onnxruntime", "onnx", ("CUDAExecutionProvider", "CPUExecutionProvider"),
                                             cuda=True))
register_runtime("onnxruntime-tensorrt", Runtime("onnxruntime", "onnx", (_TRT_FP16, "CUDAExecutionProvider",
                                                                         "CPUExecutionProvider"), cuda=True))
register_runtime("tensorrt", Runtime("tensorrt", "engines", cuda=True))
register_runtime("openvino", Runtime("openvino", "openvino", device="CPU"))
register_runtime("executorch", Runtime("executorch", "pte"))
