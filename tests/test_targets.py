"""Deploy targets besides ONNX Runtime (OpenVINO FP32 + NNCF INT8, ExecuTorch XNNPACK), the race, and the model card.

One tiny student trained on class-coloured images is exported once with every target; each target's outputs
are checked against PyTorch independently of the exporter's own check, then raced and carded.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import re

import numpy as np
import pytest
import torch

from conftest import IMAGE_FOLDER_COLOURS, save_tiny_run
from edgedistill import storage
from edgedistill.config import DataConfig
from edgedistill.data.views import ViewSpec, preprocess
from edgedistill.deploy import export as ex

CLASSES = ["cat", "dog", "ship"]
VIEW = {"image_size": 32, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "interpolation": "bilinear"}
HAVE_OPENVINO = importlib.util.find_spec("openvino") is not None and importlib.util.find_spec("nncf") is not None
HAVE_EXECUTORCH = importlib.util.find_spec("executorch") is not None
pytestmark = pytest.mark.skipif(not (HAVE_OPENVINO and HAVE_EXECUTORCH),
                                reason="needs pip install 'edgedistill[openvino,executorch]'")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """(export dir, trained model, data config) of a test_resnet exported with int8, OpenVINO and ExecuTorch."""
    from PIL import Image


    d = tmp_path_factory.mktemp("targets")
    rng = np.random.default_rng(0)
    root = d / "folder"
    for c in CLASSES:
        (root / c).mkdir(parents=True)
        for k in range(8):
            arr = np.clip(np.array(IMAGE_FOLDER_COLOURS[c]) + rng.integers(-30, 30, (32, 32, 3)), 0, 255)
            Image.fromarray(arr.astype(np.uint8)).save(root / c / f"{k:02d}.png")
    spec = ViewSpec(**VIEW)
    train = [(preprocess(Image.open(p), spec), i) for i, c in enumerate(CLASSES) for p in sorted((root / c).glob("*.png"))]
    run = d / "run"
    model = save_tiny_run(run, train, CLASSES, VIEW, target="labels", small_input=False)
    data = DataConfig(dataset="imagefolder", root=str(root), val_fraction=0.34)
    ex.export_command(str(run), out=str(d / "out"), int8=True, calib_data=data, calib_size=12, openvino=True,
                      executorch=True)
    return d / "out" / "student", model.eval(), data


def test_targets_match_pytorch_and_report_accuracy(bundle):
    from edgedistill.deploy.engines.executorch import load_pte
    from edgedistill.deploy.engines.openvino import compile_openvino

    out, model, data = bundle
    report = storage.read_json(out / "export.json")
    assert report["files"]["openvino_int8"] == "model.openvino.int8.xml" and report["files"]["executorch_fp32"] == "model.pte"
    assert report["files"]["executorch_int8"] == "model.int8.pte"
    assert (out / "model.openvino.int8.bin").is_file() and not list(out.glob(".*tmp*"))
    assert set(report["parity_targets"]) == {"openvino_fp32", "executorch_fp32"}
    assert all(v < 1e-3 for d in report["parity_targets"].values() for v in d.values())
    # Independently: each target's file on fresh inputs against PyTorch.
    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ref = model(x).numpy()
    for run in (compile_openvino(out / "model.onnx"), load_pte(out / "model.pte")):
        np.testing.assert_allclose(run(x.numpy())[0], ref, atol=1e-3)
    # A batch above the program's bounded input (15 images) runs in chunks.
    np.testing.assert_allclose(load_pte(out / "model.pte")(np.tile(x.numpy(), (4, 1, 1, 1)))[0], np.tile(ref, (4, 1)),
                               atol=1e-3)
    for run in (compile_openvino(out / "model.openvino.int8.xml"), load_pte(out / "model.int8.pte")):
        int8 = run(x.numpy())[0]
        assert np.abs(int8 - ref).max() > 1e-6  # really quantized (not the FP32 graph under another name)
        assert (int8.argmax(1) == ref.argmax(1)).mean() >= 0.8
    # Accuracy per target on the held-out split: FP32 targets equal ONNX Runtime's, INT8 within one image.
    val = ex.real_images(data, "val", VIEW)
    acc = report["accuracy"]
    assert acc["openvino_fp32"] == acc["fp32"] == acc["executorch_fp32"]
    assert abs(acc["openvino_int8"] - acc["fp32"]) <= 1 / len(val) + 1e-9
    assert abs(acc["executorch_int8"] - acc["fp32"]) <= 1 / len(val) + 1e-9


def test_a_target_that_differs_from_pytorch_is_refused(bundle, monkeypatch, tmp_path):
    from edgedistill.deploy import targets

    out, model, _ = bundle
    real = targets.openvino_runner
    monkeypatch.setattr(targets, "openvino_runner", lambda path: (lambda x: [o + 0.01 for o in real(path)(x)]))
    meta = ex.load_student_deploy(out.parent.parent / "run")[1]
    with pytest.raises(ex.ParityError, match="openvino fp32 .* does not match PyTorch"):
        ex.export_model(model, meta, tmp_path / "bad", openvino=True)


def test_a_model_a_target_cannot_run_is_recorded_and_left_out_of_the_race(bundle, monkeypatch, tmp_path):
    from edgedistill.deploy import bench as b
    from edgedistill.deploy import targets

    def refuses(path):
        def run(x):
            raise RuntimeError("Exception from src/plugins/intel_cpu/src/node.cpp:794:\n[CPU] AvgPool kernel too large")
        return run

    out, model, _ = bundle
    monkeypatch.setattr(targets, "openvino_runner", refuses)
    meta = ex.load_student_deploy(out.parent.parent / "run")[1]
    report = ex.export_model(model, meta, tmp_path / "e", openvino=True)
    assert "AvgPool kernel too large" in report["targets_unavailable"]["openvino"]
    assert "openvino cannot run this model" in (tmp_path / "e" / "README.md").read_text()
    entry = b.entry_from_export(tmp_path / "e", "student")
    assert entry.files_for("openvino") == {} and entry.files_for("onnx") == {"fp32": str(tmp_path / "e" / "model.onnx")}


def test_race_runs_every_target_and_names_the_fastest(bundle, tmp_path):
    from edgedistill.deploy import bench as b

    out, _, _ = bundle
    entry = b.entry_from_export(out, "student")
    assert entry.openvino == {"int8": str(out / "model.openvino.int8.xml")}
    assert entry.pte == {"fp32": str(out / "model.pte"), "int8": str(out / "model.int8.pte")}
    assert entry.resolutions == (32, 224)  # a CNN: any size; the ExecuTorch program runs only its own (static)
    rows = b.bench_models([entry], batch_sizes=(2,), warmup=1, iters=3, threads=1,
                          runtimes=("onnxruntime", "openvino", "executorch"), precisions=("fp32", "int8"),
                          log=lambda m: None)
    got = {(r["runtime"], r["precision"], r["resolution"]) for r in rows}
    assert got == {(rt, p, s) for rt in ("onnxruntime", "openvino") for p in ("fp32", "int8") for s in (32, 224)} | {
        ("executorch", "fp32", 32), ("executorch", "int8", 32)}
    rows = [r for r in rows if r["native"]]
    race = b.race_summary(rows)
    best = max(rows, key=lambda r: r["throughput_ips"])
    assert (race["runtime"], race["precision"]) == (best["runtime"], best["precision"])
    by = {(r["runtime"], r["precision"]): r["throughput_ips"] for r in rows}
    assert race["int8_vs_fp32"] == {rt: by[(rt, "int8")] / by[(rt, "fp32")]
                                    for rt in ("onnxruntime", "openvino", "executorch")}
    report = b.write_bench(rows, tmp_path)
    text = (tmp_path / "bench.md").read_text()
    assert f"**{race['runtime']} {race['precision'].upper()}**" in text and report["race"] == race


def _numbers(text: str) -> list[str]:
    return re.findall(r"\d[\d,]*\.?\d*", text)


def test_model_card_holds_the_run_numbers_and_no_others(bundle, tmp_path):
    from edgedistill.deploy import bench as b
    from edgedistill.deploy.card import pct, render_model_card

    out, _, _ = bundle
    export = storage.read_json(out / "export.json")
    card = (out / "README.md").read_text()
    # The export's own card: its accuracies, and no speed figure (the export measured none).
    for value in export["accuracy"].values():
        assert f"| {pct(value)} |" in card
    speed = card.split("## Speed and memory", 1)[1].split("## Preprocessing", 1)[0]
    assert _numbers(speed) == [] and "edgedistill bench --student" in speed
    # With the race's rows: every number in the speed table is one of the rows' measurements.
    rows = b.bench_models([dataclasses.replace(b.entry_from_export(out, "student"), resolutions=(32,))],
                          batch_sizes=(2,), warmup=0, iters=2, threads=1,
                          runtimes=("onnxruntime",), precisions=("fp32", "int8"), log=lambda m: None)
    run = {"teacher": "efficientnet_lite0:tf_efficientnet_lite0 at 96 px", "bench": rows, "race": b.race_summary(rows),
           "machine": {"cpu": "Test CPU", "cores": 2}, "data": {"dataset": "imagefolder", "counts": {"train": 16}}}
    card = render_model_card(export, run)
    assert "Distilled from: efficientnet_lite0:tf_efficientnet_lite0 at 96 px." in card and "imagefolder" in card
    table = [line for line in card.split("## Speed and memory", 1)[1].split("\n") if line.startswith("| onnxruntime")]
    assert len(table) == len(rows)
    for line, r in zip(table, rows):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells == [r["runtime"], r["precision"], str(r["batch"]), f"{r['throughput_ips']:.0f}",
                         f"{r['latency_ms_p50']:.2f}", f"{r['peak_mem_mb']:.0f}"]
    assert "Test CPU, 2 cores" in card
    # Preprocessing is the bundle's view.
    assert f"mean {VIEW['mean']} and std {VIEW['std']}" in card and "bilinear" in card
