"""Deployment: the torch-free runtime, ONNX export (parity-checked), INT8/FP16/TensorRT, benchmark, predict.

The app API is torch-free and loads lazily::

    from edgedistill.deploy import load_bundle
    labels = load_bundle("exports/student").classify(["cat.jpg"], top_k=3)

Otherwise import the submodules directly; this package imports nothing up front, so
``edgedistill.deploy.runtime`` and ``edgedistill.deploy.predict`` load without torch.
"""

from __future__ import annotations

__all__ = ["Bundle", "load_bundle"]


def __getattr__(name: str):
    if name in __all__:
        from edgedistill.deploy import bundle

        return getattr(bundle, name)
    raise AttributeError(f"module 'edgedistill.deploy' has no attribute {name!r}")
