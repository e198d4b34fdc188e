"""edgedistill: distil a large vision(-language) teacher into a small, fast student for the edge.

Python API (``edgedistill.api``; each takes typed configs, mappings or YAML files, returns typed results)::

    import edgedistill

    results = edgedistill.distill("my_distill.yaml")   # DistillResults (pipelines.results)
    caches = edgedistill.cache(data, teacher)           # {source: TeacherCache}
    run = edgedistill.train(data=data, teacher=teacher, train=train)   # TrainResult
    files = edgedistill.export(run.run_dir, int8=True)  # {"student": ExportSummary}

The package follows the pipeline (docs/design.md draws the layers)::

    config, registry, errors, storage, console         plain data, the registries, files (torch-free)
    data/ -> teachers/ -> cache -> heads/ -> training/ (datamodule, module, fit, optimize) -> evaluate
          -> deploy/ (export, quantize, bench, runtime, predict)
    prompts, retrieve                                   zero-label: class prompts, images retrieved from a pool
    losses, students                                    the distillation losses, the timm students
    pipelines/ (distill, grid, report, results)         whole jobs, their reports and typed results
    api, cli                                            the Python API and the command line

Importing the package is cheap: the API functions (and ``edgedistill.cache``, a module that is also
callable) are imported on first use, so neither torch nor any model library is loaded here.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = ("distill", "train", "export")


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module("edgedistill.api"), name)
    if name == "cache":  # the module edgedistill.cache, callable as the API function
        return importlib.import_module("edgedistill.cache")
    raise AttributeError(f"module 'edgedistill' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API, "cache"])


__all__ = ["__version__", "cache", "distill", "export", "train"]
