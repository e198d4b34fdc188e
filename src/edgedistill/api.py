"""The Python API: each step of the command line as a function, as timm and open_clip users call theirs.

    import edgedistill

    results = edgedistill.distill("my_distill.yaml")          # or a DistillConfig, or a dict of its fields
    print(results.best.name, results.best.test_acc)           # typed: pipelines.results.DistillResults

    caches = edgedistill.cache({"dataset": "imagefolder", "root": "photos/"}, {"kind": "efficientnet_lite0"})
    run = edgedistill.train(data=..., teacher=..., train={"target": "logits", "head": "label_map"})
    exported = edgedistill.export(run.run_dir, out="exports", int8=True)

Every config argument takes the typed config (``edgedistill.config``), a mapping of its fields, or a
YAML file of them; every function returns typed results. ``edgedistill.cache`` is the module
``edgedistill.cache`` made callable (it calls ``edgedistill.cache.cache``). Each function is what
its command runs, without the printing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from edgedistill.cache import cache
from edgedistill.config import DataConfig, DistillConfig, TeacherConfig, TrainConfig, load_config, load_sections
from edgedistill.pipelines.results import DistillResults, ExportSummary, TrainResult

Config = dict | str | os.PathLike


def distill(config: DistillConfig | Config | None = None) -> DistillResults:
    """From a folder of images to a deployed, benchmarked student (``edgedistill distill``).

    Args:
        config: a ``DistillConfig``, a mapping of its fields, or a YAML file of them (``plugins`` are loaded first).

    Returns:
        The run's results, also written to ``<out>/results.json`` with ``report.md``.
    """
    from edgedistill.pipelines.distill import run_distill

    return run_distill(load_config(DistillConfig, config))


def train(
    config: Config | None = None,
    *,
    data: DataConfig | Config | None = None,
    teacher: TeacherConfig | Config | None = None,
    train: TrainConfig | Config | None = None,
) -> TrainResult:
    """Train one student (``edgedistill train``).

    Args:
        config: the sections ``data``, ``teacher``, ``train`` (and ``plugins``) as a mapping or a YAML file, as
            ``edgedistill train --config FILE`` reads them.
        data: the dataset; replaces ``config``'s ``data`` section.
        teacher: the teacher; replaces ``config``'s ``teacher`` section.
        train: how to train; replaces ``config``'s ``train`` section.

    Returns:
        The run directory and its metrics.
    """
    from edgedistill.training.fit import train as fit

    sections = load_sections(config, {"data": DataConfig, "teacher": TeacherConfig, "train": TrainConfig})
    given = {"data": (DataConfig, data), "teacher": (TeacherConfig, teacher), "train": (TrainConfig, train)}
    for name, (cls, value) in given.items():
        if value is not None:
            sections[name] = load_config(cls, value, name)
    return TrainResult.from_run(fit(sections["data"], sections["teacher"], sections["train"]))


def export(
    model: str | os.PathLike | None = None,
    out: str | os.PathLike = "exports",
    *,
    teacher: TeacherConfig | Config | None = None,
    calib_data: DataConfig | Config | None = None,
    val_split: str | None = "val",
    **options: Any,
) -> dict[str, ExportSummary]:
    """Export a trained student and/or a teacher's image tower to ONNX, parity-checked (``edgedistill export``).

    Args:
        model: a student run directory (or its ``student.safetensors``); None with ``teacher`` exports the teacher.
        out: output folder (``<out>/student/``, ``<out>/teacher/``).
        teacher: a teacher to export.
        calib_data: dataset of the INT8 calibration, real-image parity and accuracy; default: the student's.
        val_split: split on which accuracy is reported; None to skip.
        **options: the command's other flags (``int8``, ``fp16``, ``tensorrt``, ``calib_split``, ``calib_size``,
            ``opset``, ``tolerance``, ``prompts``).

    Returns:
        ``{"student": ExportSummary, "teacher": ExportSummary}`` for what was exported.
    """
    from edgedistill.deploy.export import export_command

    export_command(model=None if model is None else str(model), out=str(out),
                   teacher=None if teacher is None else load_config(TeacherConfig, teacher),
                   calib_data=None if calib_data is None else load_config(DataConfig, calib_data),
                   val_split=val_split, **options)
    done = {"student": model is not None, "teacher": teacher is not None}
    return {role: ExportSummary.from_export(Path(out) / role, val_split) for role, made in done.items() if made}


__all__ = ["cache", "distill", "export", "train"]
