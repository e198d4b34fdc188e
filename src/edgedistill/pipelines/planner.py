"""The recipe planner of ``distill``: the student, its input size and the training budget, when the user names none.

    ladder of timm candidates -> each measured on the deploy runtime (ONNX Runtime, FP32, the deploy batch and
    batch 1, one child process each: ``deploy.bench.bench_models``) and for a few training steps -> the
    deployment constraint keeps some -> the rule picks one -> budget shared out between the students

**The constraint** (``DeploySettings``): fewer parameters than the teacher (or ``max_params``), less resident memory,
at least ``min_speedup`` (3x) the teacher's images/s at the deploy batch, and, when set, a batch-1 latency of at most
``max_latency_ms``. When no candidate meets it, the plan is refused before any work, naming the fastest candidate.

**The rule** (:func:`choose`): among the kept candidates, the one with the most MFLOPs per image whose measured
training speed gives at least :data:`MIN_EPOCHS` passes over the distilled student's training images within its
share of the budget; when none does, the one that gets the most passes. Capacity helps only when the schedule is long
enough to use it: the narrow ResNet18 reached 99% of the probe in 12 KD epochs over 44k images, while on 8k images 30
epochs gave 79% and 60 epochs 89.6% (issue 17, 2 cores). ``benchmarks/recipes.py`` measures accuracy against training
minutes per student and folder size, the data behind :data:`MIN_EPOCHS` (docs/benchmarks.md).

**The input size**: the images' native size when they are small (at most :data:`SMALL_IMAGE` px: a student at the
teacher's 96 px on 32 px images pays 9x the pixels for nothing), with the small-input stem (3x3 stride-1 conv, no
max-pool) where the architecture has one (timm ResNets); otherwise the smaller of the native size and the teacher's.

Every measurement is cached in ``<out>/plan/measurements.json`` keyed by what was measured and on which machine, so a
rerun of the same command plans in a second.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from edgedistill import storage
from edgedistill.config import DeploySettings
from edgedistill.data.images import BadImageError
from edgedistill.errors import ConfigError

SMALL_IMAGE = 64
"""Images whose median side is at most this many pixels are trained at their native size with a small-input stem."""
MIN_EPOCHS = 20
"""Passes over the distilled student's training images that the budget must allow for a larger candidate to be
preferred (see the rule above; benchmarks/recipes.py)."""
CPU_BUDGET_MIN = 5.5
"""Default ``--budget`` on a CPU, minutes: distill on ~10k images then takes about 10 minutes on 2 cores."""
GPU_BUDGET_MIN = 20.0
"""Default ``--budget`` with a CUDA GPU, minutes."""
BASELINE_MIN_SHARE = 0.1
"""The smallest fraction of the budget a from-labels baseline gets (it trains on the labelled images only, so its
share by image count can be a few percent: a floor keeps it from being starved of epochs)."""


@dataclass(frozen=True)
class Candidate:
    """One rung of the ladder: a timm architecture with its arguments.

    Attributes:
        name: shown in the candidates table.
        arch: timm model name.
        kwargs: extra ``timm.create_model`` arguments (``channels`` of a narrow ResNet).
        small_input: the CIFAR-style stem where images are small (ResNets only).
    """

    name: str
    arch: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    small_input: bool = False

    def key(self, image_size: int) -> str:
        return f"{self.arch}|{sorted(self.kwargs.items())}|{self.small_input}|{image_size}"


def ladder(small: bool) -> list[Candidate]:
    """The candidates, smallest first: narrow and standard ResNet18s, MobileNetV3/V4, EfficientNet-Lite0, RegNets.

    Args:
        small: small images: ResNets get the small-input stem (the others have none in timm).
    """
    def resnet(c: int) -> Candidate:
        name = "resnet18" if c == 64 else f"resnet18 (channels {c}-{8 * c})"
        kwargs = {} if c == 64 else {"channels": [c, 2 * c, 4 * c, 8 * c]}
        return Candidate(name, "resnet18", kwargs, small)

    return [resnet(16), resnet(24), resnet(32), resnet(40), resnet(48), resnet(64),
            Candidate("mobilenetv3_small_100", "mobilenetv3_small_100"),
            Candidate("mobilenetv3_large_100", "mobilenetv3_large_100"),
            Candidate("mobilenetv4_conv_small", "mobilenetv4_conv_small"),
            Candidate("efficientnet_lite0", "efficientnet_lite0"),
            Candidate("regnetx_002", "regnetx_002"),
            Candidate("regnety_004", "regnety_004")]


@dataclass
class Measured:
    """A model's measurements: deploy runtime (ONNX Runtime FP32, child process) and training speed.

    Attributes:
        params: parameters.
        mflops: forward MFLOPs per image at the planned size.
        images_per_s: images/s at the deploy batch (median latency); None: not raced (too many parameters).
        latency_ms: median batch-1 latency.
        memory_mb: peak resident memory of the child above its baseline, at the deploy batch.
        train_images_per_s: training images/s (forward + backward + SGD step, batch 64), None for the teacher.
        teacher_images_per_s: the teacher's images/s raced right after this candidate: the speedup is this pair's
            ratio, so a load that comes and goes on a shared machine slows both sides of it alike.
    """

    params: int
    mflops: float
    images_per_s: float | None = None
    latency_ms: float | None = None
    memory_mb: float | None = None
    train_images_per_s: float | None = None
    teacher_images_per_s: float | None = None


@dataclass
class Row:
    """One line of the candidates table."""

    candidate: Candidate
    measured: Measured
    kept: bool
    why: str
    epochs: float | None = None
    """Passes over the distilled student's training images its measured training speed gets in its budget share."""


@dataclass
class RecipePlan:
    """What the planner chose and why: written to ``plan.json`` and the report.

    Attributes:
        student: the chosen candidate, or None when the user named the student.
        image_size: the student's input size (chosen or named).
        native_size: the images' median side.
        rows: the candidates table (empty when the student was named).
        teacher: the teacher's measurements.
        budget_s: the students' training budget in seconds (None: every student has its epochs).
        shares: student name -> its budget seconds (students with their own epochs are absent).
        notes: what was chosen and why, one sentence each.
    """

    student: Candidate | None
    image_size: int
    native_size: int
    rows: list[Row]
    teacher: Measured | None
    budget_s: float | None
    shares: dict[str, float]
    notes: list[str]
    deploy_batch: int = 8

    def to_dict(self) -> dict:
        return storage.jsonable(asdict(self))


# ----------------------------------------------------------------------------- the rule (pure, tested)


def check_constraint(m: Measured, teacher: Measured, dep: DeploySettings) -> tuple[bool, str]:
    """Whether a candidate meets the deployment constraint, and why (or why not), in words for the table."""
    max_params = max_params_of(teacher, dep)
    fails = []
    if m.params > max_params:
        fails.append(f"{m.params / 1e6:.2f}M params > {max_params / 1e6:.2f}M"
                     + (" (the teacher's)" if dep.max_params is None else ""))
    if m.images_per_s is None:
        return False, "; ".join(fails + ["not raced"])
    speedup = m.images_per_s / (m.teacher_images_per_s or teacher.images_per_s)
    if m.memory_mb >= teacher.memory_mb:
        fails.append(f"memory {m.memory_mb:.0f} MB >= the teacher's {teacher.memory_mb:.0f} MB")
    if speedup < dep.min_speedup:
        fails.append(f"{speedup:.1f}x the teacher's throughput < {dep.min_speedup:g}x")
    if dep.max_latency_ms is not None and m.latency_ms > dep.max_latency_ms:
        fails.append(f"batch-1 latency {m.latency_ms:.2f} ms > {dep.max_latency_ms:g} ms")
    return (not fails, "; ".join(fails) if fails else f"{speedup:.1f}x the teacher's throughput")


def max_params_of(teacher: Measured, dep: DeploySettings) -> int:
    """The most parameters a candidate may have: ``max_params``, else fewer than the teacher."""
    return dep.max_params if dep.max_params is not None else teacher.params - 1


def choose(candidates: list[tuple[Candidate, Measured]], teacher: Measured, dep: DeploySettings,
           train_budget_s: float | None, n_train: int) -> tuple[Candidate, list[Row], str]:
    """Apply the constraint and the rule (module docstring) to measured candidates.

    Args:
        candidates: (candidate, its measurements).
        teacher: the teacher's measurements.
        dep: the deployment constraint.
        train_budget_s: the distilled student's budget in seconds; None: epochs are fixed, the largest kept wins.
        n_train: the distilled student's training images per epoch.

    Returns:
        (the chosen candidate, the table's rows, why it was chosen).

    Raises:
        ConfigError: no candidate meets the constraint; names the fastest measured.
    """
    rows = []
    for c, m in candidates:
        kept, why = check_constraint(m, teacher, dep)
        epochs = (train_budget_s * m.train_images_per_s / max(n_train, 1)
                  if train_budget_s and m.train_images_per_s else None)
        rows.append(Row(c, m, kept, why, epochs))
    kept = [r for r in rows if r.kept]
    if not kept:
        raced = [r for r in rows if r.measured.images_per_s is not None] or rows
        fastest = max(raced, key=lambda r: r.measured.images_per_s or 0.0)
        quickest = min(raced, key=lambda r: r.measured.latency_ms or float("inf"))
        raise ConfigError(
            f"No student candidate meets the deployment constraint (min_speedup {dep.min_speedup:g}x, max_latency_ms "
            f"{dep.max_latency_ms}, max_params {dep.max_params}): the fastest measured, {fastest.candidate.name}, runs "
            f"{fastest.measured.images_per_s or 0:.0f} images/s at batch {max(dep.batch_sizes)} against the teacher's "
            f"{teacher.images_per_s:.0f} ({fastest.why}); the lowest batch-1 latency was "
            f"{quickest.measured.latency_ms or 0:.2f} ms ({quickest.candidate.name}). Loosen --deploy.min_speedup / --deploy.max_latency_ms / "
            "--deploy.max_params, or name a student (--train.student)")
    enough = [r for r in kept if r.epochs is None or r.epochs >= MIN_EPOCHS]
    if enough:
        best = max(enough, key=lambda r: r.measured.mflops)
        why = (f"the most MFLOPs ({best.measured.mflops:.0f}) among the {len(kept)} candidates that meet the "
               "constraint" + (f" and get at least {MIN_EPOCHS} epochs in the budget ({best.epochs:.0f})"
                               if best.epochs is not None else ""))
    else:
        best = max(kept, key=lambda r: r.epochs or 0.0)
        why = (f"no candidate that meets the constraint gets {MIN_EPOCHS} epochs in the budget; this one gets the "
               f"most ({best.epochs:.1f})")
    for r in rows:
        if r is best:
            r.why = f"chosen: {r.why}"
    return best.candidate, rows, why


def share_budget(budget_s: float, students: list[tuple[str, bool, int]]) -> dict[str, float]:
    """Each budgeted student's seconds, in proportion to its training images (each gets about as many passes over
    its own images); a from-labels baseline at least ``BASELINE_MIN_SHARE`` of the budget when others share it.

    Args:
        budget_s: the students' training budget.
        students: (name, learns from labels, training images per epoch) of each student that trains to the budget.
    """
    total = sum(n for _, _, n in students) or 1
    share = {name: n / total for name, _, n in students}
    if len(students) > 1:
        floor = {name: BASELINE_MIN_SHARE for name, labels, _ in students if labels and share[name] < BASELINE_MIN_SHARE}
        rest = sum(share[n] for n in share if n not in floor) or 1.0
        share = {n: floor.get(n, share[n] * (1.0 - sum(floor.values())) / rest) for n in share}
    return {name: budget_s * f for name, f in share.items()}


# ----------------------------------------------------------------------------- measuring


def native_size(splits, spec: str, sample: int = 64) -> int:
    """The median longer side of up to ``sample`` images of ``spec`` (evenly spread), in pixels; unreadable images are
    left out (the jobs skip and count them)."""
    parts = [p for p in splits.parts_of(spec) if len(p.indices)]
    sizes = []
    for part in parts:
        step = max(len(part.indices) // max(sample // len(parts), 1), 1)
        for i in part.indices[::step][: max(sample // len(parts), 1)]:
            try:
                sizes.append(max(splits.sources[part.source].load(int(i)).size))
            except BadImageError:
                continue
    sizes.sort()
    return int(sizes[len(sizes) // 2]) if sizes else 224


def _mflops(model, size: int) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, size, size))
    return counter.get_total_flops() / 1e6


def _train_speed(model, size: int, seconds: float = 1.0, batch: int = 64) -> float:
    """Training images/s of ``model``: forward, cross-entropy, backward and a momentum-SGD step, NHWC (as trained)."""
    import torch

    model = model.train().to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, size, size).to(memory_format=torch.channels_last)
    y = None
    n, t0 = -1, 0.0
    while True:
        if n == 0:
            t0 = time.perf_counter()  # the first step (allocations) is not timed
        out = model(x)
        y = torch.randint(0, out.shape[1], (batch,)) if y is None else y
        loss = torch.nn.functional.cross_entropy(out, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        n += 1
        if n >= 2 and time.perf_counter() - t0 > seconds:
            return n * batch / (time.perf_counter() - t0)


def _race(onnx: Path, arch: str, size: int, batch: int) -> tuple[float, float, float]:
    """(images/s at ``batch``, batch-1 latency ms, memory MB at ``batch``) on ONNX Runtime FP32, a child each."""
    from edgedistill.deploy.bench import BenchEntry, bench_models

    entry = BenchEntry(model="candidate", arch=arch, onnx={"fp32": str(onnx)}, resolutions=(size,),
                       native_resolution=size)
    rows = bench_models([entry], batch_sizes=tuple(sorted({1, batch})), warmup=3, iters=10,
                        runtimes=("onnxruntime",), precisions=("fp32",), log=lambda *_: None)
    by = {r["batch"]: r for r in rows}
    return by[batch]["throughput_ips"], by[1]["latency_ms_p50"], by[batch]["peak_mem_mb"]


def measure_candidate(c: Candidate, size: int, num_classes: int, batch: int, folder: Path,
                      max_params: int | None = None, teacher_onnx: tuple[Path, int] | None = None) -> Measured:
    """Export a random-initialised candidate to ONNX and measure it (speed does not depend on the weights); one with
    more than ``max_params`` parameters is only counted (it cannot be kept)."""
    from edgedistill.data.views import student_view
    from edgedistill.deploy.export import DeployModel, export_onnx
    from edgedistill.deploy.runtime import DeployMeta
    from edgedistill.students import count_parameters, create_student

    model = create_student(c.arch, num_classes, small_input=c.small_input, kwargs=c.kwargs).eval()
    if max_params is not None and count_parameters(model) > max_params:
        return Measured(count_parameters(model), _mflops(model, size))
    path = folder / f"{c.key(size).replace('|', '_').replace(' ', '').replace('/', '')[:120]}.onnx"
    meta = DeployMeta(role="student", arch=c.arch, outputs=["logits"], view=student_view(size).to_dict(),
                      target="logits", class_names=[str(i) for i in range(num_classes)])
    export_onnx(DeployModel(model, None, ("logits",)), path, meta=meta)
    ips, latency, memory = _race(path, c.name, size, batch)
    teacher_ips = _race(teacher_onnx[0], "teacher", teacher_onnx[1], batch)[0] if teacher_onnx else None
    path.unlink(missing_ok=True)
    return Measured(count_parameters(model), _mflops(model, size), ips, latency, memory,
                    _train_speed(create_student(c.arch, num_classes, small_input=c.small_input, kwargs=c.kwargs), size),
                    teacher_ips)


def measure_teacher(teacher_cfg, batch: int, folder: Path) -> Measured:
    """The teacher's image tower, exported to ONNX FP32 and raced like the candidates."""
    from edgedistill.deploy.export import export_onnx, load_teacher_deploy
    from edgedistill.students import count_parameters

    model, meta, _ = load_teacher_deploy(teacher_cfg)
    size = meta.view["image_size"]
    path = folder / "teacher.onnx"  # kept: each candidate's race is paired with the teacher's
    export_onnx(model, path, meta=meta)
    ips, latency, memory = _race(path, meta.arch, size, batch)
    return Measured(count_parameters(model), _mflops(model, size), ips, latency, memory)


MeasureFn = Callable[[list[Candidate], int, int], list[Measured]]


class Measurements:
    """Measurements on this machine, cached in ``<out>/plan/measurements.json`` by what was measured."""

    def __init__(self, folder: Path, teacher_cfg, num_classes: int, batch: int, log=print) -> None:
        from edgedistill.deploy.bench import machine_info

        self.folder, self.teacher_cfg, self.num_classes, self.batch, self.log = folder, teacher_cfg, num_classes, batch, log
        self.path = folder / "measurements.json"
        self.context = storage.jsonable({"machine": machine_info(), "batch": batch, "classes": num_classes})
        stored = storage.read_json(self.path) if self.path.is_file() else {}
        self.cache = stored.get("measured", {}) if stored.get("context") == self.context else {}

    def _get(self, key: str, make: Callable[[], Measured]) -> Measured:
        if key not in self.cache:
            self.cache[key] = asdict(make())
            storage.write_json(self.path, {"context": self.context, "measured": self.cache})
        return Measured(**self.cache[key])

    def teacher(self) -> Measured:
        from edgedistill.config import asdict as cfg_asdict

        key = f"teacher|{storage.jsonable(cfg_asdict(self.teacher_cfg))}"
        self.log("measuring the teacher on ONNX Runtime")
        if not (self.folder / "teacher.onnx").is_file():
            self.cache.pop(key, None)  # the paired races need its file
        return self._get(key, lambda: measure_teacher(self.teacher_cfg, self.batch, self.folder))

    def candidates(self, cands: list[Candidate], size: int, max_params: int | None = None) -> list[Measured]:
        """Each candidate measured at ``size``; those over ``max_params`` only counted."""
        from edgedistill.deploy.runtime import read_metadata

        onnx = self.folder / "teacher.onnx"
        pair = (onnx, read_metadata(onnx).view["image_size"]) if onnx.is_file() else None
        out = []
        for c in cands:
            self.log(f"measuring {c.name} at {size} px")
            key = c.key(size) + (f"|max{max_params}" if max_params is not None else "")
            out.append(self._get(key, lambda c=c: measure_candidate(c, size, self.num_classes, self.batch,
                                                                    self.folder, max_params, pair)))
        return out


# ----------------------------------------------------------------------------- the plan


def default_budget_min(gpu: bool) -> float:
    """``--budget`` when none is given: :data:`CPU_BUDGET_MIN` on a CPU, :data:`GPU_BUDGET_MIN` with a GPU."""
    return GPU_BUDGET_MIN if gpu else CPU_BUDGET_MIN


def plan_recipe(*, student: str | None, image_size: int | None, students: list[tuple[str, bool, bool, int]],
                native: int, teacher_size: int, budget_min: float | None, gpu: bool, dep: DeploySettings,
                measurements: Measurements | None, log=print) -> RecipePlan:
    """Choose what the user left open: the student (ladder, constraint, rule), its input size, the budget's shares.

    Args:
        student: the named student (``train.student``), or None to choose one.
        image_size: the named input size, or None to choose it.
        students: per student row: (name, learns from labels, has its own epochs or budget_s, training images per
            epoch).
        native: the images' median side in pixels.
        teacher_size: the teacher's input size.
        budget_min: ``--budget`` in minutes; None: the default for this machine.
        gpu: a CUDA GPU trains the students.
        dep: the deployment constraint.
        measurements: measures the teacher and candidates (tests inject deterministic ones); None only when the
            student is named.

    Raises:
        ConfigError: no candidate meets the constraint (named: the fastest measured).
    """
    notes = []
    small = native <= SMALL_IMAGE
    size = image_size or (native if small else min(native, teacher_size))
    if image_size is None:
        notes.append(f"Input size {size} px: " + (f"the images' native size (median side {native} px; at most "
                                                 f"{SMALL_IMAGE} px counts as small, so no upscaling)" if small else
                                                 f"the smaller of the images' ({native} px) and the teacher's "
                                                 f"({teacher_size} px)"))
    budgeted = [(n, labels, k) for n, labels, own_epochs, k in students if not own_epochs]
    budget_s = None
    if budgeted:
        minutes = budget_min if budget_min is not None else default_budget_min(gpu)
        budget_s = 60.0 * minutes
        notes.append(f"Budget: {minutes:g} min of training for {len(budgeted)} student(s)"
                     + ("" if budget_min is not None else f" (the default on a {'GPU' if gpu else 'CPU'})")
                     + "; shared in proportion to each student's training images"
                     + (f" (a from-labels baseline at least {BASELINE_MIN_SHARE:.0%})" if any(lb for _, lb, _ in budgeted)
                        else "") + "; each trains as many epochs as its measured step time allows, the cosine "
                                   "schedule ending inside its share")
    shares = share_budget(budget_s, budgeted) if budget_s else {}
    own = [n for n, _, own_epochs, _ in students if own_epochs]
    if own:
        notes.append(f"Student(s) {', '.join(own)} train their own given epochs or budget (always obeyed).")
    if student is not None:
        notes.append(f"Student {student}: named by the user (no ladder).")
        return RecipePlan(None, size, native, [], None, budget_s, shares, notes, max(dep.batch_sizes))
    assert measurements is not None
    distilled = [(n, k) for n, labels, _, k in students if not labels] or [(n, k) for n, _, _, k in students]
    name, n_train = max(distilled, key=lambda s: s[1])
    cands = ladder(small)
    teacher = measurements.teacher()
    measured = measurements.candidates(cands, size, max_params_of(teacher, dep))
    chosen, rows, why = choose(list(zip(cands, measured)), teacher, dep, shares.get(name), n_train)
    notes.append(f"Student {chosen.name}" + (" with the small-input stem" if chosen.small_input else "")
                 + f": {why}; {sum(r.kept for r in rows)} of {len(rows)} candidates meet the deployment constraint "
                 f"(fewer params and less memory than the teacher, >= {dep.min_speedup:g}x its images/s at batch "
                 f"{max(dep.batch_sizes)} on ONNX Runtime" + (f", batch-1 latency <= {dep.max_latency_ms:g} ms"
                                                               if dep.max_latency_ms else "") + ").")
    return RecipePlan(chosen, size, native, rows, teacher, budget_s, shares, notes, max(dep.batch_sizes))


def candidates_table(plan: RecipePlan) -> str:
    """The report's candidates table (markdown)."""
    if not plan.rows:
        return ""
    t = plan.teacher
    lines = ["| candidate | params | MFLOPs | images/s (batch %d) | batch-1 ms | memory MB | train images/s | "
             "epochs in budget | kept | why |" % plan.deploy_batch, "|---|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    lines.append(f"| teacher | {t.params / 1e6:.2f}M | {t.mflops:.0f} | {t.images_per_s:.0f} | {t.latency_ms:.2f} | "
                 f"{t.memory_mb:.0f} | | | | the reference |")
    for r in plan.rows:
        m = r.measured
        stem = " (small-input stem)" if r.candidate.small_input else ""
        if m.images_per_s is None:
            lines.append(f"| {r.candidate.name}{stem} | {m.params / 1e6:.2f}M | {m.mflops:.0f} | | | | | | no | {r.why} |")
            continue
        lines.append(f"| {r.candidate.name}{stem} | {m.params / 1e6:.2f}M | {m.mflops:.0f} | {m.images_per_s:.0f} | "
                     f"{m.latency_ms:.2f} | {m.memory_mb:.0f} | "
                     f"{'' if m.train_images_per_s is None else f'{m.train_images_per_s:.0f}'} | "
                     f"{'' if r.epochs is None else f'{r.epochs:.1f}'} | {'yes' if r.kept else 'no'} | {r.why} |")
    return "\n".join(lines)
