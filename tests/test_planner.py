"""The recipe planner: its choice on a ladder with injected measurements, the refusal of an impossible constraint,
a named student/size/epochs obeyed, and the time budget honoured on a short real run."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from edgedistill.config import DataConfig, DeploySettings, TeacherConfig, TrainConfig
from edgedistill.errors import ConfigError
from edgedistill.pipelines import planner
from edgedistill.pipelines.planner import Candidate, Measured, choose, plan_recipe
from test_train import write_folder

TEACHER = Measured(params=4_650_000, mflops=140.0, images_per_s=1200.0, latency_ms=2.0, memory_mb=60.0)


class FakeMeasurements:
    """Deterministic measurements by candidate name; records what was measured."""

    def __init__(self, table: dict[str, Measured]) -> None:
        self.table, self.asked = table, []

    def teacher(self) -> Measured:
        return TEACHER

    def candidates(self, cands: list[Candidate], size: int, max_params: int | None = None) -> list[Measured]:
        self.asked += [(c.name, size) for c in cands]
        return [self.table[c.name] for c in cands]


def _table(**over: Measured) -> dict[str, Measured]:
    """Every rung of the small-image ladder: ResNets get slower and larger with width; the rest are fast and small."""
    table = {}
    for c in planner.ladder(True):
        width = c.kwargs.get("channels", [64])[0]
        table[c.name] = (Measured(params=int(11e6 * (width / 64) ** 2), mflops=560 * (width / 64) ** 2,
                                  images_per_s=20000 / (width / 16) ** 2, latency_ms=0.2 * (width / 16),
                                  memory_mb=5 + width / 4, train_images_per_s=9000 / (width / 16) ** 2)
                         if c.arch == "resnet18" else
                         Measured(params=2_000_000, mflops=6.0, images_per_s=8000, latency_ms=0.5, memory_mb=20,
                                  train_images_per_s=4000))
    table.update(over)
    return table


STUDENTS = [("scratch", True, False, 1000), ("kd", False, False, 8000)]


def _plan(fake, **kw):
    args = dict(student=None, image_size=None, students=STUDENTS, native=32, teacher_size=96, budget_min=6.0,
                gpu=False, dep=DeploySettings(), measurements=fake)
    return plan_recipe(**{**args, **kw})


def test_planner_choice_on_injected_measurements() -> None:
    fake = FakeMeasurements(_table())
    plan = _plan(fake)
    # 32 px images: native size, small-input stems; every rung measured at 32 px.
    assert plan.image_size == 32 and {s for _, s in fake.asked} == {32}
    rows = {r.candidate.name: r for r in plan.rows}
    # widths 48 and 64 have more params than the teacher; 40 has 2.7x the teacher's throughput (< 3x)
    assert not rows["resnet18"].kept and "params" in rows["resnet18"].why
    assert not rows["resnet18 (channels 40-320)"].kept and "< 3x" in rows["resnet18 (channels 40-320)"].why
    # Kept: widths 16-32 and the small ones; the budget (kd: 8/9 of 6 min = 320 s) gives width 32
    # 320 * 2250 / 8000 = 90 epochs >= MIN_EPOCHS, and it has the most MFLOPs: chosen.
    assert plan.student.kwargs == {"channels": [32, 64, 128, 256]} and plan.student.small_input
    assert rows["resnet18 (channels 32-256)"].why.startswith("chosen")
    assert plan.shares == pytest.approx({"scratch": 40.0, "kd": 320.0})  # the baseline: half a share
    assert "| resnet18 (channels 32-256) (small-input stem) | 2.75M |" in planner.candidates_table(plan)

    # A tight budget: width 32 gets 3.7 epochs, width 24 below MIN_EPOCHS too; the most epochs wins: width 16.
    tight = _plan(FakeMeasurements(_table()), budget_min=0.25)
    assert tight.student.kwargs == {"channels": [16, 32, 64, 128]}
    # A user constraint on parameters drops every ResNet above 1M.
    small = _plan(FakeMeasurements(_table()), dep=DeploySettings(max_params=1_000_000))
    assert small.student.kwargs == {"channels": [16, 32, 64, 128]}


def test_impossible_constraint_is_refused_naming_the_fastest() -> None:
    with pytest.raises(ConfigError, match=r"No student candidate meets the deployment constraint .*max_latency_ms "
                                          r"0\.001.*the fastest measured, resnet18 \(channels 16-128\), runs 20000 "
                                          r"images/s"):
        _plan(FakeMeasurements(_table()), dep=DeploySettings(max_latency_ms=0.001))


def test_budget_shares() -> None:
    assert planner.share_budget(100.0, [("a", False, 300), ("b", False, 100)]) == pytest.approx({"a": 75, "b": 25})
    # a baseline on 1,000 of 45,000 images: its 2% is raised to the 10% floor, the rest shared by images
    got = planner.share_budget(100.0, [("scratch", True, 1000), ("kd", False, 44000)])
    assert got == pytest.approx({"scratch": 10.0, "kd": 90.0})
    assert planner.share_budget(100.0, [("scratch", True, 10)]) == {"scratch": 100.0}


def test_named_student_size_and_epochs_are_obeyed() -> None:
    fake = FakeMeasurements(_table())
    plan = _plan(fake, student="mobilenetv3_small_100", image_size=48,
                 students=[("scratch", True, True, 1000), ("kd", False, False, 8000)])
    assert fake.asked == [] and plan.student is None and plan.rows == [] and plan.image_size == 48
    assert plan.shares == {"kd": 360.0}  # scratch has its own epochs: no budget; kd the whole budget
    # Large images: the smaller of the native and the teacher's size, no small-input stem.
    big = _plan(FakeMeasurements(_table()), native=300)
    assert big.image_size == 96 and not big.student.small_input
    # train/run: what is not named falls back to the plain defaults; epochs given win over a budget.
    cfg = TrainConfig(budget_s=30.0, epochs=3).resolved()
    assert (cfg.student, cfg.image_size, cfg.epochs) == ("resnet18", 96, 3)
    assert TrainConfig(budget_s=30.0).resolved().epochs is None and TrainConfig().resolved().epochs == 10


def test_distill_obeys_a_named_student_and_epochs(tmp_path: Path) -> None:
    """Through distill's plan: named student, size and epochs reach every student's config; no measurement."""
    from test_distill import _config, write_user_folder

    from edgedistill.pipelines.distill import plan_distill

    write_user_folder(tmp_path / "data")
    plan = plan_distill(_config(tmp_path, tmp_path / "o"))
    for row in plan.grid.runs:
        train = plan.grid.configs(row)[2]
        assert (train.student, train.image_size, train.epochs, train.budget_s) == ("test_resnet", 16, 2, None)
    assert not (tmp_path / "o" / "plan").exists()
    # Epochs left open: each student trains to its share of --budget.
    open_epochs = _config(tmp_path, tmp_path / "o", train={"student": "test_resnet", "image_size": 16, "epochs": None},
                          budget=1.5)
    plan = plan_distill(open_epochs)
    budgets = {row.name: plan.grid.configs(row)[2].budget_s for row in plan.grid.runs}
    # 21 labelled training images against 33 for kd: shares by image count (scratch above its 10% floor)
    assert budgets == {"scratch": 35.0, "kd": 55.0}


def test_impossible_constraint_is_refused_by_distill_before_any_work(tmp_path: Path, monkeypatch) -> None:
    from test_distill import _config, write_user_folder

    from edgedistill import cache
    from edgedistill.pipelines.distill import plan_distill

    write_user_folder(tmp_path / "data")
    monkeypatch.setattr(cache, "ensure_cache", lambda *a, **k: pytest.fail("cached before checking the plan"))
    monkeypatch.setattr(planner, "Measurements", lambda *a, **k: FakeMeasurements(_table()))
    cfg = _config(tmp_path, tmp_path / "o", train={"student": None, "image_size": None},
                  deploy={"max_latency_ms": 0.001})
    with pytest.raises(ConfigError, match=r"the fastest measured, resnet18 \(channels 16-128\)"):
        plan_distill(cfg)
    chosen = plan_distill(_config(tmp_path, tmp_path / "o", train={"student": None, "image_size": None}))
    train = chosen.grid.configs(chosen.grid.runs[1])[2]  # the 20x24 images are small: native size 24, small stem
    assert (train.student, train.student_kwargs, train.small_input, train.image_size) == (
        "resnet18", {"channels": [32, 64, 128, 256]}, True, 24)


def test_measured_candidate_is_real(tmp_path: Path) -> None:
    """One real measurement: an ONNX export raced in a child process, parameters and FLOPs counted."""
    m = planner.measure_candidate(Candidate("r", "resnet18", {"channels": [8, 16, 32, 64]}, True), 16, 3, 2, tmp_path)
    assert 150_000 < m.params < 200_000 and m.mflops > 1 and m.images_per_s > 0 and m.latency_ms > 0
    assert m.train_images_per_s > 0 and not list(tmp_path.glob("*.onnx")) and m.teacher_images_per_s is None
    # paired with a teacher race: here the candidate itself stands in for the teacher's file
    from edgedistill.deploy.export import DeployModel, export_onnx
    from edgedistill.deploy.runtime import DeployMeta
    from edgedistill.data.views import student_view
    from edgedistill.students import create_student

    t = tmp_path / "t.onnx"
    export_onnx(DeployModel(create_student("resnet18", 3, kwargs={"channels": [8, 8, 8, 8]}).eval(), None, ("logits",)),
                t, meta=DeployMeta(role="teacher", arch="t", outputs=["logits"], view=student_view(16).to_dict()))
    paired = planner.measure_candidate(Candidate("r", "resnet18", {"channels": [8, 16, 32, 64]}, True), 16, 3, 2,
                                       tmp_path, teacher_onnx=(t, 16))
    assert paired.teacher_images_per_s > 0
    slow_teacher = Measured(**{**paired.__dict__, "teacher_images_per_s": paired.images_per_s / 2})
    assert planner.check_constraint(slow_teacher, TEACHER, DeploySettings(min_speedup=1.9))[0]  # the pair's ratio
    assert not planner.check_constraint(slow_teacher, TEACHER, DeploySettings(min_speedup=2.1))[0]
    over = planner.measure_candidate(Candidate("r", "resnet18", {"channels": [8, 16, 32, 64]}, True), 16, 3, 2,
                                     tmp_path, max_params=100_000)  # too large to keep: counted, not raced
    assert over.params == m.params and over.images_per_s is None
    assert planner.check_constraint(over, TEACHER, DeploySettings(max_params=100_000)) == (
        False, "0.18M params > 0.10M; not raced")


def test_budget_is_honoured_on_a_short_run(tmp_path: Path) -> None:
    from edgedistill.training.fit import train

    folder = write_folder(tmp_path / "data", n_train=40)
    data = DataConfig(dataset="imagefolder", root=str(folder), val_fraction=0.25)
    budget = 8.0
    cfg = TrainConfig(student="test_resnet", image_size=16, batch_size=6, num_workers=0, lr=0.05, warmup_epochs=0.5,
                      out_dir=str(tmp_path / "runs"), name="run", budget_s=budget)
    t0 = time.perf_counter()
    run = train(data, TeacherConfig(), cfg)
    wall = time.perf_counter() - t0
    m = json.loads((run / "metrics.json").read_text())
    assert m["budget_epochs"] == m["epochs_completed"] >= 2  # many short epochs fit in 8 s
    assert abs(m["elapsed_s"] - budget) <= 0.15 * budget, (m["elapsed_s"], m["budget_epochs"])
    assert wall < budget + 10  # setup and the final write are outside the budget, and short
    # The schedule was laid out to the planned epochs: the learning rate ends near 0.
    assert m["history"][-1]["lr"] < 0.05 * 0.05


def test_report_says_when_a_slower_machine_got_a_smaller_schedule() -> None:
    from edgedistill.pipelines.report import plan_section

    kd = {"budget_s": 300.0, "budget_epochs": 5, "budget_step_s": 0.1, "epochs_completed": 5, "elapsed_s": 290.0,
          "reference_epochs": 12}
    slow = "\n".join(plan_section({"table": "", "deploy_batch": 8, "budgets": {"kd": kd}}))
    assert "`kd`: a budget of 5.0 min, 100 ms per step: 5 epochs planned, 5 trained" in slow
    assert "A smaller schedule than on the machine this recipe was tuned on (12 epochs there)" in slow
    fast = "\n".join(plan_section({"table": "", "deploy_batch": 8,
                                            "budgets": {"kd": {**kd, "epochs_completed": 14}}}))
    assert "smaller schedule" not in fast and "trained 12 epochs in this budget" in fast
