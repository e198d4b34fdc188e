"""Data: image files and views (torch-free), sources, splits carved from them, and training transforms.

See docs/design.md, "data/". Names are imported lazily (PEP 562), so ``edgedistill.data.views``
and ``edgedistill.data.images`` stay importable without torch (the deploy runtime needs them).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "images": ("BadImageError", "IMAGE_EXTENSIONS", "decode_image", "list_images"),
    "views": ("NORMALIZE_CIFAR", "NORMALIZE_IMAGENET", "NORMALIZE_SIMPLE", "ViewSpec", "preprocess", "student_view"),
    "sources": ("CIFAR10Source", "FashionMNISTSource", "ImageFolderSource", "STL10Binary", "Source", "UnlabeledImages",
                "extract_demo"),
    "manifest": ("MANIFEST_COLUMNS", "manifest_sources", "read_manifest"),
    "splits": ("BadImageWarning", "DataSplits", "SplitDataset", "SplitPart", "build_splits", "collate_skip_bad"),
    "transforms": ("AugParams", "TrainTransform", "apply_aug", "eval_transform", "sample_aug_params"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'edgedistill.data' has no attribute {name!r}")
    return getattr(importlib.import_module(f"edgedistill.data.{_WHERE[name]}"), name)
