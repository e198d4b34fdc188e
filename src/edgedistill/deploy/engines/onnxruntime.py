"""ONNX Runtime (CPU, CUDA, TensorRT execution providers): runs the exported ``.onnx`` files.

The engine interface every module here implements:

- ``available(runtime) -> (ok, why_not)``: can it run on this machine?
- ``prepare(runtime, job)``: import the engine (before the memory baseline, so the library is not counted).
- ``load(runtime, job, x) -> (run, sync)``: load ``job["path"]`` and return a callable running it on the batch
  ``x`` (float32 ``[B, 3, S, S]``) and one waiting for the device (``lambda: None`` on the CPU).
- optional ``gpu_mem_mb(runtime)``: peak device memory after the timed runs.
"""

from __future__ import annotations

from edgedistill.deploy.runtime import ort_session


def available(runtime) -> tuple[bool, str]:
    import onnxruntime as ort

    first = runtime.providers[0]
    need = first if isinstance(first, str) else first[0]
    have = ort.get_available_providers()
    return need in have, f"ONNX Runtime has no {need} here (available: {', '.join(have)})"


def prepare(runtime, job: dict) -> None:
    import onnxruntime  # noqa: F401


def load(runtime, job: dict, x):
    sess = ort_session(job["path"], runtime.providers, job["threads"], job.get("ort_settings"))
    name = sess.get_inputs()[0].name
    return (lambda: sess.run(None, {name: x})), (lambda: None)
