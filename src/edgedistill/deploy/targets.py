"""Deploy targets besides ONNX Runtime, built from the same bundle and checked against PyTorch like the ONNX export.

- OpenVINO (Intel CPUs, iGPUs, NPUs) runs the bundle's ``model.onnx`` directly; its INT8 model is NNCF's
  post-training quantization of that file, calibrated on the same images as ONNX Runtime's INT8, saved as
  OpenVINO IR (``model.openvino.int8.xml`` + ``.bin``).
- ExecuTorch with XNNPACK (phones, ARM boards): ``model.pte``, lowered from the PyTorch model with a dynamic batch,
  and ``model.int8.pte``: PT2E INT8 (XNNPACK's symmetric per-channel config) calibrated on the same images.

Each function returns what export records; the parity verdict (and :class:`~edgedistill.deploy.export.ParityError`)
stays with the exporter.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from edgedistill.console import log_at_least

Runner = Callable[[np.ndarray], list[np.ndarray]]


def max_abs_diff(model, run: Runner, inputs: Sequence) -> float:
    """Largest absolute difference between a PyTorch model and a runner over every output and input batch."""
    import torch

    worst = 0.0
    with torch.no_grad():
        for x in inputs:
            ref = model(x)
            ref = ref if isinstance(ref, tuple) else (ref,)
            for r, g in zip(ref, run(x.numpy())):
                worst = max(worst, float(np.abs(r.float().numpy() - np.asarray(g, np.float32)).max()))
    return worst if worst == worst else float("inf")  # NaN fails the check


def runner_accuracy(run: Runner, batches: Iterable[tuple[np.ndarray, np.ndarray]], logits_index: int = 0) -> float:
    """Top-1 accuracy (0..1) of a runner's logits output over (images, labels) batches (label -1 skipped)."""
    correct = total = 0
    for images, labels in batches:
        keep = labels >= 0
        if keep.any():
            logits = run(images[keep])[logits_index]
            correct += int((np.asarray(logits).argmax(1) == labels[keep]).sum())
            total += int(keep.sum())
    return correct / max(total, 1)


def quantize_openvino(onnx_path: str | os.PathLike, out_xml: str | os.PathLike,
                      calibration: Iterable[np.ndarray]) -> Path:
    """NNCF post-training INT8 of an FP32 ONNX model, saved as OpenVINO IR (``.xml`` + ``.bin``) atomically."""
    import nncf
    import openvino as ov

    from edgedistill import storage

    batches = [np.ascontiguousarray(b, np.float32) for b in calibration]
    model = ov.Core().read_model(str(onnx_path))
    with log_at_least():  # NNCF's progress bars and INFO lines
        quantized = nncf.quantize(model, nncf.Dataset(batches), subset_size=len(batches))  # items are batches
    out_xml = Path(out_xml)
    out_xml.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = out_xml.parent / f".{out_xml.stem}.tmp"
    tmp_dir.mkdir(exist_ok=True)
    try:
        ov.save_model(quantized, str(tmp_dir / out_xml.name), compress_to_fp16=False)
        bin_name = out_xml.with_suffix(".bin").name
        with storage.atomic_path(out_xml.with_suffix(".bin")) as tmp:
            os.replace(tmp_dir / bin_name, tmp)
        with storage.atomic_path(out_xml) as tmp:
            os.replace(tmp_dir / out_xml.name, tmp)
    finally:
        for f in tmp_dir.glob("*"):
            f.unlink()
        tmp_dir.rmdir()
    return out_xml


def openvino_runner(path: str | os.PathLike) -> Runner:
    from edgedistill.deploy.engines.openvino import compile_openvino

    return compile_openvino(path)


def export_executorch(model, path: str | os.PathLike, image_size: int,
                      calibration: Iterable[np.ndarray] | None = None) -> tuple[Path, Runner]:
    """Lower ``model`` to an XNNPACK ``.pte`` (INT8 when ``calibration`` batches are given) and load it back; returns
    the file and a runner of it."""
    from edgedistill.deploy.engines.executorch import export_pte, load_pte

    with log_at_least(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.export / torchao deprecation notes
        export_pte(model, path, image_size, calibration=calibration)
    return Path(path), load_pte(path)
