"""Lower-precision variants of an exported ONNX model: INT8 (post-training, static QDQ), FP16, TensorRT engines.

INT8 runs ONNX Runtime's static quantization (MinMax calibration on real images, QDQ format,
per-channel int8 weights, uint8 activations: the fast U8S8 path on x86 with VNNI). FP16
keeps float32 inputs and outputs. TensorRT engines are built only where TensorRT and a GPU
exist; everywhere else :func:`tensorrt_status` says why not.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path
from typing import Iterable

import numpy as np

from edgedistill import storage
from edgedistill.console import log_at_least, say
from edgedistill.deploy.runtime import INPUT_NAME, META_KEY, ort_session, read_metadata
from edgedistill.errors import EdgeDistillError


class TensorRTUnavailableError(EdgeDistillError):
    """TensorRT was asked for on a machine where it cannot run."""


def set_metadata(proto, meta) -> None:
    """Store a ``DeployMeta`` as JSON under metadata_props[``edgedistill``] of an ``onnx.ModelProto``."""
    for prop in list(proto.metadata_props):
        if prop.key == META_KEY:
            proto.metadata_props.remove(prop)
    entry = proto.metadata_props.add()
    entry.key, entry.value = META_KEY, meta.to_json()


class ArrayCalibrationReader:
    """Feeds calibration batches ``[B, 3, S, S]`` (float32) to ONNX Runtime's static quantizer."""

    def __init__(self, batches: Iterable[np.ndarray], input_name: str = INPUT_NAME):
        self._batches = iter(batches)
        self._input_name = input_name

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {self._input_name: np.ascontiguousarray(batch, dtype=np.float32)}

    def rewind(self) -> None:  # the MinMax calibrator reads the data once
        pass


def _input_convs(proto) -> list[str]:
    """Names of the Conv nodes that read the model's input image directly (the stem)."""
    inputs = {i.name for i in proto.graph.input}
    return [n.name for n in proto.graph.node if n.op_type == "Conv" and n.input and n.input[0] in inputs]


def quantize_int8(onnx_path: str | os.PathLike, out_path: str | os.PathLike, calib_batches: Iterable[np.ndarray], *,
                  per_channel: bool = True, keep_stem_fp32: bool = True) -> Path:
    """INT8 post-training static quantization (QDQ, per-channel weights) with ONNX Runtime.

    Runs ``quant_pre_process`` (shape inference + graph optimisation) first, as ONNX Runtime
    recommends, then ``quantize_static`` with MinMax calibration over ``calib_batches``.

    Args:
        onnx_path: the FP32 model.
        out_path: the INT8 model to write.
        calib_batches: preprocessed real images, float32 ``[B, 3, S, S]``; a few hundred in all.
        per_channel: per-output-channel weight scales (better accuracy for convolutions).
        keep_stem_fp32: leave the convolution that reads the image in FP32. Measured on the demo's
            narrow ResNet18 (AVX2 CPU, no VNNI): quantizing it lost 3.7 points of held-out accuracy
            (64.1 -> 60.4), keeping it lost none, at about 0.7x the all-INT8 throughput.

    Returns:
        The written path.
    """
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out_path = Path(out_path)
    meta = read_metadata(onnx_path)
    input_name = ort_session(onnx_path).get_inputs()[0].name
    reader = type("Reader", (ArrayCalibrationReader, CalibrationDataReader), {})(calib_batches, input_name)
    pre = out_path.with_name(f".{out_path.stem}.pre.onnx")
    try:
        with warnings.catch_warnings(), log_at_least():  # per-node notes of the quantizer: not the user's concern
            warnings.simplefilter("ignore")
            # auto_merge: symbolic shape inference cannot otherwise prove that the dynamic
            # height/width of a CNN stay consistent through strided convolutions.
            try:
                quant_pre_process(str(onnx_path), str(pre), auto_merge=True)
            except Exception as e:  # noqa: BLE001 - ORT's symbolic inference asserts on some traced attention reshapes
                # ONNX's own shape inference is enough for quantization; only the symbolic pass is skipped.
                say(f"symbolic shape inference failed ({type(e).__name__}); quantizing with ONNX shape inference only")
                quant_pre_process(str(onnx_path), str(pre), skip_symbolic_shape=True)
        with storage.atomic_path(out_path) as tmp, log_at_least():
            exclude = _input_convs(onnx.load(str(pre))) if keep_stem_fp32 else []
            quantize_static(str(pre), str(tmp), reader, quant_format=QuantFormat.QDQ, per_channel=per_channel,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_exclude=exclude)
            proto = onnx.load(str(tmp))
            set_metadata(proto, dataclasses.replace(meta, precision="int8"))
            onnx.save(proto, str(tmp))
    finally:
        pre.unlink(missing_ok=True)
    return out_path


def convert_fp16(onnx_path: str | os.PathLike, out_path: str | os.PathLike) -> Path:
    """FP16 copy of an ONNX model for GPU runtimes (inputs and outputs stay float32).

    Uses ``onnxruntime.transformers.float16`` (the same converter as onnxconverter-common).
    """
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    out_path = Path(out_path)
    meta = read_metadata(onnx_path)
    proto = convert_float_to_float16(onnx.load(str(onnx_path)), keep_io_types=True)
    set_metadata(proto, dataclasses.replace(meta, precision="fp16"))
    with storage.atomic_path(out_path) as tmp:
        onnx.save(proto, str(tmp))
    return out_path


def tensorrt_status() -> tuple[bool, str]:
    """Whether TensorRT can build engines here, and why not if it cannot."""
    try:
        import tensorrt  # noqa: F401
    except ImportError as e:
        return False, f"the 'tensorrt' Python package is not installed ({e}); it needs an NVIDIA GPU and pip install tensorrt"
    import torch

    if not torch.cuda.is_available():
        return False, "tensorrt is installed but no CUDA GPU is visible (torch.cuda.is_available() is False)"
    return True, f"TensorRT {tensorrt.__version__} on {torch.cuda.get_device_name(0)}"


def build_tensorrt_engine(onnx_path: str | os.PathLike, engine_path: str | os.PathLike, *, image_size: int,
                          fp16: bool = True, int8: bool = False, sparse: bool = False, max_batch: int = 32,
                          opt_batch: int = 8, workspace_gb: float = 2.0) -> Path:
    """Build a serialized TensorRT engine from an ONNX model (dynamic batch 1..``max_batch``).

    INT8 uses explicit quantization: pass a QDQ model (``quantize_int8`` or a QAT export) and
    ``int8=True``; TensorRT reads the scales from its Q/DQ nodes (no separate calibrator).
    ``sparse`` lets TensorRT pick 2:4 sparse kernels where the weights hold the pattern.

    Raises:
        TensorRTUnavailableError: where TensorRT or a GPU is missing (message says which).
    """
    ok, why = tensorrt_status()
    if not ok:
        raise TensorRTUnavailableError(f"TensorRT is unavailable: {why}")
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0 if int(trt.__version__.split(".")[0]) >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EdgeDistillError(f"TensorRT cannot parse {str(onnx_path)!r}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    for flag, on in ((trt.BuilderFlag.FP16, fp16), (trt.BuilderFlag.INT8, int8), (trt.BuilderFlag.SPARSE_WEIGHTS, sparse)):
        if on:
            config.set_flag(flag)
    profile = builder.create_optimization_profile()
    shape = lambda b: (b, 3, image_size, image_size)  # noqa: E731
    profile.set_shape(network.get_input(0).name, shape(1), shape(opt_batch), shape(max_batch))
    config.add_optimization_profile(profile)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise EdgeDistillError(f"TensorRT failed to build an engine from {str(onnx_path)!r} (see its log above)")
    storage.write_bytes(engine_path, bytes(engine))
    return Path(engine_path)
