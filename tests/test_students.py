"""create_student: output shapes, the small-input stem, timm kwargs, local weights; load_student; helpful errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file
from torch import nn

from edgedistill.data.views import ViewSpec, student_view
from edgedistill.errors import ConfigError, EdgeDistillError, WeightsNotFoundError
from edgedistill.students import StudentManifest, count_parameters, create_student, load_student


@pytest.mark.parametrize("arch", ["test_resnet", "test_efficientnet"])
def test_logits_shape(arch: str) -> None:
    model = create_student(arch, 10).eval()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_embedding_student_has_teacher_width() -> None:
    model = create_student("test_resnet", 512).eval()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 512)


def test_small_input_stem_keeps_resolution() -> None:
    std = create_student("resnet18", 10)
    small = create_student("resnet18", 10, small_input=True)
    assert small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1)
    assert isinstance(small.maxpool, nn.Identity)
    x = torch.randn(1, 3, 32, 32)
    # 32 px: standard stem ends at 1x1, the CIFAR stem at 4x4 (stride 8 instead of 32)
    assert std.eval().forward_features(x).shape[-2:] == (1, 1)
    assert small.eval().forward_features(x).shape[-2:] == (4, 4)
    assert small(x).shape == (1, 10)


def test_small_input_deep_stem() -> None:
    model = create_student("test_resnet", 10, small_input=True).eval()
    first = next(m for m in model.conv1.modules() if isinstance(m, nn.Conv2d))
    assert first.stride == (1, 1) and isinstance(model.maxpool, nn.Identity)
    assert model.forward_features(torch.randn(1, 3, 32, 32)).shape[-1] == 4


def test_small_input_unsupported_arch_names_it() -> None:
    with pytest.raises(ConfigError, match="test_efficientnet.*ResNet"):
        create_student("test_efficientnet", 10, small_input=True)


def test_unknown_arch_lists_close_matches() -> None:
    with pytest.raises(ConfigError, match=r"'resnet19'.*resnet18"):
        create_student("resnet19", 10)


def test_pretrained_loads_backbone_not_classifier(tmp_path) -> None:
    src = timm.create_model("test_resnet", num_classes=1000)
    path = tmp_path / "w.pth"
    torch.save(src.state_dict(), path)
    model = create_student("test_resnet", 7, pretrained=str(path))
    assert torch.equal(model.conv1[0].weight, src.conv1[0].weight)
    assert model.fc.weight.shape == (7, src.fc.in_features)
    with pytest.raises(WeightsNotFoundError, match="missing.pth"):
        create_student("test_resnet", 7, pretrained=str(tmp_path / "missing.pth"))
    other = tmp_path / "other.pth"
    torch.save({"foo.weight": torch.zeros(3)}, other)
    with pytest.raises(WeightsNotFoundError, match="shares no weights"):
        create_student("test_resnet", 7, pretrained=str(other))


def test_kwargs_reach_timm_create_model() -> None:
    narrow = create_student("resnet10t", 10, kwargs={"channels": (16, 32, 64, 128)})
    assert narrow.fc.in_features == 128 and narrow.layer1[0].conv1.out_channels == 16
    assert narrow.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    assert count_parameters(narrow) < count_parameters(create_student("resnet10t", 10)) / 5
    with pytest.raises(ConfigError, match=r"train.student_kwargs=\{'no_such_arg': 1\} do not fit student 'test_resnet'"):
        create_student("test_resnet", 10, kwargs={"no_such_arg": 1})
    with pytest.raises(ConfigError, match="num_outputs=0 must be >= 1"):
        create_student("test_resnet", 0)


def _save_student(folder: Path, model: nn.Module, **manifest) -> StudentManifest:
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "student.safetensors")
    m = StudentManifest(**{"arch": "resnet10t", "num_outputs": 5, "class_names": list("abcde"),
                           "view": student_view(32).to_dict(), **manifest})
    m.save(folder / "student.json")
    return m


def test_load_student_round_trip(tmp_path: Path) -> None:
    kwargs = {"channels": [16, 32, 64, 128]}
    torch.manual_seed(0)
    model = create_student("resnet10t", 5, small_input=True, kwargs=kwargs).eval()
    saved = _save_student(tmp_path / "run", model, small_input=True, kwargs=kwargs, target="logits",
                          teacher={"kind": "openclip", "fingerprint": "abc"})
    x = torch.randn(2, 3, 32, 32)
    for path in (tmp_path / "run", tmp_path / "run" / "student.safetensors"):
        loaded, manifest = load_student(path)
        assert manifest == saved and isinstance(manifest, StudentManifest) and not loaded.training
        assert ViewSpec(**manifest.view) == student_view(32)
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), model(x), atol=0, rtol=0)


def test_load_student_errors_name_the_file(tmp_path: Path) -> None:
    model = create_student("resnet10t", 5).eval()
    _save_student(tmp_path / "run", model)
    with pytest.raises(EdgeDistillError, match="Not a student model: .*model.onnx"):
        load_student(tmp_path / "model.onnx")
    with pytest.raises(EdgeDistillError, match="student.safetensors.*does not exist"):
        load_student(tmp_path)  # a folder without the student files
    wrong = json.loads((tmp_path / "run" / "student.json").read_text())
    (tmp_path / "run" / "student.json").write_text(json.dumps({**wrong, "num_outputs": 7}))
    with pytest.raises(EdgeDistillError, match="does not fit the resnet10t student of student.json"):
        load_student(tmp_path / "run")
    (tmp_path / "run" / "student.json").write_text(json.dumps({**wrong, "format": 99}))
    with pytest.raises(EdgeDistillError, match="is not a valid student manifest.*format 99"):
        load_student(tmp_path / "run")
    (tmp_path / "run" / "student.json").write_text(json.dumps({**wrong, "optimizer": "sgd"}))
    with pytest.raises(EdgeDistillError, match=r"is not a valid student manifest.*Unknown key\(s\) \['optimizer'\]"):
        load_student(tmp_path / "run")
