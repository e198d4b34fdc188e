"""ExecuTorch with the XNNPACK backend (phones, ARM boards): runs a bundle's ``.pte`` program.

The Python runtime takes torch tensors, so this engine needs the [train] torch even though the
program itself is what a phone app ships. ``export_pte`` lowers an eager model to XNNPACK.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Callable, Iterable

import numpy as np


def available(runtime) -> tuple[bool, str]:
    for package, extra in (("torch", "train"), ("executorch", "executorch")):
        if importlib.util.find_spec(package) is None:
            return False, f"{package} is not installed (pip install 'edgedistill[{extra}]')"
    return True, ""


def export_pte(model, path: str | os.PathLike, image_size: int, *, max_batch: int = 64,
               calibration: Iterable[np.ndarray] | None = None) -> None:
    """Lower ``model`` (eager, eval) to an XNNPACK ExecuTorch program with a dynamic batch (1..max_batch).

    Args:
        calibration: float32 image batches: quantize to INT8 first (PT2E with XNNPACK's symmetric per-channel
            config, observers calibrated on these batches); None: FP32.
    """
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    from edgedistill import storage

    example = torch.randn(2, 3, image_size, image_size)  # batch 2: a batch of 1 would specialise the batch axis
    dynamic = ({0: torch.export.Dim("batch", min=1, max=max_batch)},)
    # XNNPACK's channels-last pass expects NCHW weights: undo a channels_last training layout first.
    model = model.eval().to(memory_format=torch.contiguous_format)
    with torch.no_grad():
        program = torch.export.export(model, (example,), dynamic_shapes=dynamic)
        if calibration is not None:
            from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (XNNPACKQuantizer,
                                                                                 get_symmetric_quantization_config)
            from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

            quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
            prepared = prepare_pt2e(program.module(), quantizer)
            for batch in calibration:
                prepared(torch.from_numpy(np.ascontiguousarray(batch, np.float32)))
            program = torch.export.export(convert_pt2e(prepared), (example,), dynamic_shapes=dynamic)
        buffer = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()]).to_executorch().buffer
    storage.write_bytes(path, buffer)


# The XNNPACK program's input is a bounded tensor whose capacity does not follow the exported batch range: with
# executorch 1.5.1 and torch 2.14.1, programs exported with Dim("batch", max=64) or max=256 both refuse batches above
# 15 ("Attempted to resize a bounded tensor"). The runner feeds larger batches in chunks of this size.
CHUNK = 8


def load_pte(path: str | os.PathLike, threads: int | None = None) -> Callable[[np.ndarray], list[np.ndarray]]:
    """A callable running a ``.pte`` program's ``forward`` on float32 images, returning its outputs in order
    (batches larger than :data:`CHUNK` run in chunks)."""
    import torch
    from executorch.runtime import Runtime

    if threads:
        from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool

        _unsafe_reset_threadpool(int(threads))
    method = Runtime.get().load_program(str(path)).load_method("forward")

    def run(x: np.ndarray) -> list[np.ndarray]:
        x = torch.from_numpy(np.ascontiguousarray(x, np.float32))
        parts = [[o.numpy() for o in method.execute([x[i:i + CHUNK]])] for i in range(0, len(x), CHUNK)]
        return parts[0] if len(parts) == 1 else [np.concatenate(outs) for outs in zip(*parts)]

    return run


def prepare(runtime, job: dict) -> None:
    import torch  # noqa: F401
    from executorch.runtime import Runtime

    Runtime.get()


def load(runtime, job: dict, x):
    run = load_pte(job["path"], job["threads"])
    return (lambda: run(x)), (lambda: None)
