"""The reference tutorial's published figures (NVIDIA-AI-IOT/jetson-intro-to-distillation), the one home of them.

Shown beside our numbers and always labelled as the tutorial's: they were measured on STL10
and a Jetson Orin Nano, with checkpoints selected on the test set. Grid rows and teacher
heads name the tutorial run they reproduce (``published: <run name>``).
"""

from __future__ import annotations

from edgedistill.errors import ConfigError

SOURCE = "jetson-intro-to-distillation (NVIDIA-AI-IOT), STL10 test accuracy"

ACCURACY: dict[str, tuple[str, float]] = {
    # run name: (description, STL10 test accuracy %)
    "teacher_text": ("teacher zero-shot (OpenCLIP ViT-B-32, text prompts)", 96.68),
    "teacher_linear": ("teacher linear probe (5k labels)", 98.57),
    "resnet18_from_scratch": ("resnet18 from scratch (5k labels)", 57.93),
    "resnet18_text_train": ("resnet18 response KD, labeled only (text head)", 44.04),
    "resnet18_linear_train": ("resnet18 response KD, labeled only (linear head)", 60.65),
    "resnet18_text_train_unlabeled": ("resnet18 response KD, + unlabeled (text head)", 94.32),
    "resnet18_linear_train_unlabeled": ("resnet18 response KD, + unlabeled (linear head)", 96.88),
    "resnet34_linear_train_unlabeled": ("resnet34 response KD, + unlabeled (linear head)", 96.69),
    "resnet50_linear_train_unlabeled": ("resnet50 response KD, + unlabeled (linear head)", 96.76),
    "resnet18_embedding_text_train_unlabeled": ("resnet18 feature KD, + unlabeled (text head)", 94.575),
    "resnet18_embedding_linear_train_unlabeled": ("resnet18 feature KD, + unlabeled (linear head)", 96.912),
}

DEPLOY = [
    # Jetson Orin Nano, TensorRT FP16, batch 8, 224x224.
    {"model": "teacher", "arch": "OpenCLIP ViT-B-32", "runtime": "Jetson Orin Nano TensorRT (tutorial, reference)",
     "precision": "fp16", "batch": 8, "resolution": 224, "throughput_ips": 335.8, "latency_ms_p50": 23.82, "peak_mem_mb": 1087.0},
    {"model": "student", "arch": "resnet18", "runtime": "Jetson Orin Nano TensorRT (tutorial, reference)",
     "precision": "fp16", "batch": 8, "resolution": 224, "throughput_ips": 1420.2, "latency_ms_p50": 5.97, "peak_mem_mb": 315.0},
]
RATIOS = {"throughput": 4.2, "memory": 3.45}


def published(name: str | None) -> float | None:
    """The published accuracy (%) of a tutorial run, None for None.

    Raises:
        ConfigError: an unknown run name (the valid ones are listed).
    """
    if name is None:
        return None
    if name not in ACCURACY:
        raise ConfigError(f"Unknown tutorial run {name!r}. Valid: {', '.join(ACCURACY)}")
    return ACCURACY[name][1]
