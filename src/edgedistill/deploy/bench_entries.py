"""What a benchmark runs: :class:`BenchEntry` (a model's files per runtime), from an export bundle or the
tutorial's random-init OpenCLIP image tower."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from edgedistill import storage
from edgedistill.config import DEFAULT_OPENCLIP_MODEL
from edgedistill.deploy.runtime import read_metadata
from edgedistill.errors import EdgeDistillError


@dataclass
class BenchEntry:
    """One model to benchmark.

    Attributes:
        model: its role: ``"teacher"``, ``"tutorial_teacher"`` (the tutorial's ViT-B-32) or ``"student"``.
        arch: architecture name shown in tables.
        onnx: precision (``fp32``/``int8``/``fp16``) -> ONNX file, for the ONNX Runtime runtimes.
        torch: how a child rebuilds the eager model, for the PyTorch runtimes:
            ``{"kind": "student", "path": run_dir}``, ``{"kind": "teacher", "config": TeacherConfig dict}``,
            ``{"kind": "open_clip", "name": "ViT-B-32", "config": optional model config}`` (image tower, random
            init) or ``{"kind": "timm", "arch": "resnet18", "num_classes": 10}``; None: no eager rows.
        resolutions: input sizes to run (e.g. 224 for the tutorial and the native size).
        native_resolution: the size the model is deployed at (rows at it are flagged ``native``).
        engines: precision -> TensorRT engine file, for the ``tensorrt`` runtime.
        openvino: precision -> OpenVINO IR (``.xml``, e.g. NNCF INT8); the ``openvino`` runtime runs the ONNX file of a
            precision that has none.
        pte: precision -> ExecuTorch program (``.pte``, XNNPACK), for the ``executorch`` runtime.
        unavailable: file kinds (``openvino``) the export found its runtime cannot run, with the reason.
    """

    model: str
    arch: str
    onnx: dict[str, str] = field(default_factory=dict)
    torch: dict | None = None
    resolutions: tuple[int, ...] = (224,)
    native_resolution: int | None = None
    engines: dict[str, str] = field(default_factory=dict)
    openvino: dict[str, str] = field(default_factory=dict)
    pte: dict[str, str] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)

    def files_for(self, files: str) -> dict[str, str]:
        """precision -> file for a runtime that runs ``files`` (see ``engines.Runtime.files``)."""
        if files in self.unavailable:
            return {}
        if files == "onnx":
            return dict(self.onnx)
        if files == "engines":
            return dict(self.engines)
        if files == "openvino":
            return {**self.onnx, **self.openvino}
        if files == "pte":
            return dict(self.pte)
        raise EdgeDistillError(f"unknown file kind {files!r}; valid: onnx, engines, openvino, pte")


def entry_from_export(path: str | os.PathLike, model: str) -> BenchEntry:
    """A :class:`BenchEntry` from an export directory (``export.json``) or a single exported ``.onnx`` file."""
    path = Path(path)
    engines: dict[str, str] = {}
    openvino: dict[str, str] = {}
    pte: dict[str, str] = {}
    unavailable: dict[str, str] = {}
    if path.is_dir():
        if not (path / "export.json").is_file():
            raise EdgeDistillError(f"{str(path)!r} is not an export directory (no export.json); run 'edgedistill export' first")
        report = storage.read_json(path / "export.json")
        files, unavailable = report["files"], report.get("targets_unavailable") or {}
        onnx = {p: str(path / f) for p, f in files.items() if p in ("fp32", "int8", "fp16")}
        engines = {p.split("_", 1)[1]: str(path / f) for p, f in files.items() if p.startswith("tensorrt_")}
        openvino = {p.split("_", 1)[1]: str(path / f) for p, f in files.items() if p.startswith("openvino_")}
        pte = {p.split("_", 1)[1]: str(path / f) for p, f in files.items() if p.startswith("executorch_")}
        meta = read_metadata(onnx["fp32"])
    else:
        meta = read_metadata(path)
        onnx = {meta.precision: str(path)}
    native = meta.view["image_size"]
    torch_spec = None
    if meta.role == "student" and meta.source and Path(meta.source).exists():
        torch_spec = {"kind": "student", "path": meta.source}
    elif meta.role == "teacher" and meta.teacher:
        torch_spec = {"kind": "teacher", "config": meta.teacher}
    resolutions = tuple(sorted({224, native})) if meta.dynamic_hw else (native,)
    return BenchEntry(model=model, arch=meta.arch, onnx=onnx, torch=torch_spec, resolutions=resolutions,
                      native_resolution=native, engines=engines, openvino=openvino, pte=pte, unavailable=unavailable)


def open_clip_tower(name: str, config: dict | None = None):
    """The image tower of an open_clip model, random-init (speed does not depend on weights)."""
    import open_clip

    from edgedistill.console import log_at_least
    from edgedistill.teachers.openclip import register_model_config

    if config:
        register_model_config(name, config)
    with log_at_least():  # "no pretrained weights loaded": random weights are the point here
        return open_clip.create_model(name, pretrained=None).visual.eval()


def tutorial_teacher_entry(out_dir: str | os.PathLike, name: str = DEFAULT_OPENCLIP_MODEL, config: dict | None = None) -> BenchEntry:
    """Export a random-init open_clip image tower (the tutorial's teacher, for speed only) and describe it."""
    import open_clip

    from edgedistill.deploy.export import DeployModel, export_onnx
    from edgedistill.deploy.runtime import DeployMeta

    path = Path(out_dir) / f"{name}.onnx"
    tower = open_clip_tower(name, config)
    size = tower.image_size[0] if isinstance(tower.image_size, (tuple, list)) else tower.image_size
    if not path.is_file():
        meta = DeployMeta(role="teacher", arch=f"{name} (random init)", target="embedding", outputs=["embedding"],
                          view={"image_size": size, "mean": list(open_clip.OPENAI_DATASET_MEAN),
                                "std": list(open_clip.OPENAI_DATASET_STD), "interpolation": "bicubic",
                                "resize_mode": "shortest"})
        export_onnx(DeployModel(tower, None, ("embedding",)), path, meta=meta)
    return BenchEntry(model="tutorial_teacher", arch=name, onnx={"fp32": str(path)},
                      torch={"kind": "open_clip", "name": name, "config": config}, resolutions=(size,), native_resolution=size)
