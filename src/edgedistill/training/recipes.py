"""An ``edgedistill optimize`` stage as others read it: is a folder a stage, its recipe, its student.

``deploy.export`` reads these (precision labels, the QAT student to export as QDQ); the fine-tune
that writes them is ``training.optimize``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from edgedistill import storage
from edgedistill.errors import EdgeDistillError
from edgedistill.students import StudentManifest, load_student
from edgedistill.training.modelopt import load_modelopt, prepare_student, require_modelopt

OPTIMIZE_FORMAT = 1
SPARSE_STAGE = "sparse24"
RECIPE_PRECISION = {"qat": "qat-int8", "sparse24": "sparse-fp32", "sparse24-qat": "sparse-qat-int8"}
"""Recipe -> the precision label its exported model carries (``DeployMeta.precision``)."""


def is_optimized_run(path: str | Path) -> bool:
    """Whether ``path`` (a folder or a file in it) is a finished or started optimize stage."""
    folder = storage.run_dir_of(path)
    return (folder / "optimize.json").is_file()


def read_recipe(path: str | Path) -> dict[str, Any]:
    """The ``recipe.json`` of a finished stage.

    Raises:
        EdgeDistillError: the stage never finished (no recipe.json).
    """
    folder = storage.run_dir_of(path)
    if not (folder / "recipe.json").is_file():
        raise EdgeDistillError(f"{str(folder)!r} is an optimize stage that has not finished (no recipe.json); "
                               "run 'edgedistill optimize ... --resume true' to finish it")
    return storage.read_json(folder / "recipe.json")


def load_optimized_student(path: str | Path) -> tuple[nn.Module, Any, dict[str, Any]]:
    """A finished stage's student in eval mode, its manifest and its recipe.

    QAT recipes: the fake-quantized ModelOpt model (needs ``nvidia-modelopt``); 2:4 alone: the plain
    timm student with the zeros in its weights (no ModelOpt needed).
    """
    folder = storage.run_dir_of(path)
    recipe = read_recipe(folder)
    if not recipe["qat"]:
        model, manifest = load_student(folder)
        return model, manifest, recipe
    mo = require_modelopt(f"Loading the QAT student of {str(folder)!r}")
    manifest = StudentManifest.load(folder / "student.json")
    return load_modelopt(lambda: prepare_student(manifest.create()), mo, folder).eval(), manifest, recipe


__all__ = ["OPTIMIZE_FORMAT", "RECIPE_PRECISION", "SPARSE_STAGE", "is_optimized_run", "load_optimized_student",
           "read_recipe"]
