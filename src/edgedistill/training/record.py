"""A run directory's record, read and written one way: its ``config.yaml`` and whether it holds a checkpoint.

``config.yaml`` holds the resolved ``data``, ``teacher`` and ``train`` configs a run (or an optimize
stage) was trained with. Training writes it and checks a resume against it, ``optimize`` rebuilds
the run's fine-tune from it, ``export`` and ``predict`` read the teacher and data from it: all
through this module.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from edgedistill import storage
from edgedistill.config import RECORD_IGNORED, DataConfig, TeacherConfig, TrainConfig, asdict, from_dict
from edgedistill.errors import ConfigError

RUN_CONFIG = "config.yaml"
CHECKPOINTS = "checkpoints"


def record_of(data: DataConfig, teacher: TeacherConfig, cfg: TrainConfig) -> dict[str, dict]:
    """The configs as written to ``config.yaml``."""
    return {"data": asdict(data), "teacher": asdict(teacher), "train": asdict(cfg)}


def write_run_config(run_dir: Path, data: DataConfig, teacher: TeacherConfig, cfg: TrainConfig) -> Path:
    """Write ``run_dir/config.yaml`` (atomically)."""
    path = Path(run_dir) / RUN_CONFIG
    storage.write_text(path, yaml.safe_dump(record_of(data, teacher, cfg), sort_keys=False))
    return path


def read_run_record(run_dir: str | os.PathLike) -> dict:
    """The sections (``data``, ``teacher``, ``train``) of ``run_dir/config.yaml`` as plain data; ``{}`` when there
    is none (``storage.run_dir_of`` finds the run of a file in it).

    Raises:
        ConfigError: the file exists but is damaged (not YAML, not a mapping).
    """
    cfg_path = Path(run_dir) / RUN_CONFIG
    if not cfg_path.is_file():
        return {}
    try:
        record = yaml.safe_load(cfg_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"{cfg_path} is damaged ({type(e).__name__}); restore it, or move the run directory away "
                          "to start over") from None
    if record is not None and not isinstance(record, dict):
        raise ConfigError(f"{cfg_path} is damaged (not a run record); restore it, or move the run directory away to "
                          "start over")
    return record or {}


def read_run_configs(run_dir: str | os.PathLike) -> tuple[DataConfig, TeacherConfig, TrainConfig]:
    """The typed configs of ``run_dir/config.yaml``, each validated as on the command line.

    Raises:
        ConfigError: no config.yaml, a damaged one, or a section that is not a valid config (names the key).
    """
    run_dir = Path(run_dir)
    record = read_run_record(run_dir)
    if not record:
        raise ConfigError(f"{str(run_dir)!r} has no {RUN_CONFIG}; give the run directory 'edgedistill train' wrote")
    where = str(run_dir / RUN_CONFIG)
    return (from_dict(DataConfig, record.get("data"), f"{where}: data"),
            from_dict(TeacherConfig, record.get("teacher"), f"{where}: teacher"),
            from_dict(TrainConfig, record.get("train"), f"{where}: train"))


def config_diffs(run_dir: Path, data: DataConfig, teacher: TeacherConfig, cfg: TrainConfig,
                 ignore: tuple[str, ...] = RECORD_IGNORED) -> list[str]:
    """Settings that differ from those recorded in ``run_dir/config.yaml`` (``section.key: old -> new``)."""
    old = read_run_record(run_dir)
    new = record_of(data, teacher, cfg)
    return [f"{sec}.{k}: {(old.get(sec) or {}).get(k)!r} -> {v!r}" for sec, d in new.items() for k, v in d.items()
            if old and (old.get(sec) or {}).get(k) != v and k not in ignore]


def has_checkpoint(run_dir: str | os.PathLike) -> bool:
    """Whether a run (or optimize stage) directory holds a Lightning checkpoint to resume from."""
    return any((Path(run_dir) / CHECKPOINTS).glob("*.ckpt"))  # a missing folder globs to nothing


__all__ = ["CHECKPOINTS", "RUN_CONFIG", "config_diffs", "has_checkpoint", "read_run_configs", "read_run_record",
           "record_of", "write_run_config"]
