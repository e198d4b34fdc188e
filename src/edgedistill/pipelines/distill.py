"""``edgedistill distill``: from a folder of images to a deployed, benchmarked student, in one command.

    teacher cache -> teacher heads (zero-shot; probe when labels exist) -> students (baselines from
    labels when labels exist; distilled students) -> selection on val -> held-out evaluation ->
    export (student FP32 + INT8, teacher) -> deployment race -> report.md + results.json + plots

Every step is a library step used by the single commands too (``run``'s grid steps, ``eval``,
``export``, ``bench``), and every step reuses what an earlier run finished: caches, finished
runs, exports (by the weights' stamp) and the benchmark (by its key), so a rerun after a kill
continues and a finished run takes seconds. ``edgedistill demo`` is this command with the
packaged ``demo.yaml``.

Zero labels (``--prompts FILE --pool DIR``): a retrieval step comes first (``edgedistill.retrieve``):
the teacher's zero-shot head picks each prompt class's images from the pool, and the students
learn that head on them (response KD; for CLIP teachers also embedding KD, so the deployed
student keeps taking new prompts). ``--held_out DIR`` may name a labelled folder to score on.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from dataclasses import asdict as dc_asdict
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from edgedistill import storage
from edgedistill.config import (
    DataConfig,
    DistillConfig,
    GridConfig,
    GridRow,
    GridSections,
    GridTeacher,
    StudentRow,
    TeacherConfig,
    TrainConfig,
    asdict,
    check_choices,
    from_dict,
)
from edgedistill.console import say
from edgedistill.deploy.card import write_model_card
from edgedistill.errors import ConfigError
from edgedistill.pipelines.results import (
    DataSummary,
    DeployRow,
    DistillResults,
    Evaluation,
    ExportSummary,
    HeadScore,
    Invocation,
    Machine,
    RetrievalSummary,
    StudentResult,
    TeacherSummary,
)

DEMO_CONFIG = "demo.yaml"


def _earlier_invocations(path: Path) -> list[Invocation]:
    """The invocations recorded by an earlier ``results.json`` in the same folder (a rerun reuses their work)."""
    if not path.is_file():
        return []
    try:
        return DistillResults.load(path).invocations
    except Exception:  # noqa: BLE001 - a damaged (or older-schema) record of timings loses only the timings
        return []


def demo_config_path() -> Path:
    """The packaged demo configuration (``edgedistill demo``)."""
    return Path(str(resources.files("edgedistill") / "pipelines" / DEMO_CONFIG))


class _Steps:
    """The numbered steps of a run: announced as they start, timed for ``results.json``."""

    def __init__(self, total: int) -> None:
        self.total, self.k, self.seconds = total, 0, {}
        self._name, self._t = None, 0.0

    def start(self, name: str, msg: str) -> None:
        self._close()
        self.k += 1
        say(f"\n== {self.k}/{self.total} {msg}")
        self._name, self._t = name, time.time()

    def done(self) -> dict[str, float]:
        """Seconds per step so far (the running one until now)."""
        self._close()
        return dict(self.seconds)

    def _close(self) -> None:
        if self._name is not None:
            self.seconds[self._name] = round(time.time() - self._t, 1)
            self._name = None


# ----------------------------------------------------------------------------- 1. plan


@dataclass
class DistillPlan:
    """The checked plan of a distill run: resolved configs, the grid of students, what is skipped and why."""

    cfg: DistillConfig
    data: DataConfig
    teacher: TeacherConfig
    grid: GridConfig
    heads: list[str]
    has_labels: bool
    has_test: bool
    gpu: bool
    notes: list[str] = field(default_factory=list)
    retrieval: Any = None
    """Zero labels: the checked ``retrieve.RetrievalPlan`` that makes the training images (``data`` is its manifest)."""
    teacher_params: int | None = None
    """The teacher's parameter count (it is built once at plan time, to choose its zero-shot head)."""
    recipe: Any = None
    """The planner's ``planner.RecipePlan``: the student, its input size and the budget, and why."""


def plan_distill(cfg: DistillConfig) -> DistillPlan:
    """Resolve the GPU budget, the heads and the students, and check every student's config before any work.

    Raises:
        ConfigError / DataError: a student that cannot be trained as asked (named), data that is missing.
    """
    import torch

    from edgedistill.data.splits import build_splits

    check_choices(cfg.deploy)  # a runtime typo (registry.RUNTIMES) fails here, not after training
    gpu = torch.cuda.is_available()
    shared = GridSections(data=asdict(cfg.data), teacher=asdict(cfg.teacher), train=asdict(cfg.train))
    notes = []
    budget = {k: getattr(cfg.gpu, k) for k in ("data", "teacher", "train") if getattr(cfg.gpu, k)}
    budget.update({f"students.{r.name}": r.gpu for r in cfg.students if r.gpu})
    if gpu and budget:
        shared = shared.merged(cfg.gpu)
        notes.append("A CUDA GPU is present, so the GPU budget applies: "
                     + "; ".join(f"{k}: {json.dumps(v)}" for k, v in budget.items()))
    data = from_dict(DataConfig, shared.data, "distill data")
    teacher = from_dict(TeacherConfig, shared.teacher, "distill teacher")
    if cfg.prompts:
        return _plan_from_prompts(cfg, shared, data, teacher, gpu, notes)
    splits = build_splits(data)
    has_labels = data.train_labels and bool((splits.labels("train") >= 0).any())
    has_test = bool(splits.size("test"))
    model = _plan_teacher(teacher)
    zero_shot = _zero_shot_head(cfg.heads.zero_shot, model, teacher)
    heads = ([zero_shot] if zero_shot != "none" else []) + (["linear"] if cfg.heads.probe and has_labels else [])
    if not has_labels:
        notes.append("The training images have no labels here: no linear probe and no from-labels baseline; the "
                      f"students distil the {zero_shot} head.")
    shared.train.update(eval_test=has_test, out_dir=str(Path(cfg.out) / "runs"), cache_dir=cfg.cache_dir)
    students = [replace(r, train=dict(r.train)) for r in cfg.students]  # the planner writes each row's budget
    trained = [r for r in students if has_labels or {**shared.train, **r.train}.get("target", "labels") != "labels"]
    recipe = _plan_recipe(cfg, shared, trained, splits, teacher, gpu, notes)
    grid = _student_grid(cfg, shared, students, heads, has_labels, gpu, notes, cfg.heads.label_map,
                         only=f"this run has only {heads or 'no heads'}; set its train.head to one of them")
    if not has_test:
        notes.append(f"Dataset {data.dataset!r} has no held-out test split: the numbers are validation accuracy.")
    return DistillPlan(cfg, data, teacher, grid, heads, has_labels, has_test, gpu, notes,
                       teacher_params=_count(model), recipe=recipe)




SMALL_PAD_CROP_MAX = 64
"""A planned student at most this many pixels wide trains with pad-and-crop (see :func:`_plan_recipe`)."""


def _plan_recipe(cfg: DistillConfig, shared: GridSections, students: list[StudentRow], splits, teacher: TeacherConfig,
                 gpu: bool, notes: list[str]):
    """What the user left open, chosen by ``pipelines.planner`` and written into ``shared.train`` and each student row's
    budget: the student (measured ladder, deployment constraint), its input size, the budget's shares. In place.

    Raises:
        ConfigError: no candidate meets the deployment constraint (before any other work).
    """
    from edgedistill.pipelines.planner import Measurements, plan_recipe, native_size

    rows = []
    for r in students:
        train = {**shared.train, **r.train, **(r.gpu if gpu else {})}
        rows.append((r.name, train.get("target", "labels") == "labels",
                     train.get("epochs") is not None or train.get("budget_s") is not None,  # its own length
                     splits.size(train.get("train_split", "train"))))
    spec = "+".join(s for s in ("train", "unlabeled") if splits.size(s))
    named = shared.train.get("student")
    measure = None if named else Measurements(Path(cfg.out) / "plan", teacher, len(splits.classes),
                                              max(cfg.deploy.batch_sizes), log=lambda m: say(f"[plan] {m}"))
    recipe = plan_recipe(student=named, image_size=shared.train.get("image_size"), students=rows,
                         native=native_size(splits, spec), teacher_size=teacher.image_size or 224,
                         budget_min=cfg.budget, gpu=gpu, dep=cfg.deploy, measurements=measure)
    if recipe.student is not None:
        shared.train.update(student=recipe.student.arch, student_kwargs=dict(recipe.student.kwargs),
                            small_input=recipe.student.small_input)
        t = shared.train
        if recipe.image_size <= SMALL_PAD_CROP_MAX and t.get("aug", True) and not t.get("pad_crop") and \
                t.get("views") is None and not t.get("online_teacher") and t.get("pixel_cache", True):
            # Small images: CIFAR's pad-and-crop (4 px) instead of random-resized crops, whose cached plain-view
            # targets would describe another image than the crop; the demo's recipe.
            t["pad_crop"] = 4
            notes.append("Augmentation: pad-and-crop by up to 4 px and flips (small images; the cached teacher targets "
                         "of the whole image still describe the shifted view, unlike random-resized crops).")
    shared.train["image_size"] = recipe.image_size
    for r in students:
        if r.name in recipe.shares:
            r.train = {**r.train, "budget_s": round(recipe.shares[r.name], 1)}
    notes.extend(recipe.notes)
    return recipe


def _plan_teacher(teacher: TeacherConfig):
    """The teacher, built once at plan time (on the CPU, in torch): its weights are found before any work, and its
    outputs decide its zero-shot head."""
    from edgedistill.teachers import create_teacher

    return create_teacher(replace(teacher, device="cpu", runtime="torch"))


def _count(model) -> int:
    from edgedistill.students import count_parameters

    return count_parameters(model)


def _zero_shot_head(asked: str, model, teacher: TeacherConfig) -> str:
    """``heads.zero_shot`` resolved for this teacher: ``auto`` is its own (``heads.zero_shot_kind``); a named head must
    need no labels and be one the teacher can feed; ``none`` stays."""
    from edgedistill.heads import HEADS, head_class, zero_shot_kind

    if asked == "none":
        return asked
    kind = zero_shot_kind(model) if asked == "auto" else asked
    fitting = [k for k in HEADS if not HEADS[k].needs_labels and HEADS[k].fits(model)]
    if kind is None or head_class(kind).needs_labels or not head_class(kind).fits(model):
        raise ConfigError(f"heads.zero_shot={asked!r} is invalid for teacher {teacher.describe()}: its zero-shot heads "
                          f"are {', '.join(fitting) or 'none'}; set one of them, or none")
    return kind


def _student_grid(cfg: DistillConfig, shared: GridSections, students: list[StudentRow], heads: list[str],
                  has_labels: bool, gpu: bool, notes: list[str], label_map: str | None, only: str) -> GridConfig:
    """The students as a grid over ``shared``, every row's config checked: learners from labels skipped (noted) when
    there are none, a student of a head this run lacks refused (``only`` says what the run has), the GPU budget in.

    Raises:
        ConfigError: a student of a missing head, or no distilled student.
    """
    for key in ("name", "resume"):  # each student is its own run, named by its row; finished runs are found again
        shared.train.pop(key, None)
    from edgedistill.heads import check_head_target
    from edgedistill.losses import resolve_loss

    rows = []
    for r in students:
        train = {**shared.train, **r.train}
        if train.get("target", "labels") == "labels" and not has_labels:
            notes.append(f"Student {r.name!r} learns from labels and was skipped: there are no training labels.")
            continue
        if train.get("target", "labels") != "labels" and train.get("head", "linear") not in heads:
            raise ConfigError(f"Student {r.name!r} distils the {train.get('head', 'linear')!r} head, but {only}")
        rows.append(GridRow(name=r.name, train={**r.train, **(r.gpu if gpu else {})}, data=r.data, note=r.note or None))
    if not any({**shared.train, **r.train}.get("target", "labels") != "labels" for r in rows):
        raise ConfigError("distill needs at least one distilled student (train.target logits or embedding)")
    grid = GridConfig(runs=rows, name=cfg.name, out_dir=str(Path(cfg.out) / "runs"), cache_dir=cfg.cache_dir,
                      defaults=shared, teacher=GridTeacher(heads=heads, templates=cfg.heads.templates, label_map=label_map))
    for row in grid.runs:  # every student's full config is valid before the teacher runs on one image
        tcfg = grid.configs(row)[2]
        try:
            resolve_loss(tcfg)
            if tcfg.target != "labels":
                check_head_target(tcfg.head, tcfg.target)
        except ConfigError as e:
            raise ConfigError(f"Student {row.name!r}: {e}") from None
    return grid


def zero_label_students(kind: str) -> list[StudentRow]:
    """The students of ``distill --prompts --pool`` when none are given: response KD, and embedding KD for CLIP."""
    rows = [StudentRow("kd_zero_shot", {"target": "logits", "head": kind},
                       note=f"response KD on the {kind} head's probabilities over the prompts' classes")]
    if kind == "text":
        rows.append(StudentRow("kd_embedding", {"target": "embedding", "head": "text", "feature_loss": "mse",
                                                "optimizer": "adam", "lr": 3e-4, "weight_decay": 0.0},
                               note="embedding KD (MSE, Adam 3e-4, the companion's recipe): it takes new prompts"))
    return rows


def _plan_from_prompts(cfg: DistillConfig, shared: GridSections, user: DataConfig, teacher: TeacherConfig, gpu: bool,
                       notes: list[str]) -> DistillPlan:
    """The plan of a zero-label run: the retrieval (checked, not run), then students on its manifest."""
    from edgedistill.retrieve import finished_retrieval, plan_retrieval

    stray = [f for f in ("dataset", "root", "unlabeled", "prompts", "labeled_per_class")
             if getattr(user, f) != getattr(DataConfig(), f)]
    if stray:
        raise ConfigError(f"data.{stray[0]}={getattr(user, stray[0])!r} is not used with --prompts/--pool (the training "
                          "images are retrieved from the pool); remove it. Of data, val_fraction and seed apply")
    out = Path(cfg.out)
    rdir = (out / "retrieve").resolve()
    rcfg = replace(cfg.retrieve, templates=cfg.heads.templates)  # one zero-shot head: it retrieves, teaches, is scored
    rplan = plan_retrieval(cfg.prompts, cfg.pool, teacher, rcfg, rdir, cfg.cache_dir, held_out=cfg.held_out)
    zero_shot = rplan.kind if cfg.heads.zero_shot == "auto" else cfg.heads.zero_shot
    if zero_shot != rplan.kind:
        raise ConfigError(f"heads.zero_shot={cfg.heads.zero_shot!r}, but {teacher.describe()} scores prompts with its "
                          f"{rplan.kind!r} head, which retrieves and teaches here; set heads.zero_shot auto")
    data = DataConfig(dataset="manifest", root=str(rdir / "manifest.csv"), held_out=cfg.held_out,
                      val_fraction=user.val_fraction, seed=user.seed, train_labels=False)
    has_test = cfg.held_out is not None
    notes.append(f"No labels: the training images are retrieved from the pool ({', '.join(rplan.pool_paths)}: "
                 f"{rplan.splits.size('unlabeled'):,} images) by the teacher's {rplan.kind} head over the "
                 f"{len(rplan.classes)} classes of {cfg.prompts}; the students learn that head. Validation holds "
                 "retrieved images with their retrieved classes, so its accuracy is agreement with the teacher"
                 + (f"; the held-out folder {cfg.held_out} (its labels only score) gives the final numbers."
                    if has_test else "; no labelled folder was given (--held_out), so no number here is accuracy "
                                     "against real labels."))
    students = cfg.students
    if students == DistillConfig().students:
        students = zero_label_students(rplan.kind)
        notes.append(f"Students: the zero-label defaults ({', '.join(r.name for r in students)}).")
    shared = GridSections(data=asdict(data), teacher=shared.teacher, train=dict(shared.train))
    shared.train.update(eval_test=has_test, out_dir=str(out / "runs"), cache_dir=cfg.cache_dir,
                        head_path=str(rdir / "head"))  # the head the retrieval saved: names, synonyms, templates
    label_map = str(rdir / "label_map.json") if zero_shot == "label_map" else None
    students = [replace(r, train=dict(r.train)) for r in students]  # the planner writes each row's budget
    recipe = _plan_recipe(cfg, shared, students, rplan.splits, teacher, gpu, notes)
    grid = _student_grid(cfg, shared, students, [zero_shot], False, gpu, notes, label_map,
                         only=f"a zero-label run has only the {zero_shot!r} head; set its train.head to {zero_shot!r}")
    done = finished_retrieval(rdir)
    if done is not None and done.get("key") != rplan.key and any((out / "runs").glob("*/metrics.json")):
        raise ConfigError(f"{str(out)!r} holds students trained on another retrieval (the prompts, pool, teacher or "
                          f"retrieve settings changed); use another --out, or delete {out / 'runs'} and {rdir}")
    return DistillPlan(cfg, data, teacher, grid, [zero_shot], False, has_test, gpu, notes, retrieval=rplan,
                       recipe=recipe)


def _score_prompt_head(plan: DistillPlan, rows: list[dict]) -> None:
    """Zero labels, CLIP: the teacher's text row scores the head that retrieved and taught (synonyms and templates),
    not one rebuilt from the class names alone. In place."""
    import torch

    from edgedistill.cache import ensure_cache, gather
    from edgedistill.data.splits import build_splits
    from edgedistill.evaluate import evaluate_logits
    from edgedistill.heads import load_head

    head, rp = load_head(plan.retrieval.out / "head"), plan.retrieval
    splits = build_splits(plan.data)
    for row in (r for r in rows if r["kind"] == "teacher" and r["target"] == "text"):
        for split, key in (("val", "val_acc"), ("test", "test_acc")):
            if splits.size(split):
                caches = ensure_cache(plan.data, plan.teacher, split, plan.cfg.cache_dir, teacher=rp.teacher, splits=splits)
                cached = gather(splits, caches, split)
                with torch.no_grad():
                    row[key] = evaluate_logits(head(torch.from_numpy(cached.embedding)), cached.labels, splits.classes)["acc"]


def _retrieval_section(record: dict, prompts: str) -> list[str]:
    """The report's account of what was retrieved: counts per class and the contact sheet."""
    from edgedistill.retrieve import format_counts

    return ["## Retrieval (no labels)", "",
            f"{record['kept']:,} training images were retrieved from a pool of {record['pool']['images']:,} unlabeled "
            f"images by the teacher's {record['head']['kind']} head over the classes of `{prompts}` ({record['search']} "
            f"search; score: {record['score']}). No label was used to choose or to train any model.", "",
            format_counts(record), "", "Per class, its top images, then its borderline (lowest kept) ones:", "",
            f"![contact sheet](retrieve/{record['files']['contact_sheet']})", ""]


# ----------------------------------------------------------------------------- the steps


def _stamp(paths: list[Path]) -> list:
    """Cheap identity of files a reused step depends on (path, size, mtime)."""
    return [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in paths if p.exists()]


def _fresh(folder: Path, key: Any) -> bool:
    mark = folder / "made_from.json"
    return (folder / "export.json").is_file() and mark.is_file() and storage.read_json(mark) == storage.jsonable(key)


def _export(plan: DistillPlan, best_run: Path, out: Path) -> tuple[Path, Path]:
    """Step 4: the chosen student and the teacher as ONNX (FP32 + INT8), reused while their inputs are unchanged."""
    from edgedistill.deploy.export import export_model, load_student_deploy, load_teacher_deploy

    from edgedistill.deploy.engines import RUNTIMES, runtime_available

    dep = plan.cfg.deploy
    # The other deploy targets the race runs, where installed: their files are made (and checked) here.
    targets = {t: t in dep.runtimes and t in RUNTIMES and runtime_available(t)[0] for t in ("openvino", "executorch")}
    student_dir, teacher_dir = out / "exports" / "student", out / "exports" / "teacher"
    s_key = {"weights": _stamp([best_run / "student.safetensors"]), "int8": dep.int8, "calib": dep.calib_size, **targets}
    if _fresh(student_dir, s_key):
        say(f"reusing {student_dir}")
    else:
        model, meta = load_student_deploy(best_run)
        export_model(model, meta, student_dir, data=plan.data, int8=dep.int8, calib_size=dep.calib_size,
                     val_split="test" if plan.has_test else "val", **targets)
        storage.write_json(student_dir / "made_from.json", s_key)
    t_key = {"teacher": asdict(replace(plan.teacher, device="cpu", batch_size=1, runtime="torch")), "int8": dep.int8,
             "calib": dep.calib_size, **targets}
    if _fresh(teacher_dir, t_key):
        say(f"reusing {teacher_dir}")
    else:
        model, meta, _ = load_teacher_deploy(plan.teacher)
        export_model(model, meta, teacher_dir, data=plan.data, int8=dep.int8, calib_size=dep.calib_size, val_split=None,
                     **targets)
        storage.write_json(teacher_dir / "made_from.json", t_key)
    return student_dir, teacher_dir


def _bench(plan: DistillPlan, student_dir: Path, teacher_dir: Path, out: Path,
           tutorial_config: dict | None = None) -> dict:
    """Step 5: the deployment race, each model at its own resolution; reused while models and settings are unchanged."""
    from edgedistill.deploy.bench import bench_models, entry_from_export, tutorial_teacher_entry, write_bench

    dep = plan.cfg.deploy
    entries = [entry_from_export(teacher_dir, "teacher"), entry_from_export(student_dir, "student")]
    if dep.tutorial_teacher:
        entries.append(tutorial_teacher_entry(out / "exports" / "tutorial_teacher", dep.tutorial_teacher, tutorial_config))
    entries = [replace(e, resolutions=(e.native_resolution,)) for e in entries]  # each at its deployment resolution
    key = storage.jsonable({"entries": [dc_asdict(e) for e in entries],
                            "stamp": _stamp([Path(p) for e in entries for p in e.onnx.values()]),
                            "settings": dc_asdict(dep)})
    bench_json = out / "bench" / "bench.json"
    if bench_json.exists() and storage.read_json(bench_json).get("key") == key:
        say(f"reusing {bench_json}")
        return storage.read_json(bench_json)
    rows = bench_models(entries, batch_sizes=tuple(dep.batch_sizes), warmup=dep.warmup, iters=dep.iters,
                        runtimes=tuple(dep.runtimes), precisions=("fp32", "int8"), log=say)
    from edgedistill.deploy.engines import RUNTIMES, runtime_available

    notes = [f"tutorial_teacher: open_clip {dep.tutorial_teacher} image tower, random-initialised "
             "(speed does not depend on weights)"] if dep.tutorial_teacher else []
    notes += [f"{r} not raced: {runtime_available(r)[1]}" for r in dep.runtimes if r in RUNTIMES and not runtime_available(r)[0]]
    bench = write_bench(rows, out / "bench", notes=notes)
    bench["key"] = key
    storage.write_json(bench_json, bench)
    return bench


def _cache_everything(plan: DistillPlan) -> None:
    """The teacher's outputs on every image any step reads, computed in one go (one set of processes)."""
    from edgedistill.cache import ensure_cache
    from edgedistill.data.splits import build_splits

    splits = build_splits(plan.data)
    present = [s for s in ("train", "val", "test", "unlabeled") if splits.size(s)]
    ensure_cache(plan.data, plan.teacher, "+".join(present), plan.cfg.cache_dir, splits=splits,
                 num_workers=plan.cfg.train.num_workers)


def _teacher_params(teacher_cfg: TeacherConfig) -> int:
    from edgedistill.students import count_parameters
    from edgedistill.teachers import create_teacher

    return count_parameters(create_teacher(replace(teacher_cfg, device="cpu", runtime="torch")))


def run_distill(cfg: DistillConfig, *, tutorial_teacher_config: dict | None = None) -> DistillResults:
    """Run the whole job into ``cfg.out``; returns its results (also written: ``results.json``, with report.md).

    Args:
        cfg: the job.
        tutorial_teacher_config: an open_clip model config registered under ``cfg.deploy.tutorial_teacher``
            (tests race a tiny one).
    """
    from edgedistill.evaluate import evaluate_student
    from edgedistill.pipelines.grid import run_grid_config
    from edgedistill.pipelines.report import write_distill_report, write_grid_results

    t0 = time.time()
    out = Path(cfg.out)
    steps = _Steps(7 + int(bool(cfg.prompts)))  # a zero-label run retrieves its training images first
    steps.start("plan", "plan: heads, students and their settings, checked before any work")
    plan = plan_distill(cfg)
    for note in plan.notes:
        say(f"note: {note}")
    storage.write_text(out / "config.yaml", yaml.safe_dump(asdict(cfg), sort_keys=False))

    retrieval = None
    if plan.retrieval is not None:
        from edgedistill.retrieve import format_counts, run_retrieval

        steps.start("retrieve", f"retrieve: the pool's images of each prompt class, by the teacher's "
                                f"{plan.heads[0]} head")
        retrieval = run_retrieval(plan.retrieval, num_workers=cfg.train.num_workers, log=say)
        say(format_counts(retrieval))
        if not retrieval["kept"]:
            raise ConfigError("The retrieval kept no images; lower retrieve.min_score / margin or check the prompts "
                              f"({out / 'retrieve' / 'contact_sheet.png'})")

    steps.start("cache", "teacher outputs and decoded pixels of every image, cached once")
    _cache_everything(plan)
    steps.start("students", f"teacher heads ({', '.join(plan.heads)}), then the students")
    grid = run_grid_config(plan.grid, source=str(out / "config.yaml"))
    if plan.retrieval is not None and plan.retrieval.kind == "text":
        _score_prompt_head(plan, grid["rows"])
    write_grid_results(grid, Path(plan.grid.out_dir))
    distilled = [r for r in grid["rows"] if r["kind"] == "student" and r["target"] != "labels"]
    best = max(distilled, key=lambda r: -1.0 if r["val_acc"] is None else r["val_acc"])  # chosen on val, never test
    best_run = Path(best["run_dir"])

    steps.start("evaluate", f"the best distilled student ({best['name']}, chosen on validation) on the held-out images")
    evaluation = None
    if plan.has_test:
        evaluation = evaluate_student(best_run, plan.data, split="test", out=out / "eval")
        storage.write_bytes(out / "confusion_best_student.png", (out / "eval" / evaluation["png"]).read_bytes())

    steps.start("export", "export: the student (FP32 + INT8) and the teacher to ONNX, parity-checked")
    student_dir, teacher_dir = _export(plan, best_run, out)

    steps.start("race", "deployment race, one child process per model and setting")
    bench = _bench(plan, student_dir, teacher_dir, out, tutorial_teacher_config)

    steps.start("report", "report")
    results = _results(plan, grid["rows"], best["name"], evaluation, student_dir, bench, retrieval, out, t0, steps)
    results.write(out / "results.json")
    write_model_card(student_dir, storage.read_json(student_dir / "export.json"), {
        "teacher": plan.teacher.describe() + f" at {plan.teacher.image_size} px", "data": dc_asdict(results.data),
        "held_out": results.export.split, "bench": [r for r in bench["rows"] if r["model"] == "student"],
        "race": bench.get("race"), "machine": dc_asdict(results.machine), "command": results.command})
    for png in ("accuracy.png", "accuracy_vs_unlabeled.png"):
        storage.write_bytes(out / png, (Path(plan.grid.out_dir) / png).read_bytes())
    storage.write_bytes(out / "bench.png", (out / "bench" / "bench.png").read_bytes())
    report = write_distill_report(results, out, _retrieval_section(retrieval, cfg.prompts) if retrieval else None)
    print(summary_table(results))
    print(f"report: {report}")
    print(f"deployed student: {student_dir} (edgedistill predict {student_dir} IMAGES...)")
    return results


# ----------------------------------------------------------------------------- results.json


def _results(plan: DistillPlan, rows: list[dict], best: str, evaluation: dict | None, student_dir: Path, bench: dict,
             retrieval: dict | None, out: Path, t0: float, steps: _Steps) -> DistillResults:
    """The run's ``results.json`` (``pipelines.results``), from what each step left."""
    from edgedistill.deploy.bench import machine_info
    from edgedistill.heads import head_class

    cfg = plan.cfg
    command = ("edgedistill " + " ".join(map(shlex.quote, sys.argv[1:])) if sys.argv[1:2] in (["distill"], ["demo"])
               else f"edgedistill distill --config {out / 'config.yaml'}")
    heads = {}
    for r in (r for r in rows if r["kind"] == "teacher"):
        cls = head_class(r["target"])
        heads[r["target"]] = HeadScore(r["val_acc"], r["test_acc"], cls.title, cls.needs_labels)
    teacher = TeacherSummary(plan.teacher.describe(), plan.teacher.image_size, plan.teacher.runtime,
                             plan.teacher_params or _teacher_params(plan.teacher), heads)
    train_cfgs = {row.name: plan.grid.configs(row)[2] for row in plan.grid.runs}
    students = [_student_result(r, train_cfgs[r["name"]]) for r in rows if r["kind"] == "student"]
    export = storage.read_json(student_dir / "export.json")
    finished = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    elapsed = round(time.time() - t0, 1)
    return DistillResults(
        name=cfg.name, command=command, machine=Machine.from_info(machine_info()), finished=finished,
        notes=plan.notes, gpu_budget=plan.gpu,
        data=DataSummary(plan.data.dataset, _counts(plan.data), plan.has_labels, "test" if plan.has_test else None),
        teacher=teacher, students=students, best_student=best,
        evaluation=Evaluation(evaluation["acc"], evaluation["n"], evaluation["per_class"]) if evaluation else None,
        export=ExportSummary(export["files"], export["parity"], export["accuracy"], "test" if plan.has_test else "val",
                             str(student_dir)),
        deploy=[DeployRow.from_row(r) for r in bench["rows"]],
        race=bench.get("race"),
        plan=_plan_results(plan, {r["name"]: storage.read_json(Path(r["run_dir"]) / "metrics.json")
                                  for r in rows if r["kind"] == "student"}),
        elapsed_s=elapsed, step_seconds=steps.done(),  # the report step: until these results were composed
        invocations=_earlier_invocations(out / "results.json") + [Invocation(finished, elapsed)],
        retrieval=None if retrieval is None else RetrievalSummary(
            retrieval["classes"], retrieval["counts"], retrieval["kept"], retrieval["search"], retrieval["score"],
            retrieval["head"], retrieval["pool"]["images"], str(out / "retrieve"), str(out / "retrieve" / "manifest.csv"),
            str(out / "retrieve" / retrieval["files"]["contact_sheet"])),
    )


def _student_result(row: dict, tcfg: TrainConfig) -> StudentResult:
    """One student's results: its grid row, its run's ``metrics.json``, and its config's loss."""
    from edgedistill.losses import DEFAULT_LOSS

    run_dir = Path(row["run_dir"])
    m = storage.read_json(run_dir / "metrics.json")
    return StudentResult(
        name=row["name"], arch=row["arch"], target=row["target"], head=row["head"],
        loss=tcfg.loss or DEFAULT_LOSS[tcfg.target], kwargs=m.get("student_kwargs") or _student_kwargs(run_dir),
        n_unlabeled=row["n_unlabeled"], val_acc=row["val_acc"], test_acc=row["test_acc"],
        params=m.get("student_params"), train_s=row["train_s"], epochs=m.get("epochs_completed"),
        images_per_s=m.get("images_per_s"), n_val=m.get("n_val"), run_dir=row["run_dir"])


def _plan_results(plan: DistillPlan, metrics: dict[str, dict]) -> dict | None:
    """``results.json``'s account of the plan: what the planner chose and measured, and each student's budget."""
    from edgedistill.pipelines.planner import candidates_table

    if plan.recipe is None:
        return None
    reference = {r.name: r.reference_epochs for r in plan.cfg.students}
    budgets = {name: {**{k: m.get(k) for k in ("budget_s", "budget_epochs", "budget_step_s", "epochs_completed",
                                               "elapsed_s")}, "reference_epochs": reference.get(name)}
               for name, m in metrics.items() if m.get("budget_s")}
    return {**plan.recipe.to_dict(), "table": candidates_table(plan.recipe), "budgets": budgets}


def _counts(data: DataConfig) -> dict:
    from edgedistill.data.splits import build_splits

    return build_splits(data).manifest["counts"]


def _student_kwargs(run_dir: Path) -> dict:
    return storage.read_json(run_dir / "student.json").get("kwargs", {})


def summary_table(results: DistillResults) -> str:
    """The final table on stdout: each model's accuracy, and the deployed student against the teacher."""
    from edgedistill.pipelines.report import headline, pct

    lines = [f"| model | val acc | {results.data.held_out or 'held-out'} acc |", "|---|---:|---:|"]
    for head, r in results.teacher.heads.items():
        lines.append(f"| teacher {head} | {pct(r.val_acc)} | {pct(r.test_acc)} |")
    for s in results.students:
        mark = " (deployed)" if s.name == results.best_student else ""
        lines.append(f"| {s.name}{mark} | {pct(s.val_acc)} | {pct(s.test_acc)} |")
    return "\n".join(lines + [""] + headline(results))


# ----------------------------------------------------------------------------- the commands


def distill_command(cfg: DistillConfig = DistillConfig()) -> None:
    """From a folder of images to a deployed, benchmarked student: cache, heads, students, export, race, report."""
    run_distill(cfg)


def demo_command(out: str = "runs/demo") -> None:
    """The whole story offline on the bundled CIFAR-10 images: distill with the packaged demo.yaml.

    Args:
        out: output folder for report.md, results.json, plots, runs, exports.
    """
    raw = yaml.safe_load(demo_config_path().read_text())
    run_distill(from_dict(DistillConfig, {**raw, "out": out}, str(demo_config_path())))
