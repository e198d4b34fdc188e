"""create_student: output shapes, the small-input stem, local weights, helpful errors."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from edgedistill.errors import ConfigError, WeightsNotFoundError
from edgedistill.students import create_student


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
