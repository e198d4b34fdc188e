"""Export a student or a teacher image tower to ONNX, parity-checked; INT8, FP16 and TensorRT variants.

One export directory holds everything deployment needs, and no teacher::

    <out>/student/model.onnx                 FP32, dynamic batch, its DeployMeta in metadata_props
    <out>/student/model.int8.onnx            QDQ INT8 (ONNX Runtime static quantization)
    <out>/student/model.fp16.onnx            FP16 weights and activations, FP32 inputs/outputs
    <out>/student/model.fp16.engine          TensorRT engine (only where ``tensorrt`` imports)
    <out>/student/model.openvino.int8.xml    OpenVINO IR (+ .bin): NNCF INT8 (``--openvino``; OpenVINO runs model.onnx)
    <out>/student/model.pte                  ExecuTorch program, XNNPACK (``--executorch``; model.int8.pte with --int8)
    <out>/student/model.text_embeddings.npy  [C, D] text embeddings of class names / prompts
    <out>/student/labels.txt                 class names, one a line (the logits' columns)
    <out>/student/export.json                what was exported (its ``meta``: labels, preprocessing), parity, accuracy
    <out>/student/README.md                  the model card (``deploy.card``): provenance, accuracy, speed, usage

An ``edgedistill optimize`` stage exports the same files: ``model.onnx`` is its float model
(2:4 recipes: dense weights with the zeros in, precision ``sparse-fp32``) and, for QAT recipes,
``model.int8.onnx`` is the fake-quantized ModelOpt model as QDQ ONNX (``qat-int8`` /
``sparse-qat-int8``, parity-checked against the fake-quantized PyTorch model) in place of ONNX
Runtime's post-training INT8. ``export.json`` and the metadata (``extra.optimize``) carry the
recipe and the sparsity measured on the exported weights; TensorRT engines get ``int8`` and
``sparse`` as the model asks.

A model that fails its parity check never lands: it is checked in its temp file and the
temp file is removed. Embedding students are exported with their head folded in: outputs
``logits`` [B, C] and ``embedding`` [B, D]; the stored text embeddings let
``predict --prompts`` re-purpose the model to new classes without retraining.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from edgedistill import storage
from edgedistill.config import DataConfig, TeacherConfig, asdict, from_dict
from edgedistill.console import say
from edgedistill.data.splits import build_splits
from edgedistill.data.transforms import eval_transform
from edgedistill.data.views import ViewSpec
from edgedistill.deploy.onnx import DeployModel, ParityError, check_parity, export_onnx
from edgedistill.deploy.quantize import (
    TensorRTUnavailableError,
    build_tensorrt_engine,
    convert_fp16,
    quantize_int8,
    tensorrt_status,
)
from edgedistill.deploy.card import write_model_card
from edgedistill.deploy.runtime import INPUT_NAME, DeployMeta, ort_session
from edgedistill.errors import ConfigError, EdgeDistillError
from edgedistill.heads import load_head
from edgedistill.students import load_student
from edgedistill.teachers import create_teacher
from edgedistill.training.modelopt import is_two_of_four
from edgedistill.training.recipes import load_optimized_student, read_recipe
from edgedistill.training.record import read_run_record

__all__ = ["DeployModel", "ParityError", "TensorRTUnavailableError", "check_parity", "export_command", "export_model",
           "export_onnx", "load_student_deploy", "load_teacher_deploy", "onnx_accuracy"]


# --------------------------------------------------------------------------- loading models


def run_configs(path: str | os.PathLike) -> dict:
    """The resolved configs (``data``, ``teacher``, ``train``) of the ``config.yaml`` of the run holding ``path``, or {}."""
    return read_run_record(storage.run_dir_of(path))


def head_text_embeddings(head: nn.Module | None) -> torch.Tensor | None:
    """The class text embeddings [C, D] of a ``TextHead``, or None for other heads."""
    emb = getattr(head, "text_embeddings", None)
    return emb.detach().float().cpu() if isinstance(emb, torch.Tensor) else None


def load_student_deploy(path: str | os.PathLike) -> tuple[DeployModel, DeployMeta]:
    """A student as a :class:`DeployModel` (head folded in for embedding students) and its ONNX metadata."""
    model, manifest = load_student(path)
    run_dir = storage.run_dir_of(path)
    head = load_head(run_dir) if manifest.target == "embedding" and (run_dir / "head.json").is_file() else None
    outputs = ["logits", "embedding"] if head is not None else (["embedding"] if manifest.target == "embedding" else ["logits"])
    teacher = run_configs(path).get("teacher") or manifest.teacher  # config.yaml has the full TeacherConfig
    meta = DeployMeta(
        role="student", arch=manifest.arch, outputs=outputs, view=ViewSpec(**manifest.view).to_dict(),
        target=manifest.target, class_names=list(manifest.class_names),
        logit_scale=float(head.logit_scale) if hasattr(head, "logit_scale") else None,
        dynamic_hw=True,  # CNN students run at any resolution (224 for the tutorial, native for deployment)
        teacher=teacher if manifest.target != "labels" else None, source=str(Path(path).resolve()),
    )
    if (run_dir / "optimize.json").is_file():  # an `edgedistill optimize` stage: plain weights, its recipe beside
        recipe = read_recipe(run_dir)
        meta.extra["optimize"] = {k: recipe[k] for k in ("recipe", "precision", "qat", "sparsity", "sparsity_method",
                                                          "parent", "modelopt")}
    return DeployModel(model, head, outputs).eval(), meta


def load_qat_deploy(path: str | os.PathLike, like: DeployModel) -> DeployModel:
    """The fake-quantized (ModelOpt) student of a QAT stage as a :class:`DeployModel` shaped like ``like``."""
    model = load_optimized_student(path)[0]
    return DeployModel(model, like.head, like.output_names).eval()


def teacher_config(info: dict) -> TeacherConfig:
    """A TeacherConfig from a recorded teacher (extra keys such as fingerprint or view dropped)."""
    names = {f.name for f in dataclasses.fields(TeacherConfig)}
    return from_dict(TeacherConfig, {k: v for k, v in info.items() if k in names}, "recorded teacher")


def load_teacher_deploy(cfg: TeacherConfig) -> tuple[DeployModel, DeployMeta, Any]:
    """A teacher's image tower as a :class:`DeployModel`, its ONNX metadata, and the Teacher itself."""
    teacher = create_teacher(dataclasses.replace(cfg, device="cpu", runtime="torch")).eval()  # export traces on CPU
    outputs = ["embedding", "logits"] if teacher.num_classes else ["embedding"]
    meta = DeployMeta(
        role="teacher", arch=teacher.name, outputs=outputs, view=teacher.view.to_dict(), target="embedding",
        class_names=list(teacher.class_names or []), logit_scale=float(teacher.logit_scale),
        dynamic_hw=False,  # ViT position embeddings fix the resolution
        teacher=asdict(cfg), source=cfg.describe(),
    )
    return DeployModel(teacher, None, outputs).eval(), meta, teacher


# --------------------------------------------------------------------------- ONNX


def _as_tuple(out: torch.Tensor | tuple) -> tuple:
    return out if isinstance(out, tuple) else (out,)


def onnx_weight_sparsity(onnx_path: str | os.PathLike) -> dict[str, Any]:
    """The 2:4 pattern as it landed in an exported file: per Conv/Gemm/MatMul weight, its zeros and the 2:4 check.

    A QDQ weight is followed back through DequantizeLinear/QuantizeLinear to its float initializer (its int8
    image ``round(w / scale)`` with zero point 0 has the same zeros).

    Returns:
        ``{"weights": n, "two_of_four": n 2:4 along input channels, "layers": [{"node", "shape", "zeros", "two_of_four"}]}``.
    """
    import onnx
    from onnx import numpy_helper


    graph = onnx.load(str(onnx_path)).graph
    inits = {i.name: i for i in graph.initializer}
    producer = {out: n for n in graph.node for out in n.output}
    layers = []
    for node in graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2:
            continue
        name = node.input[1]
        while name not in inits and name in producer and producer[name].op_type in ("DequantizeLinear", "QuantizeLinear"):
            name = producer[name].input[0]
        if name not in inits:
            continue
        w = numpy_helper.to_array(inits[name])
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        if w.ndim == 2 and (node.op_type == "MatMul" or (node.op_type == "Gemm" and not trans_b)):
            w = w.T  # [in, out] -> [out, in]: groups run along the input features
        layers.append({"node": node.name, "shape": list(w.shape), "zeros": round(float((w == 0).mean()), 4),
                       "two_of_four": is_two_of_four(w)})
    return {"weights": len(layers), "two_of_four": sum(e["two_of_four"] for e in layers), "layers": layers}


# --------------------------------------------------------------------------- evaluation on real images


def _batches_of(dataset, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(images [B, 3, S, S], labels [B]) batches of a dataset of dicts; unreadable (None) items skipped."""
    images, labels = [], []
    for i in range(len(dataset)):
        item = dataset[i]
        if item is None:
            continue
        images.append(np.asarray(item["image"], dtype=np.float32))
        labels.append(int(item["label"]))
        if len(images) == batch_size:
            yield np.stack(images), np.asarray(labels)
            images, labels = [], []
    if images:
        yield np.stack(images), np.asarray(labels)


def onnx_accuracy(onnx_path: str | os.PathLike, dataset, batch_size: int = 64) -> float:
    """Top-1 accuracy (0..1) of an exported model's ``logits`` output on a labeled dataset (label -1 skipped)."""
    sess = ort_session(onnx_path)
    names = [o.name for o in sess.get_outputs()]
    if "logits" not in names:
        raise EdgeDistillError(f"{str(onnx_path)!r} has no 'logits' output (outputs: {', '.join(names)}); accuracy needs one")
    correct = total = 0
    for images, labels in _batches_of(dataset, batch_size):
        keep = labels >= 0
        if keep.any():
            logits = sess.run(["logits"], {INPUT_NAME: images[keep]})[0]
            correct += int((logits.argmax(1) == labels[keep]).sum())
            total += int(keep.sum())
    if total == 0:
        raise EdgeDistillError("onnx_accuracy got a dataset without labeled images")
    return correct / total


def real_images(cfg: DataConfig, split: str, view: dict, limit: int | None = None, seed: int = 0):
    """A (random, fixed-seed) subset of a split, preprocessed with ``view``, as a torch Dataset."""
    dataset = build_splits(cfg).dataset(split, eval_transform(ViewSpec(**view)))
    if limit is not None and len(dataset) > limit:
        idx = np.random.default_rng(seed).choice(len(dataset), size=limit, replace=False)
        dataset = torch.utils.data.Subset(dataset, sorted(idx.tolist()))
    return dataset


# --------------------------------------------------------------------------- the command


def _text_embeddings(meta: DeployMeta, class_emb: torch.Tensor | None, prompts: list[str] | None,
                     teacher: Any) -> tuple[list[str], np.ndarray] | None:
    """(names, float32 [C, D]): the class text embeddings and those of extra prompts, to store beside the model."""
    names = list(meta.class_names) if class_emb is not None else []
    emb = [class_emb] if class_emb is not None else []
    extra = [p for p in (prompts or []) if p not in names]
    if extra:
        if teacher is None or not getattr(teacher, "has_text", False):
            raise ConfigError(f"--prompts {extra} need the teacher's text encoder; give --teacher (an open_clip teacher) "
                              "to embed them")
        with torch.no_grad():
            emb.append(teacher.encode_text(extra).float().cpu())
        names += extra
    return (names, torch.cat(emb).numpy().astype(np.float32)) if emb else None


def export_model(
    model: DeployModel,
    meta: DeployMeta,
    out_dir: str | os.PathLike,
    *,
    data: DataConfig | None = None,
    int8: bool = False,
    fp16: bool = False,
    tensorrt: bool = False,
    calib_split: str = "train",
    calib_size: int = 256,
    val_split: str | None = "val",
    opset: int = 17,
    tolerance: float = 1e-3,
    text_embeddings: torch.Tensor | None = None,
    prompts: list[str] | None = None,
    teacher: Any = None,
    qat: nn.Module | None = None,
    qat_tolerance: float = 0.05,
    openvino: bool = False,
    executorch: bool = False,
) -> dict:
    """Export one model with all requested variants into ``out_dir``; returns (and writes) ``export.json``.

    Args:
        model: the module to export (outputs named in ``meta.outputs``).
        meta: its description, stored in every ONNX file.
        out_dir: folder for ``model*.onnx``, the engine, text embeddings and ``export.json``.
        data: dataset for real-image parity, INT8 calibration and accuracy; None: random inputs only.
        int8, fp16, tensorrt: which variants to build besides FP32.
        calib_split, calib_size: images calibrating INT8.
        val_split: split on which FP32 and INT8 accuracy are reported (None: skip).
        opset, tolerance: ONNX opset; the largest allowed ONNX-vs-PyTorch difference.
        text_embeddings: class text embeddings [C, D] to store for re-purposing with prompts.
        prompts, teacher: extra prompts, embedded with ``teacher.encode_text``.
        qat: the fake-quantized ModelOpt twin of ``model`` (a QAT stage): exported as ``model.int8.onnx`` (QDQ) in
            place of ONNX Runtime's post-training INT8, and needs no calibration images.
        qat_tolerance: largest allowed QDQ-vs-fake-quant difference, as a fraction of the largest PyTorch output:
            the two round at different points (``x * (127 / amax)`` vs ``x / (amax / 127)``), so a value at a
            rounding boundary can land one quantization step apart.
        openvino: parity-check OpenVINO on ``model.onnx`` against PyTorch and, with ``int8``, write NNCF's INT8
            (``model.openvino.int8.xml``, calibrated on the same images) with its accuracy.
        executorch: write an XNNPACK ExecuTorch program (``model.pte``), parity-checked against PyTorch.
    """
    int8 = int8 and qat is None
    if int8 and data is None:
        raise ConfigError("--int8 needs real calibration images: give --calib_data (e.g. --calib_data.dataset cifar10)")
    out_dir = Path(out_dir)
    size = meta.view["image_size"]
    text = _text_embeddings(meta, text_embeddings, prompts, teacher)
    if text is not None:  # recorded in the model's metadata; the file is written once the model passed its checks
        meta = dataclasses.replace(meta, text={"file": "model.text_embeddings.npy", "names": text[0]},
                                   logit_scale=meta.logit_scale if meta.logit_scale is not None
                                   else float(getattr(teacher, "logit_scale", 100.0)))
    report: dict[str, Any] = {"meta": dataclasses.asdict(meta), "files": {}, "parity": {}, "accuracy": {}}

    # Parity on inputs the exporter never saw: another batch size, fresh values, and real images.
    checks = {"random": torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(1234))}
    val = real_images(data, val_split, meta.view) if data is not None and val_split else None
    if val is not None:
        checks["real"] = torch.from_numpy(next(_batches_of(val, 8))[0])
    optimized = meta.extra.get("optimize") or {}
    sparse = bool(optimized.get("sparsity"))
    fp32, report["parity"] = export_onnx(model, out_dir / "model.onnx", meta=meta, opset=opset, check=checks,
                                         tolerance=tolerance, precision="sparse-fp32" if sparse else "fp32")
    report["files"]["fp32"] = fp32.name
    if optimized:
        report["optimize"] = {**optimized, "onnx_sparsity": {"model.onnx": onnx_weight_sparsity(fp32)}}
    if text is not None:
        storage.save_npy(out_dir / meta.text["file"], text[1])
    say(f"exported {fp32} (max abs diff vs PyTorch: " + ", ".join(f"{k} {v:.1e}" for k, v in report["parity"].items()) + ")")
    if val is not None and "logits" in meta.outputs and bool((np.asarray(val.labels) >= 0).any()):
        report["accuracy"]["fp32"] = onnx_accuracy(fp32, val)
        report["accuracy_split"] = val_split
    calib = None
    if int8:
        calib = real_images(data, calib_split, meta.view, limit=calib_size)
        q = quantize_int8(fp32, out_dir / "model.int8.onnx", (images for images, _ in _batches_of(calib, 16)))
        report["files"]["int8"] = q.name
        report["int8_calibration"] = {"split": calib_split, "images": len(calib)}
        if "fp32" in report["accuracy"]:
            report["accuracy"]["int8"] = onnx_accuracy(q, val)
        say(f"quantized {q} on {len(calib)} {calib_split} images")
    if qat is not None:
        with torch.no_grad():
            scale = max(max(float(o.abs().max()) for o in _as_tuple(qat(x))) for x in checks.values())
        qdq, parity = export_onnx(qat, out_dir / "model.int8.onnx", meta=meta, opset=opset, check=checks,
                                  tolerance=max(tolerance, qat_tolerance * scale),
                                  precision=optimized.get("precision", "qat-int8"))
        report["files"]["int8"] = qdq.name
        report["parity_int8_vs_fake_quant"] = parity
        report.setdefault("optimize", {"onnx_sparsity": {}})["onnx_sparsity"]["model.int8.onnx"] = \
            onnx_weight_sparsity(qdq)
        if "fp32" in report["accuracy"]:
            report["accuracy"]["int8"] = onnx_accuracy(qdq, val)
        say(f"exported the QAT model {qdq} (QDQ; max abs diff vs the fake-quantized PyTorch model: "
            + ", ".join(f"{k} {v:.1e}" for k, v in parity.items()) + f", largest output {scale:.3g})")
    if openvino or executorch:
        _export_targets(model, fp32, out_dir, report, checks, tolerance, openvino=openvino, executorch=executorch,
                        calib=calib if int8 else None, val=val)
    if fp16:
        report["files"]["fp16"] = convert_fp16(fp32, out_dir / "model.fp16.onnx").name
    if report["accuracy"]:
        say(f"accuracy on {val_split}: " + ", ".join(f"{k} {v:.4f}" for k, v in report["accuracy"].items()))
    ok, why = tensorrt_status()
    report["tensorrt"] = {"available": ok, "reason": why}
    if tensorrt and not ok:
        say(f"TensorRT unavailable, engine skipped: {why}")
    elif tensorrt:
        for prec, src in (("fp16", fp32), ("int8", out_dir / "model.int8.onnx")):
            if prec == "int8" and not (int8 or qat is not None):
                continue
            eng = build_tensorrt_engine(src, out_dir / f"model.{prec}.engine", image_size=size, fp16=True,
                                        int8=prec == "int8", sparse=sparse)
            report["files"][f"tensorrt_{prec}"] = eng.name
            say(f"built TensorRT engine {eng}")
    if meta.class_names:  # for apps that ship model.pte / the OpenVINO IR and cannot read the ONNX metadata
        storage.write_text(out_dir / "labels.txt", "\n".join(meta.class_names) + "\n")
    storage.write_json(out_dir / "export.json", report)
    write_model_card(out_dir, report)
    return report


def _first_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return f"{type(e).__name__}: {' | '.join(lines[-2:])[:300]}"


def _export_targets(model: nn.Module, fp32: Path, out_dir: Path, report: dict, checks: dict[str, torch.Tensor],
                    tolerance: float, *, openvino: bool, executorch: bool, calib, val) -> None:
    """OpenVINO (FP32 on model.onnx, NNCF INT8) and ExecuTorch (model.pte): parity against PyTorch, accuracy."""
    from edgedistill.deploy import targets

    logits = list(report["meta"]["outputs"]).index("logits") if "logits" in report["meta"]["outputs"] else None
    runners: dict[str, Any] = {}
    unavailable = report.setdefault("targets_unavailable", {})  # target -> why it cannot run this model
    if openvino:
        try:
            run = targets.openvino_runner(fp32)
            run(checks["random"].numpy())  # OpenVINO infers shapes at the first call (e.g. a pool larger than its input)
            runners["openvino_fp32"] = run
        except Exception as e:  # noqa: BLE001 - OpenVINO raises RuntimeError with its C++ trace for unsupported graphs
            unavailable["openvino"] = _first_line(e)
            say(f"OpenVINO cannot run {report['meta']['arch']}, skipped: {unavailable['openvino']}")
            openvino = False
    if executorch:
        try:
            pte, runners["executorch_fp32"] = targets.export_executorch(model, out_dir / "model.pte",
                                                                        report["meta"]["view"]["image_size"])
            report["files"]["executorch_fp32"] = pte.name
        except Exception as e:  # noqa: BLE001 - torch.export / XNNPACK lowering raise many types for unsupported graphs
            unavailable["executorch"] = _first_line(e)
            say(f"ExecuTorch cannot lower {report['meta']['arch']}, program skipped: {unavailable['executorch']}")
            executorch = False
    for name, run in runners.items():
        diffs = {what: targets.max_abs_diff(model, run, [x]) for what, x in checks.items()}
        report.setdefault("parity_targets", {})[name] = diffs
        if not max(diffs.values()) <= tolerance:
            if name == "executorch_fp32":
                (out_dir / "model.pte").unlink(missing_ok=True)
                report["files"].pop("executorch_fp32", None)
            raise ParityError(f"{name.replace('_', ' ')} of {str(fp32)!r} does not match PyTorch: max abs diff "
                              + ", ".join(f"{k} {v:.3g}" for k, v in diffs.items()) + f" > tolerance {tolerance:g}")
        say(f"{name.replace('_', ' ')} matches PyTorch (max abs diff: " + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()) + ")")
        if val is not None and logits is not None and "fp32" in report["accuracy"]:
            report["accuracy"][name] = targets.runner_accuracy(run, _batches_of(val, 64), logits)
    if executorch and calib is not None:
        pte8, run8 = targets.export_executorch(model, out_dir / "model.int8.pte", report["meta"]["view"]["image_size"],
                                               calibration=[images for images, _ in _batches_of(calib, 16)])
        report["files"]["executorch_int8"] = pte8.name
        if val is not None and logits is not None and "fp32" in report["accuracy"]:
            report["accuracy"]["executorch_int8"] = targets.runner_accuracy(run8, _batches_of(val, 64), logits)
        say(f"quantized {pte8} (ExecuTorch XNNPACK INT8) on the same {len(calib)} images")
    if openvino and calib is not None:
        xml = targets.quantize_openvino(fp32, out_dir / "model.openvino.int8.xml",
                                        (images for images, _ in _batches_of(calib, 16)))
        report["files"]["openvino_int8"] = xml.name
        if val is not None and logits is not None and "fp32" in report["accuracy"]:
            report["accuracy"]["openvino_int8"] = targets.runner_accuracy(targets.openvino_runner(xml),
                                                                          _batches_of(val, 64), logits)
        say(f"quantized {xml} with NNCF on the same {len(calib)} images")


def export_command(
    model: str | None = None,
    out: str = "exports",
    teacher: TeacherConfig | None = None,
    int8: bool = False,
    fp16: bool = False,
    tensorrt: bool = False,
    calib_data: DataConfig | None = None,
    calib_split: str = "train",
    calib_size: int = 256,
    val_split: str | None = "val",
    opset: int = 17,
    tolerance: float = 1e-3,
    prompts: list[str] | None = None,
    openvino: bool = False,
    executorch: bool = False,
) -> None:
    """Export a trained student and/or a teacher image tower to ONNX (parity-checked), INT8, FP16, TensorRT.

    Writes ``<out>/student/`` and/or ``<out>/teacher/`` (``model.onnx``, variants, ``export.json``).

    Args:
        model: student run directory or ``student.safetensors``; None with ``--teacher`` exports only the teacher.
        out: output folder.
        teacher: a teacher to export (its image tower), and the text encoder for ``--prompts``.
        int8: also write an INT8 (QDQ, per-channel) model calibrated on real images. A QAT stage of
            ``edgedistill optimize`` always writes its own INT8 model (QDQ from the fake-quantized student) instead.
        fp16: also write an FP16 model for GPU runtimes.
        tensorrt: also build TensorRT engines (needs ``tensorrt`` and a GPU; otherwise says why and skips); INT8 from
            the QDQ model, with sparse kernels allowed when the model is a 2:4 stage.
        calib_data: dataset for calibration, real-image parity and accuracy; default: the student's training data.
        calib_split: split whose images calibrate INT8.
        calib_size: number of calibration images.
        val_split: split on which FP32 and INT8 accuracy are reported; null to skip.
        opset: ONNX opset (>= 17).
        tolerance: largest allowed max-abs difference between ONNX Runtime and PyTorch.
        prompts: extra class prompts whose text embeddings are stored for ``predict --prompts`` (needs ``--teacher``).
        openvino: also check OpenVINO against PyTorch and, with ``--int8``, write NNCF's INT8 OpenVINO IR
            (``pip install 'edgedistill[openvino]'``).
        executorch: also write an XNNPACK ExecuTorch program ``model.pte``, parity-checked
            (``pip install 'edgedistill[executorch]'``).
    """
    import importlib.util

    for flag, package in (("openvino", "openvino"), ("executorch", "executorch")):
        if locals()[flag] and importlib.util.find_spec(package) is None:
            raise ConfigError(f"--{flag} needs {package}, which is not installed: pip install 'edgedistill[{flag}]'")
    if model is None and teacher is None:
        raise ConfigError("Nothing to export: give a student run directory (model=...) and/or --teacher.kind ...")
    if int8 and teacher is not None and calib_data is None:
        raise ConfigError("--int8 of a teacher needs real calibration images: give --calib_data (e.g. --calib_data.dataset cifar10)")
    kwargs = dict(int8=int8, fp16=fp16, tensorrt=tensorrt, calib_split=calib_split, calib_size=calib_size,
                  val_split=val_split, opset=opset, tolerance=tolerance, prompts=prompts, openvino=openvino,
                  executorch=executorch)
    student = qat = None
    if model is not None:  # checked before the teacher is loaded or anything is written
        student = load_student_deploy(model)
        if (student[1].extra.get("optimize") or {}).get("qat"):  # a QAT stage: its INT8 model is the QAT one
            qat = load_qat_deploy(model, student[0])
        data = calib_data
        if data is None and isinstance(run_configs(model).get("data"), dict):  # the data it was trained on
            data = from_dict(DataConfig, run_configs(model)["data"], f"{model}/config.yaml: data")
        if int8 and data is None and qat is None:
            raise ConfigError("--int8 needs real calibration images: give --calib_data (e.g. --calib_data.dataset cifar10)")
    tch = None
    if teacher is not None:
        deploy, meta, tch = load_teacher_deploy(teacher)
        emb = None
        if meta.class_names and tch.has_text:
            with torch.no_grad():
                emb = tch.encode_text(meta.class_names).float().cpu()
        export_model(deploy, meta, Path(out) / "teacher", data=calib_data, text_embeddings=emb, teacher=tch, **kwargs)
    if student is not None:
        deploy, meta = student
        if tch is None and prompts and meta.teacher:
            tch = create_teacher(dataclasses.replace(teacher_config(meta.teacher), runtime="torch"))
        export_model(deploy, meta, Path(out) / "student", data=data, text_embeddings=head_text_embeddings(deploy.head),
                     teacher=tch, qat=qat, **kwargs)
