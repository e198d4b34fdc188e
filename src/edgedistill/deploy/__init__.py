"""Deployment: the torch-free runtime, ONNX export (parity-checked), INT8/FP16/TensorRT, benchmark, predict.

Import the submodules directly; this package imports nothing, so ``edgedistill.deploy.runtime``
and ``edgedistill.deploy.predict`` load without torch.
"""
