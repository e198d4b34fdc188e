"""A serialized TensorRT engine (TensorRT >= 10 API) on CUDA tensors."""

from __future__ import annotations

from pathlib import Path


def available(runtime) -> tuple[bool, str]:
    from edgedistill.deploy.quantize import tensorrt_status

    try:
        import torch
    except ImportError:
        return False, "torch is not installed (pip install 'edgedistill[train]')"
    if not torch.cuda.is_available():
        return False, "no CUDA GPU is visible"
    return tensorrt_status()


def prepare(runtime, job: dict) -> None:
    import torch

    torch.zeros(1, device="cuda")


def load(runtime, job: dict, x):
    import tensorrt as trt
    import torch

    xt = torch.from_numpy(x).cuda()
    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(Path(job["path"]).read_bytes())
    context = engine.create_execution_context()
    stream = torch.cuda.Stream()
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    context.set_input_shape(inputs[0], tuple(xt.shape))
    buffers = {inputs[0]: xt.contiguous()}
    for n in names:
        if n not in buffers:
            buffers[n] = torch.empty(tuple(context.get_tensor_shape(n)), device="cuda", dtype=torch.float32)
    for n, t in buffers.items():
        context.set_tensor_address(n, t.data_ptr())

    def run():
        context.execute_async_v3(stream.cuda_stream)
        stream.synchronize()

    return run, torch.cuda.synchronize


def gpu_mem_mb(runtime) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**20
