"""OpenVINO (Intel CPUs, iGPUs, NPUs): runs the OpenVINO IR of a bundle (NNCF INT8) or its ONNX files directly.

The model is compiled for the bench batch's static shape with the LATENCY hint (one stream, like
ONNX Runtime's ``session.run``). ``compile_openvino`` is also what export's parity and accuracy
checks and the app API use.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Callable

import numpy as np


def available(runtime) -> tuple[bool, str]:
    if importlib.util.find_spec("openvino") is None:
        return False, "openvino is not installed (pip install 'edgedistill[openvino]')"
    import openvino as ov

    have = ov.Core().available_devices
    return runtime.device in have, f"OpenVINO has no {runtime.device} device here (available: {', '.join(have)})"


def compile_openvino(path: str | os.PathLike, shape: tuple[int, ...] | None = None, *, device: str = "CPU",
                     threads: int | None = None) -> Callable[[np.ndarray], list[np.ndarray]]:
    """A callable running an ONNX or OpenVINO IR (``.xml``) model on float32 images, returning its outputs in order.

    Args:
        path: the model file.
        shape: compile for this static input shape (None: keep the model's dynamic batch).
        device: OpenVINO device.
        threads: inference threads (None: OpenVINO's default, every core).
    """
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(path))
    if shape is not None:
        model.reshape({model.inputs[0].get_any_name(): ov.PartialShape(list(shape))})
    # FP32 kernels for FP32 layers: on AMX / AVX512-BF16 CPUs OpenVINO would otherwise run them in bf16 (another model
    # than the one parity-checked); INT8 layers of an NNCF model stay INT8.
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    compiled = core.compile_model(model, device, config)
    request = compiled.create_infer_request()
    outputs = compiled.outputs

    def run(x: np.ndarray) -> list[np.ndarray]:
        result = request.infer({0: np.ascontiguousarray(x, np.float32)})
        return [np.asarray(result[o]) for o in outputs]

    return run


def prepare(runtime, job: dict) -> None:
    import openvino  # noqa: F401


def load(runtime, job: dict, x):
    run = compile_openvino(job["path"], x.shape, device=runtime.device, threads=job["threads"])
    return (lambda: run(x)), (lambda: None)
