"""ONNX export of a PyTorch image model, parity-checked against ONNX Runtime before it lands.

The leaf of the export world: a model in, an ``.onnx`` file with its :class:`DeployMeta` out.
It knows nothing of students, teachers, runs or recipes, so the ONNX Runtime teacher
(``teachers.base.OnnxRuntimeTeacher``) exports its tower with it, and ``deploy.export`` builds
students' and teachers' exports (INT8, FP16, TensorRT, accuracy) on top of it.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from edgedistill import storage
from edgedistill.deploy.quantize import set_metadata
from edgedistill.deploy.runtime import INPUT_NAME, DeployMeta, ort_session
from edgedistill.errors import ConfigError, EdgeDistillError

__all__ = ["DeployModel", "ParityError", "check_parity", "export_onnx"]


class ParityError(EdgeDistillError):
    """ONNX Runtime's outputs differ from PyTorch's by more than the tolerance."""


class DeployModel(nn.Module):
    """An image tower, optionally with its head folded in, returning fixed named outputs.

    Args:
        backbone: maps images [B, 3, H, W] to a tensor [B, K] or (a teacher) a dict of tensors.
        head: optional module mapping the backbone's [B, D] embedding to logits [B, C].
        output_names: names of the ONNX outputs, in order. With a head: ``("logits", "embedding")``;
            with a dict-returning backbone: the dict keys to return.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module | None = None, output_names: Sequence[str] = ("logits",)):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.output_names = tuple(output_names)

    def forward(self, image: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        out = self.backbone(image)
        if isinstance(out, dict):  # a Teacher returns {"embedding": [B, D], "logits": [B, C]}
            outs = tuple(out[k] for k in self.output_names)
            return outs[0] if len(outs) == 1 else outs
        if self.head is not None:
            return self.head(out), out  # logits [B, C], embedding [B, D]
        return out


def export_onnx(model: nn.Module, path: str | os.PathLike, *, meta: DeployMeta, opset: int = 17,
                check: dict[str, torch.Tensor] | None = None, tolerance: float = 1e-3,
                precision: str = "fp32") -> tuple[Path, dict[str, float]]:
    """Export ``model`` to ONNX with a dynamic batch axis and ``meta`` in metadata_props; parity-check it in place.

    The legacy TorchScript exporter (``dynamo=False``) handles both timm CNNs and open_clip ViTs
    in about a second, where the dynamo exporter needs per-model dynamic-shape specs.

    Args:
        model: module mapping ``image`` [B, 3, S, S] to ``meta.outputs``.
        path: the ``.onnx`` file; written only if the parity check on ``check`` passes.
        meta: its description (view, outputs, ...), stored under the metadata key ``edgedistill``.
        opset: ONNX opset (>= 17: LayerNormalization is native).
        check: named input batches for :func:`check_parity` (None: no check).
        tolerance: largest allowed ONNX Runtime vs PyTorch difference.
        precision: the label stored in the metadata (``fp32``, ``sparse-fp32``, ``qat-int8``, ...). A ModelOpt
            fake-quantized model exports as QDQ (its quantizers' ONNX symbolics; hence the TorchScript exporter).

    Returns:
        The written path, and the max abs difference on each named check batch.

    Raises:
        ParityError: the exported graph differs from PyTorch; nothing is written.
    """
    import onnx

    if opset < 17:
        raise ConfigError(f"opset={opset} is too old; use opset >= 17")
    path = Path(path)
    size = meta.view["image_size"]
    axes = {0: "batch", 2: "height", 3: "width"} if meta.dynamic_hw else {0: "batch"}
    dynamic_axes = {INPUT_NAME: axes, **{name: {0: "batch"} for name in meta.outputs}}
    example = torch.randn(2, 3, size, size)
    model = model.eval()
    # nn.MultiheadAttention's inference fast path traces to aten::_native_multi_head_attention,
    # which has no ONNX symbolic: trace the plain path.
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with storage.atomic_path(path) as tmp, torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the legacy exporter's deprecation and tracer warnings
            torch.onnx.export(model, (example,), str(tmp), dynamo=False, opset_version=opset, input_names=[INPUT_NAME],
                              output_names=list(meta.outputs), dynamic_axes=dynamic_axes, do_constant_folding=True)
            proto = onnx.load(str(tmp))
            set_metadata(proto, dataclasses.replace(meta, precision=precision, opset=opset))
            onnx.save(proto, str(tmp))
            parity = {what: check_parity(model, tmp, [x], tolerance=tolerance, what=what)
                      for what, x in (check or {}).items()}
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return path, parity


def check_parity(model: nn.Module, onnx_path: str | os.PathLike, inputs: Sequence[torch.Tensor], *,
                 tolerance: float = 1e-3, what: str = "random") -> float:
    """Maximum absolute difference between ONNX Runtime and PyTorch over all outputs and inputs.

    Raises:
        ParityError: if the difference exceeds ``tolerance``.
    """
    sess = ort_session(onnx_path)
    worst = 0.0
    with torch.no_grad():
        for x in inputs:
            ref = model(x)
            ref = ref if isinstance(ref, tuple) else (ref,)
            got = sess.run(None, {INPUT_NAME: x.numpy()})
            for r, g in zip(ref, got):
                worst = max(worst, float(np.abs(r.float().numpy() - g.astype(np.float32)).max()))
    if not worst <= tolerance:  # also catches NaN
        raise ParityError(f"ONNX export {str(onnx_path)!r} does not match PyTorch on {what} inputs: max abs diff "
                          f"{worst:.3g} > tolerance {tolerance:g}")
    return worst
