"""The registries: the one source of every pluggable choice (teachers, heads, losses, datasets, templates, runtimes).

Each registry maps a name to an entry, or to the entry's ``"module:attribute"`` path, imported
only when that name is used (open_clip alone takes seconds to import). A new teacher, head,
loss, dataset opener or prompt-template set is its own file plus one line here, or one
``register`` call from a plugin::

    from edgedistill.registry import HEADS, LOSSES, TEACHERS

    TEACHERS.register("my_teacher", my_factory)     # factory(TeacherConfig, torch.device) -> Teacher
    HEADS.register("my_head", MyHead)               # an nn.Module class with the head protocol (heads/)
    LOSSES.register("my_loss", my_loss)             # my_loss(StudentOutputs, TrainConfig) -> {"loss": ...}

The config validates its choice fields against these registries when it is constructed (not at
import), so a name registered later, by a plugin, is accepted; ``--help`` lists the live names.

Plugins (``load_plugins``) are modules that register entries when imported. Users name them by
module name or ``.py`` path in the ``plugins`` key of a config (``distill``, ``run``) or the
``--plugins`` flag of ``train``; installed packages may also declare the entry-point group
``edgedistill.plugins``, whose modules are imported the first time any registry is read.

This module imports neither torch nor any model library (the deploy runtime validates configs too).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from edgedistill.errors import ConfigError

ENTRY_POINT_GROUP = "edgedistill.plugins"
"""Installed packages list their plugin modules under this entry-point group."""


def _resolve(entry: Any) -> Any:
    if isinstance(entry, str) and ":" in entry:
        module, _, attr = entry.partition(":")
        return getattr(importlib.import_module(module), attr)
    return entry


class Registry:
    """Name -> entry (or its lazy ``"module:attribute"`` path); a duplicate name raises, an unknown one lists the valid.

    Args:
        what: What an entry is, for messages (``"teacher kind"``).
        entries: The built-in entries, in the order shown to users.
        home: Instead of ``entries``: the ``"module:attribute"`` of a dict that is the registry (a torch-free module
            owning its entries, e.g. the deployment runtimes); imported on first use.
    """

    def __init__(self, what: str, entries: Mapping[str, Any] | None = None, *, home: str | None = None) -> None:
        self.what = what
        self._entries: dict[str, Any] | None = dict(entries or {}) if home is None else None
        self._home = home

    @property
    def entries(self) -> dict[str, Any]:
        load_entry_point_plugins()
        if self._entries is None:
            self._entries = _resolve(self._home)
        return self._entries

    def names(self) -> list[str]:
        """The registered names, built-ins first."""
        return list(self.entries)

    def __contains__(self, name: object) -> bool:
        return name in self.entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, name: str) -> Any:
        """The entry of ``name`` (its module imported now, when registered by path).

        Raises:
            ConfigError: ``name`` is not registered.
        """
        if name not in self.entries:
            raise ConfigError(f"Unknown {self.what} {name!r}. Valid: {', '.join(self.names())}")
        entry = self.entries[name]
        if isinstance(entry, str) and ":" in entry:
            entry = self.entries[name] = _resolve(entry)
        return entry

    get = __getitem__

    def items(self) -> list[tuple[str, Any]]:
        """``(name, entry)`` pairs, every entry imported."""
        return [(name, self[name]) for name in self.names()]

    def register(self, name: str, entry: Any = None) -> Any:
        """Add ``name``; usable as ``REG.register("x", obj)`` or as a decorator ``@REG.register("x")``.

        Raises:
            ConfigError: ``name`` is taken (or not a non-empty string).
        """
        if entry is None:
            return lambda obj: self.register(name, obj)
        if not isinstance(name, str) or not name:
            raise ConfigError(f"A {self.what} needs a non-empty name, got {name!r}")
        if name in self.entries:
            raise ConfigError(f"{self.what.capitalize()} {name!r} is already registered")
        self.entries[name] = entry
        return entry

    def check(self, value: Any, flag: str, extra: Sequence[str] = ()) -> None:
        """Raise ``ConfigError('<flag>=<value> is invalid; valid: ...')`` unless ``value`` is a name (or in ``extra``)."""
        if not (isinstance(value, str) and (value in extra or value in self.entries)):  # a list or a number too
            valid = ", ".join([*extra, *self.names()])
            raise ConfigError(f"{flag}={value!r} is invalid; valid: {valid}")

    def __repr__(self) -> str:
        return f"Registry({self.what!r}: {', '.join(self.names()) if self._entries is not None else self._home})"


# ----------------------------------------------------------------------------- the registries (one line per entry)

TEACHERS = Registry("teacher kind", {
    "openclip": "edgedistill.teachers.openclip:openclip_from_config",
    "timm": "edgedistill.teachers.imagenet:timm_from_config",
    "efficientnet_lite0": "edgedistill.teachers.imagenet:lite0_from_config",
})
"""``TeacherConfig.kind`` -> ``factory(TeacherConfig, torch.device) -> Teacher``."""

HEADS = Registry("head", {
    "text": "edgedistill.heads.text:TextHead",
    "label_map": "edgedistill.heads.label_map:LabelMapHead",
    "linear": "edgedistill.heads.probe:LinearProbe",
})
"""``TrainConfig.head`` / ``HeadsConfig.zero_shot`` -> head class (the protocol: ``edgedistill.heads``). The order
is the preference of ``zero_shot_kind``: the first zero-shot head a teacher can feed is its zero-shot head."""

LOSSES = Registry("loss", {
    "ce": "edgedistill.losses:ce_loss",
    "kd": "edgedistill.losses:kd_loss",
    "feature": "edgedistill.losses:feature_loss",
})
"""``TrainConfig.loss`` -> ``loss(StudentOutputs, TrainConfig) -> {"loss", ...parts}``, marked by
``losses.trains(target)`` with the ``TrainConfig.target`` it trains (``labels``, ``logits`` or ``embedding``)."""

DATASETS = Registry("dataset", {
    "stl10": "edgedistill.data.splits:_stl10",
    "cifar10": "edgedistill.data.splits:_cifar10",
    "fashion_mnist": "edgedistill.data.splits:_fashion_mnist",
    "imagefolder": "edgedistill.data.splits:_imagefolder",
    "demo": "edgedistill.data.splits:_demo",
    "pool": "edgedistill.data.splits:_pool",
    "manifest": "edgedistill.data.splits:_manifest",
})
"""``DataConfig.dataset`` -> ``opener(DataConfig) -> (root, labeled sources, test sources, unlabeled sources)``."""

TEMPLATES = Registry("prompt template set", {
    "ensemble": "open_clip:OPENAI_IMAGENET_TEMPLATES",
    "tutorial": "edgedistill.heads.text:TUTORIAL_TEMPLATES",
    "simple": "open_clip:SIMPLE_IMAGENET_TEMPLATES",
})
"""``heads.templates`` / ``retrieve.templates`` -> a sequence of prompt templates (``str.format`` strings with
``{c}``, or functions of the class name), as open_clip's ``build_zero_shot_classifier`` takes them."""

RUNTIMES = Registry("runtime", home="edgedistill.deploy.engines:RUNTIMES")
"""``deploy.runtimes`` -> ``Runtime``: the deployment runtimes' own (torch-free) registry, read in place."""


# ----------------------------------------------------------------------------- plugins

_loaded: dict[str, Any] = {}
_entry_points_loaded = False


def load_plugins(names: Sequence[str] | None) -> list[Any]:
    """Import plugin modules (each registers its entries on import); a module already loaded is not loaded again.

    Args:
        names: Module names (``my_pkg.my_plugin``, importable from ``sys.path``) or paths of ``.py`` files.

    Returns:
        The modules.

    Raises:
        ConfigError: a plugin that cannot be found or fails while importing (named, with the error).
    """
    modules = []
    for name in names or []:
        if not isinstance(name, str) or not name:
            raise ConfigError(f"plugins: {name!r} is not a module name or a .py path")
        key = str(Path(name).expanduser().resolve()) if name.endswith(".py") else name
        if key not in _loaded:
            _loaded[key] = _import_plugin(name, key)
        modules.append(_loaded[key])
    return modules


def _import_plugin(name: str, key: str) -> Any:
    try:
        if not name.endswith(".py"):
            return importlib.import_module(name)
        if not os.path.isfile(key):
            raise ConfigError(f"plugins: {name!r} is not a file")
        mod_name = "edgedistill_plugin_" + Path(key).stem
        spec = importlib.util.spec_from_file_location(mod_name, key)
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module
        spec.loader.exec_module(module)
        return module
    except ConfigError:
        raise
    except ImportError as e:
        raise ConfigError(f"plugins: cannot import {name!r} ({type(e).__name__}: {e}); give a module on "
                          "sys.path (PYTHONPATH) or a .py path") from None
    except Exception as e:  # noqa: BLE001 - a plugin's own error, reported as the plugin's
        raise ConfigError(f"plugins: {name!r} failed while importing ({type(e).__name__}: {e})") from None


def load_entry_point_plugins() -> None:
    """Import, once, every module installed under the entry-point group ``edgedistill.plugins``."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except Exception as e:  # noqa: BLE001 - a broken installed plugin names itself, nothing more
            raise ConfigError(f"Installed plugin {ep.name!r} ({ep.value}) failed while importing "
                              f"({type(e).__name__}: {e})") from None


__all__ = ["DATASETS", "ENTRY_POINT_GROUP", "HEADS", "LOSSES", "RUNTIMES", "Registry", "TEACHERS", "TEMPLATES",
           "load_entry_point_plugins", "load_plugins"]
