"""bench: child-process measurements of tiny ONNX models, ratios, and the JSON/Markdown/PNG outputs."""

from __future__ import annotations

import json

import open_clip
import pytest
import torch

from edgedistill import bench as b
from edgedistill import export as ex
from edgedistill.errors import ConfigError

TINY_CLIP = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
             "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


@pytest.fixture(scope="module")
def entries(tmp_path_factory):
    """A "student" (timm resnet18, about 30 MB ONNX) and a tiny open_clip 'teacher' (about 0.5 MB)."""
    import timm

    d = tmp_path_factory.mktemp("bench")
    student = timm.create_model("resnet18", num_classes=10).eval()
    meta = {"role": "student", "arch": "resnet18", "outputs": ["logits"], "view": ex.view_dict({"image_size": 32}),
            "dynamic_hw": True}
    s_path = ex.export_onnx(ex.DeployModel(student), d / "student.onnx", image_size=32, output_names=["logits"],
                            metadata=meta, dynamic_hw=True)
    s = b.BenchEntry(model="student", arch="resnet18", onnx={"fp32": str(s_path)}, resolutions=(32,), native_resolution=32)
    t = b.tutorial_teacher_entry(d, "tiny-deploy", TINY_CLIP)
    return s, t


def test_bench_rows_ratios_and_files(entries, tmp_path):
    s, t = entries
    rows = b.bench_models([s, t], batch_sizes=(2,), warmup=1, iters=3, threads=1, runtimes=("onnxruntime",), log=lambda m: None)
    assert [(r["model"], r["batch"], r["resolution"]) for r in rows] == [("student", 2, 32), ("tutorial_teacher", 2, 32)]
    for r in rows:
        assert r["throughput_ips"] > 0 and r["latency_ms_p95"] >= r["latency_ms_p50"] > 0
        assert r["precision"] == "fp32" and r["runtime"] == "onnxruntime"
    by = {r["model"]: r for r in rows}
    # Memory is measured per child: ~30 MB of resnet18 weights (random init: zeroed convs deduplicated)
    # must show up, the 0.5 MB tower must not.
    assert by["student"]["peak_mem_mb"] > 25 > by["tutorial_teacher"]["peak_mem_mb"]
    assert by["student"]["file_mb"] > 25 > by["tutorial_teacher"]["file_mb"]
    report = b.write_bench(rows, tmp_path, notes=["tensorrt not run: test"])
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(rows)) and saved["machine"]["cores"] >= 1
    (ratio,) = report["ratios"]
    assert ratio["speedup"] == pytest.approx(by["student"]["throughput_ips"] / by["tutorial_teacher"]["throughput_ips"])
    assert ratio["memory_ratio"] == pytest.approx(by["tutorial_teacher"]["peak_mem_mb"] / by["student"]["peak_mem_mb"])
    md = (tmp_path / "bench.md").read_text()
    assert "Jetson Orin Nano" in md and "335.8" in md and "reference" in md
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ratio_at_native_resolution():
    row = dict(runtime="onnxruntime", precision="fp32", batch=8, latency_ms_p50=1.0, latency_ms_p95=1.0, file_mb=1.0)
    rows = [{**row, "model": "student", "arch": "s", "resolution": 32, "native": True, "throughput_ips": 800.0, "peak_mem_mb": 10.0},
            {**row, "model": "student", "arch": "s", "resolution": 224, "native": False, "throughput_ips": 100.0, "peak_mem_mb": 20.0},
            {**row, "model": "teacher", "arch": "t", "resolution": 224, "native": True, "throughput_ips": 50.0, "peak_mem_mb": 80.0}]
    ratios = {q["comparison"]: q for q in b.bench_ratios(rows)}
    assert ratios["same_resolution"]["speedup"] == pytest.approx(2.0) and ratios["same_resolution"]["memory_ratio"] == pytest.approx(4.0)
    assert ratios["native_resolution"]["speedup"] == pytest.approx(16.0) and ratios["native_resolution"]["student_resolution"] == 32


@pytest.mark.slow  # a child importing torch + open_clip: ~10 s on 2 busy cores
def test_pytorch_eager_child(entries):
    _, t = entries
    (row,) = b.bench_models([t], batch_sizes=(1,), warmup=0, iters=2, threads=1, runtimes=("pytorch",), log=lambda m: None)
    assert row["runtime"] == "pytorch" and row["throughput_ips"] > 0 and row["file_mb"] is None


def test_unavailable_runtime_skipped_and_bad_runtime_rejected(entries):
    _, t = entries
    logged = []
    rows = b.bench_models([t], batch_sizes=(1,), iters=1, runtimes=("tensorrt",) if not torch.cuda.is_available() else (),
                          log=logged.append)
    assert rows == [] and (torch.cuda.is_available() or "no CUDA GPU" in logged[0])
    with pytest.raises(ConfigError, match="Unknown runtime"):
        b.bench_models([t], runtimes=("tflite",))
