"""The schema of ``distill``'s ``results.json``: versioned dataclasses, written by the run and read by the report.

``DistillResults.write`` writes the file (``schema_version`` first); ``DistillResults.load`` reads
it back, refusing another schema version or a field the schema does not have, so the report
reads attributes, never string keys. Bump ``RESULTS_SCHEMA`` when a field changes meaning or
goes away; a new optional field (with a default) keeps the version.

Torch-free: a report can be rewritten from ``results.json`` anywhere.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, Union

from edgedistill import storage
from edgedistill.errors import ConfigError

RESULTS_SCHEMA = 1
"""Version of the ``results.json`` schema written and read by this edgedistill."""


@dataclass
class Machine:
    """Where the numbers were measured (``deploy.bench.machine_info``)."""

    cpu: str | None = None
    cores: int | None = None
    python: str | None = None
    onnxruntime: str | None = None
    torch: str | None = None
    gpu: str | None = None

    @classmethod
    def from_info(cls, info: dict[str, Any]) -> Machine:
        """The known fields of a ``machine_info()`` mapping."""
        return cls(**{f.name: info.get(f.name) for f in dataclasses.fields(cls)})

    def describe(self) -> str:
        """``CPU, N cores[, GPU]`` as the report shows it."""
        return f"{self.cpu or '?'}, {self.cores} cores" + (f", {self.gpu}" if self.gpu else "")


@dataclass
class DataSummary:
    """The images of the run."""

    dataset: str
    counts: dict[str, int]
    """Images per split (train, val, test, unlabeled)."""
    train_labels: bool
    """Whether the training images' labels were used."""
    held_out: str | None
    """The held-out split the final numbers come from (``test``), or None (validation only)."""


@dataclass
class HeadScore:
    """One teacher head's accuracy."""

    val_acc: float | None
    test_acc: float | None
    title: str = ""
    """How reports name it (the head class's ``title``)."""
    needs_labels: bool = False
    """Fitted on the labels (the linear probe), so the reference the students are measured against."""

    @property
    def final(self) -> float | None:
        """Held-out accuracy when read, else validation."""
        return self.test_acc if self.test_acc is not None else self.val_acc


@dataclass
class TeacherSummary:
    """The teacher and its heads."""

    describe: str
    image_size: int | None
    runtime: str
    params: int | None
    heads: dict[str, HeadScore]

    def reference(self) -> tuple[str, HeadScore] | None:
        """The head the students are measured against: the one fitted on labels, else the first (zero-shot) one."""
        fitted = [(k, h) for k, h in self.heads.items() if h.needs_labels]
        return (fitted or list(self.heads.items()) or [None])[0]


@dataclass
class StudentResult:
    """One trained student."""

    name: str
    arch: str
    target: str
    head: str | None
    loss: str
    """The training loss (``registry.LOSSES``)."""
    kwargs: dict[str, Any]
    n_unlabeled: int
    val_acc: float | None
    test_acc: float | None
    params: int | None
    train_s: float | None
    epochs: int | None
    images_per_s: float | None
    n_val: int | None
    run_dir: str

    @property
    def final(self) -> float | None:
        """Held-out accuracy when read, else validation."""
        return self.test_acc if self.test_acc is not None else self.val_acc


@dataclass
class Evaluation:
    """The deployed student on the held-out images."""

    acc: float
    n: int
    per_class: dict[str, float | None]


@dataclass
class ExportSummary:
    """The deployed student's export."""

    files: dict[str, str]
    """Precision -> ONNX file name."""
    parity: dict[str, float]
    """Max abs difference ONNX Runtime vs PyTorch, on random and real inputs."""
    accuracy: dict[str, float | None]
    """Precision -> accuracy of the exported model on ``split``."""
    split: str
    dir: str

    @classmethod
    def from_export(cls, folder: str | Path, split: str | None) -> ExportSummary:
        """Read ``<folder>/export.json`` (written by ``deploy.export``); ``split``: where its accuracy was measured."""
        e = storage.read_json(Path(folder) / "export.json")
        return cls(e["files"], e["parity"], e.get("accuracy") or {}, split or "", str(folder))


@dataclass
class DeployRow:
    """One measurement of the deployment race."""

    model: str
    arch: str
    runtime: str
    precision: str
    batch: int
    resolution: int
    throughput_ips: float
    latency_ms_p50: float
    latency_ms_p95: float
    peak_mem_mb: float
    file_mb: float

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> DeployRow:
        """The schema's fields of a ``deploy.bench`` row."""
        return cls(**{f.name: row[f.name] for f in dataclasses.fields(cls)})


@dataclass
class Invocation:
    """One invocation of the same run folder (a rerun reuses the finished steps of earlier ones)."""

    finished: str
    elapsed_s: float


@dataclass
class RetrievalSummary:
    """A zero-label run's retrieval."""

    classes: list[str]
    counts: dict[str, int]
    kept: int
    search: str
    score: str
    head: dict[str, Any]
    pool_images: int
    dir: str
    manifest: str
    contact_sheet: str


@dataclass
class DistillResults:
    """Everything a ``distill`` run measured: ``results.json``."""

    name: str
    command: str
    machine: Machine
    finished: str
    notes: list[str]
    gpu_budget: bool
    data: DataSummary
    teacher: TeacherSummary
    students: list[StudentResult]
    best_student: str
    evaluation: Evaluation | None
    export: ExportSummary
    deploy: list[DeployRow]
    elapsed_s: float
    step_seconds: dict[str, float]
    invocations: list[Invocation] = field(default_factory=list)
    retrieval: RetrievalSummary | None = None
    race: dict[str, Any] | None = None
    plan: dict[str, Any] | None = None
    """What the planner chose and measured (``pipelines.planner.RecipePlan``), the candidates table and each student's
    budget; None when the user named the student, size and schedule."""
    """The race's verdict (``deploy.bench_report.race_summary``): the fastest runtime for the student, its speed-up
    over the teacher on that runtime, INT8 vs FP32 per runtime."""
    schema_version: int = RESULTS_SCHEMA

    @property
    def best(self) -> StudentResult:
        """The deployed student."""
        return next(s for s in self.students if s.name == self.best_student)

    def to_dict(self) -> dict[str, Any]:
        """Plain data, ``schema_version`` first."""
        d = dataclasses.asdict(self)
        return {"schema_version": d.pop("schema_version"), **d}

    def write(self, path: str | Path) -> Path:
        """Write ``results.json`` atomically."""
        storage.write_json(Path(path), self.to_dict())
        return Path(path)

    @classmethod
    def from_dict(cls, values: Any, where: str = "results") -> DistillResults:
        """Build from plain data of this schema version.

        Raises:
            ConfigError: another schema version, a missing or unknown field, or a value of the wrong shape.
        """
        version = values.get("schema_version") if isinstance(values, dict) else None
        if version != RESULTS_SCHEMA:
            raise ConfigError(f"{where} has results schema version {version!r}; this edgedistill reads version "
                              f"{RESULTS_SCHEMA} (rerun the command that wrote it)")
        return _build(cls, values, where)

    @classmethod
    def load(cls, path: str | Path) -> DistillResults:
        """Read ``results.json`` (see :meth:`from_dict`)."""
        return cls.from_dict(storage.read_json(Path(path)), str(path))


@dataclass
class TrainResult:
    """One trained student (``edgedistill.train``): its run directory and what its ``metrics.json`` records."""

    run_dir: str
    finished: bool
    best_val_acc: float | None
    """Validation accuracy of the kept student (None without a val split)."""
    best_epoch: int | None
    test_acc: float | None
    """Held-out accuracy, read once at the end (``train.eval_test``), else None."""
    epochs: int | None
    elapsed_s: float | None
    images_per_s: float | None
    params: int | None

    @classmethod
    def from_run(cls, run_dir: str | Path) -> TrainResult:
        """Read ``<run_dir>/metrics.json``."""
        m = storage.read_json(Path(run_dir) / "metrics.json")
        return cls(str(run_dir), bool(m.get("finished")), m.get("best_val_acc"), m.get("best_epoch"), m.get("test_acc"),
                   m.get("epochs_completed"), m.get("elapsed_s"), m.get("images_per_s"), m.get("student_params"))


# ----------------------------------------------------------------------------- reading plain data back

T = TypeVar("T")


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _build(tp: Any, value: Any, where: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _build(inner[0], value, where) if len(inner) == 1 else value
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, dict):
            raise ConfigError(f"{where} should be a mapping of {tp.__name__} fields, got {type(value).__name__}")
        known = {f.name: f for f in dataclasses.fields(tp)}
        unknown = sorted(set(value) - set(known))
        if unknown:
            raise ConfigError(f"{where} has field(s) {unknown} that {tp.__name__} does not")
        kwargs = {k: _build(_hints(tp)[k], v, f"{where}.{k}") for k, v in value.items()}
        try:
            return tp(**kwargs)
        except TypeError as e:
            raise ConfigError(f"{where}: {e}") from None
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where} should be a list, got {type(value).__name__}")
        return [_build(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} should be a mapping, got {type(value).__name__}")
        return {k: _build(args[1], v, f"{where}.{k}") for k, v in value.items()}
    return value


__all__ = ["DataSummary", "DeployRow", "DistillResults", "Evaluation", "ExportSummary", "HeadScore", "Invocation",
           "Machine", "RESULTS_SCHEMA", "RetrievalSummary", "StudentResult", "TeacherSummary", "TrainResult"]
