"""The deploy runtime: run an exported model with ONNX Runtime, numpy and Pillow only (no torch, no timm).

An exported ``.onnx`` file carries its own description under the metadata key
``edgedistill`` (:class:`DeployMeta`: role, architecture, outputs, preprocessing view, class
names, logit scale, stored text embeddings), so one file is enough to classify images:

    model = OnnxModel.open("exports/student/model.onnx")
    probs = model.classifier().score(np.stack([preprocess(img, model.view) for img in images]))

Preprocessing is ``data.views.preprocess``, the same function training and export use.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from edgedistill.config import from_dict
from edgedistill.data.views import ViewSpec, preprocess
from edgedistill.errors import ConfigError, EdgeDistillError

META_KEY = "edgedistill"
INPUT_NAME = "image"
DEPLOY_FORMAT = 1

__all__ = ["DeployMeta", "INPUT_NAME", "META_KEY", "OnnxModel", "Classifier", "ort_session", "preprocess",
           "read_metadata"]


@dataclass
class DeployMeta:
    """What an exported model is and how to feed it; stored as JSON in the ONNX file's metadata.

    Attributes:
        role: ``student`` or ``teacher``.
        arch: Architecture name shown in tables.
        outputs: Output names in order (``logits``, ``embedding``).
        view: The input view (``ViewSpec.to_dict()``).
        target: What a student learned (labels, logits, embedding); ``embedding`` for teacher towers.
        class_names: Names of the ``logits`` columns.
        logit_scale: Multiplier of cosine similarities when classifying by text embeddings.
        dynamic_hw: Height and width are dynamic (CNNs).
        teacher: The teacher's config (to embed new prompts), or None.
        source: What was exported (a run directory or a teacher description).
        text: ``{"file": npy beside the model, "names": [...]}``: stored class/prompt text embeddings.
        precision: fp32, int8, fp16, qat-int8, ...
        opset: ONNX opset.
        extra: Anything else an exporter records (sparsity, recipe).
        format: Format version of this record.
    """

    role: str
    arch: str
    outputs: list[str]
    view: dict[str, Any]
    target: str = "labels"
    class_names: list[str] = field(default_factory=list)
    logit_scale: float | None = None
    dynamic_hw: bool = False
    teacher: dict[str, Any] | None = None
    source: str = ""
    text: dict[str, Any] | None = None
    precision: str = "fp32"
    opset: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    format: int = DEPLOY_FORMAT

    def __post_init__(self) -> None:
        if self.format != DEPLOY_FORMAT:
            raise EdgeDistillError(f"exported model format {self.format} is not {DEPLOY_FORMAT}; export it again")
        ViewSpec(**self.view)  # validates

    @property
    def view_spec(self) -> ViewSpec:
        return ViewSpec(**self.view)

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def ort_session(path: str | os.PathLike, providers: Sequence | None = None, threads: int | None = None,
                settings: dict | None = None):
    """An ONNX Runtime session; the one place sessions are made (export checks, predict, bench children).

    Args:
        path: the ONNX model.
        providers: execution providers; default CPU.
        threads: intra-op threads; None lets ONNX Runtime use every core.
        settings: extra SessionOptions: ``graph_optimization_level`` (default ``ORT_ENABLE_ALL``),
            ``config_entries`` (session config entries), or any SessionOptions attribute.
    """
    import onnxruntime as ort

    settings = dict(settings or {})
    opts = ort.SessionOptions()
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, settings.pop("graph_optimization_level", "ORT_ENABLE_ALL"))
    if threads:
        opts.intra_op_num_threads = threads
    for k, v in settings.pop("config_entries", {}).items():
        opts.add_session_config_entry(k, str(v))
    for key, value in settings.items():
        setattr(opts, key, value)
    opts.log_severity_level = 3  # FP16/INT8 models log harmless per-node warnings otherwise
    return ort.InferenceSession(str(path), opts, providers=list(providers or ["CPUExecutionProvider"]))


def read_metadata(onnx_path: str | os.PathLike) -> DeployMeta:
    """The ``edgedistill`` metadata of an exported ONNX file (without building an optimized session).

    Raises:
        EdgeDistillError: the file is missing, not a valid ONNX model, or not exported by edgedistill.
    """
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
    try:
        return from_dict(DeployMeta, json.loads(raw), f"{path} metadata")
    except (ValueError, ConfigError, EdgeDistillError) as e:
        raise EdgeDistillError(f"{str(path)!r} has damaged '{META_KEY}' metadata ({e}); export it again") from None


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@dataclass
class Classifier:
    """A loaded model ready to score preprocessed batches.

    Attributes:
        view: Its input view.
        labels: Names of the C scores.
        score: Maps images ``[B, 3, S, S]`` float32 to probabilities ``[B, C]``.
        source: What was loaded, for messages.
    """

    view: ViewSpec
    labels: list[str]
    score: Callable[[np.ndarray], np.ndarray]
    source: str


def make_classifier(run: Callable[[np.ndarray], dict[str, np.ndarray]], meta: DeployMeta, stored: dict[str, np.ndarray],
                    prompts: list[str] | None, source: str,
                    embed_texts: Callable[[list[str]], np.ndarray] | None = None) -> Classifier:
    """Probabilities over the model's classes, or, with ``prompts``, over prompts compared by cosine to its embedding.

    Args:
        run: images ``[B, 3, S, S]`` -> named outputs.
        meta: the model's description.
        stored: text embeddings ``[D]`` by prompt, stored at export.
        prompts: new class prompts (embedding models only); None: the model's own classes.
        source: what was loaded, for messages.
        embed_texts: embeds prompts that are not stored (the teacher's text tower); None: only stored ones.
    """
    if prompts:
        if "embedding" not in meta.outputs:
            raise ConfigError(f"--prompts needs a model with an 'embedding' output; {source!r} has only {meta.outputs}")
        missing = [p for p in prompts if p not in stored]
        if missing:
            if embed_texts is None:
                known = ", ".join(stored) or "none"
                raise EdgeDistillError(
                    f"No text embeddings for prompts {missing} (stored: {known}) and no teacher recorded to embed them; "
                    "re-export with --teacher ... --prompts ...")
            stored = {**stored, **dict(zip(missing, embed_texts(missing)))}
        text = l2_normalize(np.stack([stored[p] for p in prompts]).astype(np.float32))  # [P, D]
        scale = float(meta.logit_scale or 100.0)
        return Classifier(meta.view_spec, list(prompts), lambda x: softmax(scale * l2_normalize(run(x)["embedding"]) @ text.T),
                          source)
    if "logits" not in meta.outputs:
        raise ConfigError(f"{source!r} outputs only {meta.outputs}: give --prompts (class names) to classify with it")
    return Classifier(meta.view_spec, list(meta.class_names), lambda x: softmax(run(x)["logits"].astype(np.float32)),
                      source)


class OnnxModel:
    """An exported model: its ONNX Runtime session, its metadata and its stored text embeddings.

    Args:
        path: the ``.onnx`` file (or an export directory holding ``model.onnx``).
        providers: ONNX Runtime execution providers; default CPU.
    """

    def __init__(self, path: str | os.PathLike, providers: Sequence | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            path = path / "model.onnx"
        self.path = path
        self.meta = read_metadata(path)  # one clear line for a file that is not an exported model
        self.session = ort_session(path, providers)
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.text: dict[str, np.ndarray] = {}
        if self.meta.text:
            emb = np.load(path.parent / self.meta.text["file"], allow_pickle=False)
            self.text = dict(zip(self.meta.text["names"], emb))

    @property
    def view(self) -> ViewSpec:
        return self.meta.view_spec

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Named outputs for preprocessed images ``[B, 3, S, S]`` float32."""
        return dict(zip(self.output_names, self.session.run(None, {INPUT_NAME: np.ascontiguousarray(images, np.float32)})))

    def classifier(self, prompts: list[str] | None = None,
                   embed_texts: Callable[[list[str]], np.ndarray] | None = None) -> Classifier:
        """A :class:`Classifier` over its classes, or over ``prompts`` (stored ones, or new ones embedded by
        ``embed_texts``: ``predict.load_classifier`` passes the recorded teacher's text tower)."""
        return make_classifier(self.run, self.meta, self.text, prompts, str(self.path), embed_texts)
