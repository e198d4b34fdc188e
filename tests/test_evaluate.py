"""Metrics (golden numbers), the confusion PNG, and teacher_command end to end on a tiny ImageFolder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edgedistill.errors import DataError, EdgeDistillError
from edgedistill.evaluate import evaluate_logits, plot_confusion


def test_evaluate_logits_golden():
    logits = torch.tensor([[2.0, 1, 0], [0, 3, 1], [1, 0, 2], [3, 0, 0], [0, 0, 9]])
    labels = torch.tensor([0, 1, 1, 0, -1])  # the last row is hidden (-1): ignored
    r = evaluate_logits(logits, labels, ["a", "b", "c"])
    assert r["acc"] == pytest.approx(0.75)
    assert r["n"] == 4
    assert r["per_class"] == {"a": 1.0, "b": 0.5, "c": None}  # c has no samples
    assert r["confusion"] == [[2, 0, 0], [0, 1, 1], [0, 0, 0]]


def test_evaluate_logits_numpy_and_errors():
    r = evaluate_logits(np.eye(3, dtype=np.float16), np.array([0, 1, 0]), ["x", "y", "z"])
    assert r["acc"] == pytest.approx(2 / 3)
    with pytest.raises(EdgeDistillError, match="3 classes"):
        evaluate_logits(np.zeros((2, 4)), np.array([0, 1]), ["x", "y", "z"])
    with pytest.raises(DataError, match="no labeled"):
        evaluate_logits(np.zeros((2, 3)), np.array([-1, -1]), ["x", "y", "z"])


def test_plot_confusion_writes_png(tmp_path):
    path = plot_confusion([[3, 1], [0, 4]], ["cat", "dog"], tmp_path / "sub" / "cm.png", "title")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(path.parent.glob(".*.tmp"))  # atomic write left no temp file
