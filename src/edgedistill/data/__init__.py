"""Data: sources (one image collection each), splits carved from them, and transforms.

See docs/design.md, "data/ — sources and splits".
"""

from edgedistill.data.sources import (
    BadImageError,
    CIFAR10Source,
    FashionMNISTSource,
    ImageFolderSource,
    Source,
    STL10Binary,
    UnlabeledImages,
    extract_demo,
)
from edgedistill.data.splits import (
    BadImageWarning,
    DataSplits,
    SplitDataset,
    SplitPart,
    build_splits,
    collate_skip_bad,
)
from edgedistill.data.transforms import (
    NORMALIZE_CIFAR,
    NORMALIZE_IMAGENET,
    NORMALIZE_SIMPLE,
    AugParams,
    TrainTransform,
    ViewSpec,
    apply_aug,
    eval_transform,
    sample_aug_params,
    student_view,
)

__all__ = [
    "AugParams", "BadImageError", "BadImageWarning", "CIFAR10Source", "DataSplits", "FashionMNISTSource",
    "ImageFolderSource", "NORMALIZE_CIFAR", "NORMALIZE_IMAGENET", "NORMALIZE_SIMPLE", "STL10Binary", "Source",
    "SplitDataset", "SplitPart", "TrainTransform", "UnlabeledImages", "ViewSpec", "apply_aug", "build_splits",
    "collate_skip_bad", "eval_transform", "extract_demo", "sample_aug_params", "student_view",
]
