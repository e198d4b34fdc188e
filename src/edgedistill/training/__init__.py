"""Student training: the LightningModule, the data module, callbacks, checkpoints, and ``train`` (fit.py)."""

from edgedistill.training.fit import config_diffs, train

__all__ = ["config_diffs", "train"]
