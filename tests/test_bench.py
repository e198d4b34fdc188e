"""bench: child-process measurements of tiny ONNX models, ratios, and the JSON/Markdown/PNG outputs."""

from __future__ import annotations

import json

import onnxruntime
import pytest
import torch

from conftest import TINY, TINY_CLIP
from edgedistill import storage
from edgedistill.data.views import ViewSpec
from edgedistill.deploy import bench as b
from edgedistill.deploy.export import DeployModel, export_onnx
from edgedistill.deploy.runtime import DeployMeta
from edgedistill.errors import ConfigError

VIEW = ViewSpec(32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


@pytest.fixture(scope="module")
def entries(tmp_path_factory):
    """A "student" (timm resnet18, about 45 MB ONNX) and a tiny open_clip 'teacher' (well under 1 MB)."""
    import timm

    d = tmp_path_factory.mktemp("bench")
    torch.manual_seed(0)
    student = timm.create_model("resnet18", num_classes=10).eval()
    meta = DeployMeta(role="student", arch="resnet18", outputs=["logits"], view=VIEW.to_dict(), dynamic_hw=True)
    s_path, _ = export_onnx(DeployModel(student), d / "student.onnx", meta=meta)
    s = b.BenchEntry(model="student", arch="resnet18", onnx={"fp32": str(s_path)}, resolutions=(32,), native_resolution=32)
    t = b.tutorial_teacher_entry(d, TINY, TINY_CLIP)
    return s, t


@pytest.fixture
def student_run(tmp_path):
    """A training run directory of a random-init tiny student (student.safetensors + student.json)."""
    from edgedistill.students import create_student

    run = tmp_path / "run"
    torch.manual_seed(0)
    storage.save_safetensors(run / "student.safetensors", create_student("test_resnet", 3).state_dict())
    storage.write_json(run / "student.json", {"arch": "test_resnet", "num_outputs": 3, "class_names": ["a", "b", "c"],
                                              "view": VIEW.to_dict()})
    return run


def _no_child(job, timeout):
    raise AssertionError(f"a benchmark child was started for {job['runtime']}")


def test_bench_rows_ratios_and_files(entries, tmp_path):
    s, t = entries
    assert t.arch == TINY and t.onnx["fp32"].endswith(f"{TINY}.onnx") and t.resolutions == (32,)
    rows = b.bench_models([s, t], batch_sizes=(2,), warmup=1, iters=3, threads=1, runtimes=("onnxruntime",), log=lambda m: None)
    assert [(r["model"], r["batch"], r["resolution"]) for r in rows] == [("student", 2, 32), ("tutorial_teacher", 2, 32)]
    for r in rows:
        assert r["throughput_ips"] > 0 and r["latency_ms_p95"] >= r["latency_ms_p50"] > 0
        assert r["throughput_ips"] == pytest.approx(2 * 1000.0 / r["latency_ms_p50"])
        assert r["precision"] == "fp32" and r["runtime"] == "onnxruntime" and r["native"] and r["threads"] == 1
    by = {r["model"]: r for r in rows}
    # Memory is measured per child: ~45 MB of resnet18 weights must show up, the tiny tower's must not.
    assert by["student"]["peak_mem_mb"] > 25 > by["tutorial_teacher"]["peak_mem_mb"]
    assert by["student"]["file_mb"] > 25 > by["tutorial_teacher"]["file_mb"]
    report = b.write_bench(rows, tmp_path, notes=["tensorrt not run: test"])
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(rows)) and saved["machine"]["cores"] >= 1
    assert saved["ratios"] == json.loads(json.dumps(report["ratios"])) and saved["notes"] == ["tensorrt not run: test"]
    speedup = by["student"]["throughput_ips"] / by["tutorial_teacher"]["throughput_ips"]
    memory = by["tutorial_teacher"]["peak_mem_mb"] / by["student"]["peak_mem_mb"]
    (ratio,) = report["ratios"]
    assert ratio["comparison"] == "same_resolution" and ratio["teacher"] == TINY
    assert ratio["speedup"] == pytest.approx(speedup) and ratio["memory_ratio"] == pytest.approx(memory)
    # bench.md shows the measured numbers (as the table formats them) and the computed ratio, not canned text.
    md = (tmp_path / "bench.md").read_text().splitlines()
    for r in rows:
        assert (f"| {r['model']} | {r['arch']} | onnxruntime | fp32 | 2 | 32 | {r['throughput_ips']:.1f} | "
                f"{r['latency_ms_p50']:.2f} | {r['latency_ms_p95']:.2f} | {r['peak_mem_mb']:.1f} | {r['file_mb']:.1f} |") in md
    assert f"| resnet18 | {TINY} | onnxruntime | fp32 | 2 | 32/32 | {speedup:.2f}x | {memory:.2f}x |" in md
    assert "- tensorrt not run: test" in md
    assert md.index("## Measured") < md.index("## Student vs teacher (higher is better for the student)")
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ratio_at_native_resolution():
    row = dict(runtime="onnxruntime", precision="fp32", batch=8, latency_ms_p50=1.0, latency_ms_p95=1.0, file_mb=1.0)
    rows = [{**row, "model": "student", "arch": "s", "resolution": 32, "native": True, "throughput_ips": 800.0, "peak_mem_mb": 10.0},
            {**row, "model": "student", "arch": "s", "resolution": 224, "native": False, "throughput_ips": 100.0, "peak_mem_mb": 20.0},
            {**row, "model": "teacher", "arch": "t", "resolution": 224, "native": True, "throughput_ips": 50.0, "peak_mem_mb": 80.0},
            {**row, "model": "teacher", "arch": "t", "resolution": 224, "native": True, "throughput_ips": 5.0, "peak_mem_mb": 80.0,
             "batch": 1}]  # another batch size: never compared with batch 8
    ratios = {q["comparison"]: q for q in b.bench_ratios(rows)}
    assert len(b.bench_ratios(rows)) == 2
    assert ratios["same_resolution"]["speedup"] == pytest.approx(2.0) and ratios["same_resolution"]["memory_ratio"] == pytest.approx(4.0)
    assert ratios["native_resolution"]["speedup"] == pytest.approx(16.0) and ratios["native_resolution"]["student_resolution"] == 32


@pytest.mark.slow  # a child importing torch + open_clip: ~10 s on 2 busy cores
def test_pytorch_eager_child(entries):
    _, t = entries
    (row,) = b.bench_models([t], batch_sizes=(1,), warmup=0, iters=2, threads=1, runtimes=("pytorch",), log=lambda m: None)
    assert row["runtime"] == "pytorch" and row["throughput_ips"] > 0 and row["file_mb"] is None


def test_unavailable_runtime_skipped_with_reason(entries, monkeypatch):
    _, t = entries
    # A machine without a GPU, whatever this one has: the CUDA runtimes are skipped, the CPU one still runs.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    logged = []
    rows = b.bench_models([t], batch_sizes=(1,), warmup=0, iters=1, threads=1,
                          runtimes=("tensorrt", "onnxruntime-cuda", "pytorch-cuda", "onnxruntime"), log=logged.append)
    assert [(r["runtime"], r["model"]) for r in rows] == [("onnxruntime", "tutorial_teacher")]
    assert rows[0]["throughput_ips"] > 0
    assert logged[:3] == [
        "skipping runtime tensorrt: no CUDA GPU is visible",
        "skipping runtime onnxruntime-cuda: ONNX Runtime has no CUDAExecutionProvider here (available: CPUExecutionProvider)",
        "skipping runtime pytorch-cuda: no CUDA GPU is visible",
    ]
    assert len(logged) == 4 and "onnxruntime" in logged[3]  # the measured row's line


def test_bad_runtime_precision_or_batch_rejected_before_any_work(entries, student_run, tmp_path, monkeypatch):
    _, t = entries
    monkeypatch.setattr(b, "_run_child", _no_child)
    bad = [({"runtimes": ("onnxruntime", "tflite")}, "Unknown runtime"), ({"precisions": ("fp32", "int4")}, "Unknown precision"),
           ({"batch_sizes": (1, 0)}, "batches >= 1"), ({"batch_sizes": ()}, "batches >= 1"), ({"iters": 0}, "iters >= 1"),
           ({"warmup": -1}, "warmup >= 0")]
    for kwargs, message in bad:
        with pytest.raises(ConfigError, match=message):
            b.bench_models([t], **{"runtimes": ("onnxruntime",), **kwargs})
    # bench_command refuses them before exporting the student run directory (or the tutorial teacher).
    out = tmp_path / "out"
    for kwargs, message in [({"runtimes": ["tflite"]}, "Unknown runtime"),
                            ({"precisions": ["int4"]}, "Unknown precision"), ({"batch_sizes": [0]}, "batches >= 1")]:
        with pytest.raises(ConfigError, match=message):
            b.bench_command(str(student_run), out=str(out), **kwargs)
        assert not (out / "exports").exists() and not out.exists()


def test_bench_command_exports_a_run_directory(student_run, tmp_path, capsys):
    out = tmp_path / "out"
    b.bench_command(str(student_run), tutorial_teacher=False, out=str(out), batch_sizes=[1], runtimes=["onnxruntime"],
                    precisions=["fp32"], warmup=0, iters=1, threads=1)
    assert (out / "exports" / "student" / "model.onnx").is_file()
    saved = storage.read_json(out / "bench.json")
    # A CNN student runs at its native size and at the tutorial's 224.
    assert [(r["arch"], r["resolution"], r["native"]) for r in saved["rows"]] == [("test_resnet", 32, True), ("test_resnet", 224, False)]
    assert saved["ratios"] == [] and "## Measured" in capsys.readouterr().out


def test_a_new_runtime_is_one_registry_line(entries, monkeypatch):
    """A runtime registered at run time (ONNX Runtime's CPU provider under another name) runs in the benchmark
    children, which rebuild it from the job, not from their own registry; a duplicate name is refused."""
    from edgedistill.deploy import engines

    monkeypatch.setattr(engines, "RUNTIMES", dict(engines.RUNTIMES))
    monkeypatch.setattr(b, "RUNTIMES", engines.RUNTIMES)
    engines.register_runtime("ort-plugin", engines.Runtime("onnxruntime", "onnx", ("CPUExecutionProvider",)))
    with pytest.raises(ConfigError, match="'ort-plugin' is already registered"):
        engines.register_runtime("ort-plugin", engines.Runtime("onnxruntime", "onnx", ("CPUExecutionProvider",)))
    s, _ = entries
    rows = b.bench_models([s], batch_sizes=(1,), warmup=0, iters=1, threads=1, runtimes=("ort-plugin",),
                          precisions=("fp32",), log=lambda m: None)
    assert [(r["runtime"], r["precision"]) for r in rows] == [("ort-plugin", "fp32")] and rows[0]["throughput_ips"] > 0
