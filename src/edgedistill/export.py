"""Export a student or a teacher image tower to ONNX, parity-checked; INT8, FP16 and TensorRT variants.

One export directory holds everything deployment needs, and no teacher::

    <out>/student/model.onnx                 FP32, dynamic batch, preprocessing in metadata_props
    <out>/student/model.int8.onnx            QDQ INT8 (ONNX Runtime static quantization)
    <out>/student/model.fp16.onnx            FP16 weights and activations, FP32 inputs/outputs
    <out>/student/model.fp16.engine          TensorRT engine (only where ``tensorrt`` imports)
    <out>/student/model.text_embeddings.npy  [C, D] text embeddings of class names / prompts
    <out>/student/export.json                what was exported, parity diffs, FP32 vs INT8 accuracy

Every ONNX file carries its own description under the metadata key ``edgedistill`` (a JSON
string: role, arch, outputs, preprocessing view, class names, logit scale), so a single
``.onnx`` file is enough for ``edgedistill predict``.

Embedding students are exported with their head folded in: outputs ``logits`` [B, C] and
``embedding`` [B, D]. The embedding output plus the stored text embeddings let
``predict --prompts`` re-purpose the model to new classes without retraining.
"""

from __future__ import annotations

import json
import math
import os
import sys
import warnings
from dataclasses import asdict, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from edgedistill import storage
from edgedistill.bench import ort_session
from edgedistill.config import DataConfig, TeacherConfig
from edgedistill.errors import ConfigError, EdgeDistillError
from edgedistill.students import load_student  # noqa: F401  (export.load_student is part of this module's API)

META_KEY = "edgedistill"
INPUT_NAME = "image"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_PIL_INTERPOLATION = {
    "nearest": Image.NEAREST,
    "bilinear": Image.BILINEAR,
    "bicubic": Image.BICUBIC,
    "lanczos": Image.LANCZOS,
}


class ParityError(EdgeDistillError):
    """ONNX Runtime's outputs differ from PyTorch's by more than the tolerance."""


class TensorRTUnavailableError(EdgeDistillError):
    """TensorRT was asked for on a machine where it cannot run."""


# --------------------------------------------------------------------------- preprocessing


def view_dict(view: Any) -> dict:
    """A preprocessing view (``ViewSpec`` dataclass, object or dict) as a plain JSON-able dict."""
    if is_dataclass(view):
        view = asdict(view)
    elif not isinstance(view, dict):
        view = {k: getattr(view, k) for k in ("image_size", "mean", "std", "interpolation") if hasattr(view, k)}
    size = view.get("image_size", 224)
    size = size[0] if isinstance(size, (list, tuple)) else size
    return {
        "image_size": int(size),
        "mean": [float(m) for m in view.get("mean", IMAGENET_MEAN)],
        "std": [float(s) for s in view.get("std", IMAGENET_STD)],
        "interpolation": str(view.get("interpolation", "bicubic")).lower().split(".")[-1],
        "crop_pct": float(view.get("crop_pct", 1.0)),
    }


def preprocess_image(image: Image.Image, view: dict) -> np.ndarray:
    """Resize, center-crop and normalise one image exactly like ``edgedistill.data.eval_transform``.

    Done with PIL and numpy so ONNX deployment needs neither torch nor the training code.
    ``crop_pct`` 1: squash to S x S; below 1: resize the short side to ``floor(S / crop_pct)``
    and center-crop S x S (torchvision's Resize(int) + CenterCrop arithmetic).

    Args:
        image: any PIL image; converted to RGB.
        view: ``{"image_size", "mean", "std", "interpolation", "crop_pct"}``.

    Returns:
        float32 array [3, S, S].
    """
    size = view["image_size"]
    interp = _PIL_INTERPOLATION.get(view.get("interpolation", "bicubic"), Image.BICUBIC)
    img = image.convert("RGB")
    crop_pct = view.get("crop_pct", 1.0)
    if crop_pct >= 1.0:
        img = img.resize((size, size), interp)
    else:
        short = math.floor(size / crop_pct)
        w, h = img.size
        scale_long = int(short * max(w, h) / min(w, h))
        img = img.resize((short, scale_long) if w <= h else (scale_long, short), interp)
        w, h = img.size
        top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
        img = img.crop((left, top, left + size, top + size))
    x = np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 255.0  # [3, S, S]
    mean = np.asarray(view["mean"], dtype=np.float32)[:, None, None]
    std = np.asarray(view["std"], dtype=np.float32)[:, None, None]
    return (x - mean) / std


def image_transform(view: dict):
    """``PIL -> Tensor [3, S, S]``: the data package's eval transform for ``view`` (what training used)."""
    from edgedistill.data.transforms import ViewSpec, eval_transform

    return eval_transform(ViewSpec(**view))


# --------------------------------------------------------------------------- loading models


class DeployModel(nn.Module):
    """An image tower, optionally with its head folded in, returning fixed named outputs.

    Args:
        backbone: maps images [B, 3, H, W] to a tensor [B, K] or (a teacher) a dict of tensors.
        head: optional module mapping the backbone's [B, D] embedding to logits [B, C].
        output_names: names of the ONNX outputs, in order. With a head: ``("logits", "embedding")``;
            with a dict-returning backbone: the dict keys to return.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module | None = None, output_names: Sequence[str] = ("logits",)):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.output_names = tuple(output_names)

    def forward(self, image: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        out = self.backbone(image)
        if isinstance(out, dict):  # a Teacher returns {"embedding": [B, D], "logits": [B, C]}
            outs = tuple(out[k] for k in self.output_names)
            return outs[0] if len(outs) == 1 else outs
        if self.head is not None:
            return self.head(out), out  # logits [B, C], embedding [B, D]
        return out


def student_view(manifest: dict) -> dict:
    """The student's eval preprocessing recorded in its manifest (key ``view`` or ``student_view``)."""
    view = manifest.get("view") or manifest.get("student_view")
    if view is None:
        view = {"image_size": manifest.get("image_size", 224)}
    return view_dict(view)


def load_head(run_dir: str | os.PathLike) -> nn.Module | None:
    """The head saved beside an embedding student (``head.safetensors`` + ``head.json``), or None."""
    run_dir = Path(run_dir)
    if not (run_dir / "head.safetensors").is_file():
        return None
    from edgedistill.heads import load_head as _load

    return _load(run_dir).eval()


def load_student_deploy(path: str | os.PathLike) -> tuple[DeployModel, dict]:
    """A student as a :class:`DeployModel` (head folded in for embedding students) and its ONNX metadata."""
    model, manifest = load_student(path)
    run_dir = Path(path) if Path(path).is_dir() else Path(path).parent
    target = manifest.get("target", "labels")
    head = load_head(run_dir) if target == "embedding" else None
    outputs = ("logits", "embedding") if head is not None else (("embedding",) if target == "embedding" else ("logits",))
    meta = {
        "role": "student",
        "arch": manifest["arch"],
        "target": target,
        "outputs": list(outputs),
        "view": student_view(manifest),
        "class_names": list(manifest.get("class_names") or []),
        "logit_scale": _head_logit_scale(head),
        "dynamic_hw": True,  # CNN students run at any resolution (224 for the tutorial, native for deployment)
        "source": str(Path(path).resolve()),
    }
    teacher = run_configs(path).get("teacher") or manifest.get("teacher")  # config.yaml also has `pretrained`
    if teacher and target != "labels":
        meta["teacher"] = teacher
    return DeployModel(model, head, outputs).eval(), meta


def run_configs(path: str | os.PathLike) -> dict:
    """The resolved configs (``data``, ``teacher``, ``train``) of a training run's ``config.yaml``, or {}."""
    import yaml

    run_dir = Path(path) if Path(path).is_dir() else Path(path).parent
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        return {}
    cfg = yaml.safe_load(cfg_path.read_text(encoding="utf-8"))
    return cfg if isinstance(cfg, dict) else {}


def _head_logit_scale(head: nn.Module | None) -> float | None:
    # TextHead stores the multiplier itself (about 100 for CLIP), not its log.
    scale = getattr(head, "logit_scale", None)
    return None if scale is None else float(scale)


def head_text_embeddings(head: nn.Module | None) -> torch.Tensor | None:
    """The class text embeddings [C, D] of a ``TextHead``, or None for other heads."""
    for name in ("text_embeddings", "text_emb"):
        emb = getattr(head, name, None)
        if isinstance(emb, torch.Tensor):
            return emb.detach().float().cpu()
    return None


def teacher_config(info: dict) -> TeacherConfig:
    """A TeacherConfig from a manifest's teacher record (extra keys such as fingerprint or view dropped)."""
    names = {f.name for f in fields(TeacherConfig)}
    return TeacherConfig(**{k: v for k, v in info.items() if k in names})


def load_teacher_deploy(cfg: TeacherConfig) -> tuple[DeployModel, dict, Any]:
    """A teacher's image tower as a :class:`DeployModel`, its ONNX metadata, and the Teacher itself."""
    from edgedistill.teachers import create_teacher

    teacher = create_teacher(replace(cfg, device="cpu")).eval()  # export traces on CPU
    outputs = ("embedding", "logits") if getattr(teacher, "num_classes", None) else ("embedding",)
    meta = {
        "role": "teacher",
        "arch": cfg.model,
        "target": "embedding",
        "outputs": list(outputs),
        "view": view_dict(teacher.view),
        "class_names": list(getattr(teacher, "class_names", None) or []),
        "logit_scale": float(getattr(teacher, "logit_scale", 1.0)),
        "dynamic_hw": False,  # ViT position embeddings fix the resolution
        "teacher": asdict(cfg),
        "source": f"{cfg.kind}:{cfg.model}:{cfg.pretrained}",
    }
    return DeployModel(teacher, None, outputs).eval(), meta, teacher


# --------------------------------------------------------------------------- ONNX


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    image_size: int,
    output_names: Sequence[str],
    metadata: dict,
    dynamic_hw: bool = False,
    opset: int = 17,
) -> Path:
    """Export ``model`` to ONNX with a dynamic batch axis and ``metadata`` in metadata_props.

    The legacy TorchScript exporter (``dynamo=False``) is used: it still works in torch 2.14 and
    handles both timm CNNs and open_clip ViTs in about a second, where the dynamo exporter needs
    per-model dynamic-shape specs.

    Args:
        model: module mapping ``image`` [B, 3, S, S] to ``output_names``.
        path: the ``.onnx`` file to write (atomically).
        image_size: S of the example input used for tracing.
        output_names: names of the model's outputs in order.
        metadata: JSON-able description stored under the metadata key ``edgedistill``.
        dynamic_hw: also make height and width dynamic (CNNs).
        opset: ONNX opset (>= 17: LayerNormalization is native).

    Returns:
        The written path.
    """
    import onnx

    if opset < 17:
        raise ConfigError(f"opset={opset} is too old; use opset >= 17")
    path = Path(path)
    axes = {0: "batch", 2: "height", 3: "width"} if dynamic_hw else {0: "batch"}
    dynamic_axes = {INPUT_NAME: axes, **{name: {0: "batch"} for name in output_names}}
    example = torch.randn(2, 3, image_size, image_size)
    model = model.eval()
    # nn.MultiheadAttention's inference fast path (eval + frozen weights) traces to
    # aten::_native_multi_head_attention, which has no ONNX symbolic: trace the plain path.
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with storage.atomic_path(path) as tmp, torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the legacy exporter's deprecation and tracer warnings
            torch.onnx.export(
                model, (example,), str(tmp), dynamo=False, opset_version=opset, input_names=[INPUT_NAME],
                output_names=list(output_names), dynamic_axes=dynamic_axes, do_constant_folding=True,
            )
            proto = onnx.load(str(tmp))
            set_metadata(proto, {**metadata, "precision": "fp32", "opset": opset})
            onnx.save(proto, str(tmp))
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return path


def set_metadata(proto, meta: dict) -> None:
    """Store ``meta`` as JSON under metadata_props[``edgedistill``] of an ``onnx.ModelProto``."""
    for prop in list(proto.metadata_props):
        if prop.key == META_KEY:
            proto.metadata_props.remove(prop)
    entry = proto.metadata_props.add()
    entry.key, entry.value = META_KEY, json.dumps(meta)


def read_metadata(onnx_path: str | os.PathLike) -> dict:
    """The ``edgedistill`` metadata of an exported ONNX file (without loading its weights into ORT)."""
    import onnxruntime as ort

    path = Path(onnx_path)
    if not path.is_file():
        raise EdgeDistillError(f"ONNX file {str(path)!r} does not exist")
    try:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - ORT raises its own exception types for bad files
        raise EdgeDistillError(f"{str(path)!r} is not a valid ONNX model: {str(e).splitlines()[0][:200]}") from e
    raw = sess.get_modelmeta().custom_metadata_map.get(META_KEY)
    if raw is None:
        raise EdgeDistillError(f"{str(path)!r} has no '{META_KEY}' metadata; export it with 'edgedistill export'")
    return json.loads(raw)


def check_parity(
    model: nn.Module, onnx_path: str | os.PathLike, inputs: Sequence[torch.Tensor], *, tolerance: float = 1e-3, what: str = "random"
) -> float:
    """Maximum absolute difference between ONNX Runtime and PyTorch over all outputs and inputs.

    Args:
        model: the PyTorch module that was exported.
        onnx_path: the exported file.
        inputs: batches [B, 3, S, S]; use ones not seen at export (another batch size, fresh values).
        tolerance: largest allowed difference.
        what: name of the inputs for the error message ("random", "real images").

    Returns:
        The maximum absolute difference.

    Raises:
        ParityError: if the difference exceeds ``tolerance``.
    """
    sess = ort_session(onnx_path)
    worst = 0.0
    with torch.no_grad():
        for x in inputs:
            ref = model(x)
            ref = ref if isinstance(ref, tuple) else (ref,)
            got = sess.run(None, {INPUT_NAME: x.numpy()})
            for r, g in zip(ref, got):
                worst = max(worst, float(np.abs(r.float().numpy() - g.astype(np.float32)).max()))
    if not worst <= tolerance:  # also catches NaN
        raise ParityError(
            f"ONNX export {str(onnx_path)!r} does not match PyTorch on {what} inputs: max abs diff {worst:.3g} "
            f"> tolerance {tolerance:g}"
        )
    return worst


# --------------------------------------------------------------------------- INT8 / FP16


def _onnx_input_name(onnx_path: str | os.PathLike) -> str:
    return ort_session(onnx_path).get_inputs()[0].name


class ArrayCalibrationReader:
    """Feeds calibration batches [B, 3, S, S] (float32) to ONNX Runtime's static quantizer."""

    def __init__(self, batches: Iterable[np.ndarray], input_name: str = INPUT_NAME):
        self._batches = iter(batches)
        self._input_name = input_name

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {self._input_name: np.ascontiguousarray(batch, dtype=np.float32)}

    def rewind(self) -> None:  # the MinMax calibrator reads the data once
        pass


def quantize_int8(
    onnx_path: str | os.PathLike, out_path: str | os.PathLike, calib_batches: Iterable[np.ndarray], *, per_channel: bool = True
) -> Path:
    """INT8 post-training static quantization (QDQ, per-channel weights) with ONNX Runtime.

    Runs ``quant_pre_process`` (shape inference + graph optimisation) first, as ONNX Runtime
    recommends, then ``quantize_static`` with MinMax calibration over ``calib_batches``.
    Activations are uint8 and weights int8 (U8S8), the fast path on x86 with AVX-512 VNNI.

    Args:
        onnx_path: the FP32 model.
        out_path: the INT8 model to write.
        calib_batches: preprocessed real images, float32 [B, 3, S, S]; a few hundred in all.
        per_channel: per-output-channel weight scales (better accuracy for convolutions).

    Returns:
        The written path.
    """
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out_path = Path(out_path)
    meta = read_metadata(onnx_path)
    reader = type("Reader", (ArrayCalibrationReader, CalibrationDataReader), {})(calib_batches, _onnx_input_name(onnx_path))
    pre = out_path.with_name(f".{out_path.stem}.pre.onnx")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # auto_merge: symbolic shape inference cannot otherwise prove that the dynamic
            # height/width of a CNN stay consistent through strided convolutions.
            try:
                quant_pre_process(str(onnx_path), str(pre), auto_merge=True)
            except Exception as e:  # noqa: BLE001 - ORT's symbolic inference asserts on some traced attention reshapes
                # ONNX's own shape inference is enough for quantization; only the symbolic pass is skipped.
                _say(f"symbolic shape inference failed ({type(e).__name__}); quantizing with ONNX shape inference only")
                quant_pre_process(str(onnx_path), str(pre), skip_symbolic_shape=True)
        with storage.atomic_path(out_path) as tmp:
            quantize_static(
                str(pre), str(tmp), reader, quant_format=QuantFormat.QDQ, per_channel=per_channel,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            )
            proto = onnx.load(str(tmp))
            set_metadata(proto, {**meta, "precision": "int8"})
            onnx.save(proto, str(tmp))
    finally:
        pre.unlink(missing_ok=True)
    return out_path


def convert_fp16(onnx_path: str | os.PathLike, out_path: str | os.PathLike) -> Path:
    """FP16 copy of an ONNX model for GPU runtimes (inputs and outputs stay float32).

    Uses ``onnxruntime.transformers.float16`` (the same converter as onnxconverter-common).
    """
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    out_path = Path(out_path)
    meta = read_metadata(onnx_path)
    proto = convert_float_to_float16(onnx.load(str(onnx_path)), keep_io_types=True)
    set_metadata(proto, {**meta, "precision": "fp16"})
    with storage.atomic_path(out_path) as tmp:
        onnx.save(proto, str(tmp))
    return out_path


# --------------------------------------------------------------------------- TensorRT


def tensorrt_status() -> tuple[bool, str]:
    """Whether TensorRT can build engines here, and why not if it cannot."""
    try:
        import tensorrt  # noqa: F401
    except ImportError as e:
        return False, f"the 'tensorrt' Python package is not installed ({e}); it needs an NVIDIA GPU and pip install tensorrt"
    if not torch.cuda.is_available():
        return False, "tensorrt is installed but no CUDA GPU is visible (torch.cuda.is_available() is False)"
    return True, f"TensorRT {tensorrt.__version__} on {torch.cuda.get_device_name(0)}"


def build_tensorrt_engine(
    onnx_path: str | os.PathLike,
    engine_path: str | os.PathLike,
    *,
    image_size: int,
    fp16: bool = True,
    int8: bool = False,
    max_batch: int = 32,
    opt_batch: int = 8,
    workspace_gb: float = 2.0,
) -> Path:
    """Build a serialized TensorRT engine from an ONNX model (dynamic batch 1..``max_batch``).

    INT8 uses explicit quantization: pass the QDQ model from :func:`quantize_int8` and
    ``int8=True``; TensorRT reads the scales from its Q/DQ nodes (no separate calibrator).

    Raises:
        TensorRTUnavailableError: where TensorRT or a GPU is missing (message says which).
    """
    ok, why = tensorrt_status()
    if not ok:
        raise TensorRTUnavailableError(f"TensorRT is unavailable: {why}")
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0 if int(trt.__version__.split(".")[0]) >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EdgeDistillError(f"TensorRT cannot parse {str(onnx_path)!r}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    if int8:
        config.set_flag(trt.BuilderFlag.INT8)
    profile = builder.create_optimization_profile()
    shape = lambda b: (b, 3, image_size, image_size)  # noqa: E731
    profile.set_shape(network.get_input(0).name, shape(1), shape(opt_batch), shape(max_batch))
    config.add_optimization_profile(profile)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise EdgeDistillError(f"TensorRT failed to build an engine from {str(onnx_path)!r} (see its log above)")
    storage.write_bytes(engine_path, bytes(engine))
    return Path(engine_path)


# --------------------------------------------------------------------------- evaluation


def _batches_of(dataset, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(images [B, 3, S, S], labels [B]) batches of a dataset of dicts or (image, label) pairs; None items skipped."""
    images, labels = [], []
    for i in range(len(dataset)):
        item = dataset[i]
        if item is None:  # an unreadable image (data contract): skipped, counted by the data layer
            continue
        image, label = (item["image"], item["label"]) if isinstance(item, dict) else (item[0], item[1])
        images.append(np.asarray(image, dtype=np.float32))
        labels.append(int(label))
        if len(images) == batch_size:
            yield np.stack(images), np.asarray(labels)
            images, labels = [], []
    if images:
        yield np.stack(images), np.asarray(labels)


def onnx_accuracy(onnx_path: str | os.PathLike, dataset, batch_size: int = 64) -> float:
    """Top-1 accuracy (0..1) of an exported model's ``logits`` output on a labeled dataset.

    Args:
        onnx_path: an exported model with a ``logits`` output.
        dataset: items ``{"image": Tensor [3, S, S], "label": int}`` (or pairs) preprocessed with the
            model's view; label -1 (hidden) and None (unreadable) items are skipped.
        batch_size: images per ONNX Runtime call.
    """
    sess = ort_session(onnx_path)
    names = [o.name for o in sess.get_outputs()]
    if "logits" not in names:
        raise EdgeDistillError(f"{str(onnx_path)!r} has no 'logits' output (outputs: {', '.join(names)}); accuracy needs one")
    correct = total = 0
    for images, labels in _batches_of(dataset, batch_size):
        keep = labels >= 0
        if not keep.any():
            continue
        logits = sess.run(["logits"], {sess.get_inputs()[0].name: images[keep]})[0]
        correct += int((logits.argmax(1) == labels[keep]).sum())
        total += int(keep.sum())
    if total == 0:
        raise EdgeDistillError("onnx_accuracy got a dataset without labeled images")
    return correct / total


def real_images(cfg: DataConfig, split: str, view: dict, limit: int | None = None, seed: int = 0):
    """A (random, fixed-seed) subset of a split, preprocessed with ``view``, as a torch Dataset."""
    from edgedistill.data import build_splits

    dataset = build_splits(cfg).dataset(split, image_transform(view))
    if limit is not None and len(dataset) > limit:
        idx = np.random.default_rng(seed).choice(len(dataset), size=limit, replace=False)
        dataset = torch.utils.data.Subset(dataset, sorted(idx.tolist()))
    return dataset


# --------------------------------------------------------------------------- the command


def _text_store(
    meta: dict, class_emb: torch.Tensor | None, prompts: list[str] | None, teacher: Any, out_dir: Path, stem: str
) -> None:
    """Save class / prompt text embeddings [C, D] beside the model and record them in ``meta``."""
    names = list(meta.get("class_names") or []) if class_emb is not None else []
    emb = [class_emb] if class_emb is not None else []
    extra = [p for p in (prompts or []) if p not in names]
    if extra:
        if teacher is None or not hasattr(teacher, "encode_text"):
            raise ConfigError(
                f"--prompts {extra} need the teacher's text encoder; give --teacher (an open_clip teacher) to embed them"
            )
        with torch.no_grad():
            emb.append(teacher.encode_text(extra).float().cpu())
        names += extra
    if not emb:
        return
    file = f"{stem}.text_embeddings.npy"
    storage.save_npy(out_dir / file, torch.cat(emb).numpy().astype(np.float32))
    meta["text"] = {"file": file, "names": names}
    meta.setdefault("logit_scale", None)
    if meta["logit_scale"] is None:
        meta["logit_scale"] = float(getattr(teacher, "logit_scale", 100.0))


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def export_model(
    model: DeployModel,
    meta: dict,
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
) -> dict:
    """Export one model with all requested variants into ``out_dir``; returns (and writes) ``export.json``.

    Args:
        model: the module to export (outputs named in ``meta["outputs"]``).
        meta: its metadata (role, arch, outputs, view, class_names, ...), stored in every ONNX file.
        out_dir: folder for ``model*.onnx``, the engine, text embeddings and ``export.json``.
        data: dataset for real-image parity, INT8 calibration and accuracy; None: random inputs only.
        int8, fp16, tensorrt: which variants to build besides FP32.
        calib_split, calib_size: images calibrating INT8.
        val_split: split on which FP32 and INT8 accuracy are reported (None: skip).
        opset, tolerance: ONNX opset; the largest allowed ONNX-vs-PyTorch difference.
        text_embeddings: class text embeddings [C, D] to store for re-purposing with prompts.
        prompts, teacher: extra prompts, embedded with ``teacher.encode_text``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    view = meta["view"]
    size = view["image_size"]
    _text_store(meta, text_embeddings, prompts, teacher, out_dir, "model")
    report: dict[str, Any] = {"meta": meta, "files": {}, "parity": {}, "accuracy": {}}

    fp32 = export_onnx(model, out_dir / "model.onnx", image_size=size, output_names=meta["outputs"], metadata=meta,
                       dynamic_hw=meta.get("dynamic_hw", False), opset=opset)
    report["files"]["fp32"] = fp32.name
    # Parity on inputs the exporter never saw: another batch size, fresh values.
    gen = torch.Generator().manual_seed(1234)
    report["parity"]["random"] = check_parity(model, fp32, [torch.randn(3, 3, size, size, generator=gen)], tolerance=tolerance)
    _say(f"exported {fp32} (parity on random inputs: max abs diff {report['parity']['random']:.2e})")

    val = None
    if data is not None:
        if val_split:
            val = real_images(data, val_split, view, limit=None)
            real = torch.from_numpy(next(_batches_of(val, 8))[0])  # [8, 3, S, S]
            report["parity"]["real"] = check_parity(model, fp32, [real], tolerance=tolerance, what="real images")
            _say(f"parity on {len(real)} real {val_split} images: max abs diff {report['parity']['real']:.2e}")
            if "logits" in meta["outputs"] and _has_labels(val):
                report["accuracy"]["fp32"] = onnx_accuracy(fp32, val)
    if int8:
        if data is None:
            raise ConfigError("--int8 needs real calibration images: give --calib_data (e.g. --calib_data.dataset cifar10)")
        calib = real_images(data, calib_split, view, limit=calib_size)
        batches = (images for images, _ in _batches_of(calib, 16))
        q = quantize_int8(fp32, out_dir / "model.int8.onnx", batches)
        report["files"]["int8"] = q.name
        report["int8_calibration"] = {"split": calib_split, "images": len(calib)}
        if val is not None and "fp32" in report["accuracy"]:
            report["accuracy"]["int8"] = onnx_accuracy(q, val)
        _say(f"quantized {q} on {len(calib)} {calib_split} images")
    if fp16:
        report["files"]["fp16"] = convert_fp16(fp32, out_dir / "model.fp16.onnx").name
    if report["accuracy"]:
        _say("accuracy on " + f"{val_split}: " + ", ".join(f"{k} {v:.4f}" for k, v in report["accuracy"].items()))
    ok, why = tensorrt_status()
    report["tensorrt"] = {"available": ok, "reason": why}
    if tensorrt:
        if not ok:
            _say(f"TensorRT unavailable, engine skipped: {why}")
        else:
            for prec, src in (("fp16", fp32), ("int8", out_dir / "model.int8.onnx")):
                if prec == "int8" and not int8:
                    continue
                eng = build_tensorrt_engine(src, out_dir / f"model.{prec}.engine", image_size=size, fp16=True, int8=prec == "int8")
                report["files"][f"tensorrt_{prec}"] = eng.name
                _say(f"built TensorRT engine {eng}")
    storage.write_json(out_dir / "export.json", report)
    return report


def _has_labels(dataset) -> bool:
    labels = getattr(dataset, "labels", None)
    return labels is None or bool((np.asarray(labels) >= 0).any())


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
) -> None:
    """Export a trained student and/or a teacher image tower to ONNX (parity-checked), INT8, FP16, TensorRT.

    Writes ``<out>/student/`` and/or ``<out>/teacher/`` (``model.onnx``, variants, ``export.json``).

    Args:
        model: student run directory or ``student.safetensors``; None with ``--teacher`` exports only the teacher.
        out: output folder.
        teacher: a teacher to export (its image tower), and the text encoder for ``--prompts``.
        int8: also write an INT8 (QDQ, per-channel) model calibrated on real images.
        fp16: also write an FP16 model for GPU runtimes.
        tensorrt: also build TensorRT engines (needs ``tensorrt`` and a GPU; otherwise says why and skips).
        calib_data: dataset for calibration, real-image parity and accuracy; default: the student's training data.
        calib_split: split whose images calibrate INT8.
        calib_size: number of calibration images.
        val_split: split on which FP32 and INT8 accuracy are reported; null to skip.
        opset: ONNX opset (>= 17).
        tolerance: largest allowed max-abs difference between ONNX Runtime and PyTorch.
        prompts: extra class prompts whose text embeddings are stored for ``predict --prompts`` (needs ``--teacher``).
    """
    if model is None and teacher is None:
        raise ConfigError("Nothing to export: give a student run directory (model=...) and/or --teacher.kind ...")
    if int8 and teacher is not None and calib_data is None:
        raise ConfigError("--int8 of a teacher needs real calibration images: give --calib_data (e.g. --calib_data.dataset cifar10)")
    tch = None
    if teacher is not None:
        deploy, meta, tch = load_teacher_deploy(teacher)
        emb = None
        if meta["class_names"] and hasattr(tch, "encode_text"):
            with torch.no_grad():
                emb = tch.encode_text(meta["class_names"]).float().cpu()
        export_model(deploy, meta, Path(out) / "teacher", data=calib_data, int8=int8, fp16=fp16, tensorrt=tensorrt,
                     calib_split=calib_split, calib_size=calib_size, val_split=val_split, opset=opset,
                     tolerance=tolerance, text_embeddings=emb, prompts=prompts, teacher=tch)
    if model is not None:
        deploy, meta = load_student_deploy(model)
        data = calib_data
        if data is None and isinstance(run_configs(model).get("data"), dict):  # the data it was trained on
            names = {f.name for f in fields(DataConfig)}
            data = DataConfig(**{k: v for k, v in run_configs(model)["data"].items() if k in names})
        if int8 and data is None:
            raise ConfigError("--int8 needs real calibration images: give --calib_data (e.g. --calib_data.dataset cifar10)")
        if tch is None and prompts and meta.get("teacher"):
            from edgedistill.teachers import create_teacher

            tch = create_teacher(teacher_config(meta["teacher"]))
        emb = head_text_embeddings(deploy.head)
        export_model(deploy, meta, Path(out) / "student", data=data, int8=int8, fp16=fp16, tensorrt=tensorrt,
                     calib_split=calib_split, calib_size=calib_size, val_split=val_split, opset=opset,
                     tolerance=tolerance, text_embeddings=emb, prompts=prompts, teacher=tch)
