"""Command line: parse, load the config, call one library function. No logic lives here.

Each sub-command is a library function with a typed signature; jsonargparse turns that
signature into flags, ``--config file.yaml`` and dotted overrides (``--teacher.model X``).
Only the chosen command's module is imported, so ``edgedistill --help`` is instant.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys

from edgedistill.errors import EdgeDistillError

# name -> (module:function, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "cache": ("edgedistill.cache:cache_command", "Compute and store teacher outputs (embeddings, logits) for a dataset."),
    "teacher": ("edgedistill.evaluate:teacher_command", "Teacher accuracy: zero-shot text head, ImageNet label map, or linear probe."),
    "train": ("edgedistill.training.fit:train_command", "Train a student: from labels, response KD or feature KD."),
    "eval": ("edgedistill.evaluate:eval_command", "Evaluate a trained student (or teacher head) on a split or an ImageFolder."),
    "run": ("edgedistill.pipelines.grid:run_command", "Run a YAML grid of trainings and write the results table and plots."),
    "optimize": ("edgedistill.training.optimize:optimize_command", "QAT (INT8) and/or 2:4 sparsity of a trained student, fine-tuned with its own loss."),
    "export": ("edgedistill.deploy.export:export_command", "Export a student or teacher image tower to ONNX (parity-checked), INT8, TensorRT."),
    "bench": ("edgedistill.deploy.bench:bench_command", "Benchmark teacher vs student: latency, throughput, memory."),
    "predict": ("edgedistill.deploy.predict:predict_command", "Classify images with an exported or checkpointed student."),
    "retrieve": ("edgedistill.retrieve:retrieve_command", "Retrieve each prompt class's images from an unlabeled pool: a manifest and a contact sheet."),
    "distill": ("edgedistill.pipelines.distill:distill_command", "From a folder of images to a deployed, benchmarked student, in one command."),
    "demo": ("edgedistill.pipelines.distill:demo_command", "distill on the bundled CIFAR-10 images (offline), with a report."),
}


# What `pip install 'edgedistill[train]'` adds to the runtime-only base install (pyproject.toml's [train] extra).
TRAIN_STACK = frozenset({"torch", "torchvision", "timm", "open_clip", "lightning", "pytorch_lightning", "torchmetrics",
                         "safetensors", "matplotlib", "tensorboard", "onnx", "onnxscript"})
TRAIN_EXTRA = "pip install 'edgedistill[train]'"


# Commands a runtime-only install runs (exported bundles); every other command trains, caches or exports.
RUNTIME_COMMANDS = frozenset({"predict", "bench"})


def _train_stack_absent() -> str | None:
    """The first core training package that is not installed, or None (a spec lookup: nothing is imported)."""
    import importlib.util

    for package in ("torch", "timm", "open_clip", "lightning"):
        try:
            if importlib.util.find_spec(package) is None:
                return package
        except (ImportError, ValueError):
            return package
    return None


def missing_train_stack(e: ModuleNotFoundError) -> str | None:
    """The training-stack package a failed import was after, or None for any other missing module."""
    root = (e.name or "").partition(".")[0]
    return root if root in TRAIN_STACK else None


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: edgedistill <command> [--config FILE.yaml] [--flag value ...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run 'edgedistill <command> --help' for the flags of one command."]
    return "\n".join(lines)


def _load(target: str):
    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)


def build_parser(name: str):
    """The jsonargparse parser of one sub-command, built from its function's signature.

    Field docstrings of the config dataclasses become the flags' help; abbreviated flags
    (``--train.epoch``) are refused rather than guessed.
    """
    import jsonargparse
    from jsonargparse import ActionConfigFile, ArgumentParser

    jsonargparse.set_parsing_settings(docstring_parse_attribute_docstrings=True)
    target, help_ = COMMANDS[name]
    func = _load(target)
    parser = ArgumentParser(prog=f"edgedistill {name}", description=help_, exit_on_error=False, allow_abbrev=False)
    parser.add_argument("--config", action=ActionConfigFile, help="YAML file with any of the flags below.")
    config_cls = _config_class(func)
    if config_cls is not None:  # a command taking one config dataclass: its fields are the flags
        parser.add_class_arguments(config_cls, as_group=False)
    else:
        parser.add_function_arguments(func, as_group=False)
    _list_registry_choices(parser, func, config_cls)
    return parser, func


def _list_registry_choices(parser, func, config_cls: type | None) -> None:
    """Flags naming a registry entry (``config.choice``) show the names registered now, plugins' included."""
    import dataclasses
    import typing

    from edgedistill.config import registry_fields

    if config_cls is not None:
        flags = registry_fields(config_cls)
    else:
        flags = {}
        for name, hint in typing.get_type_hints(func).items():
            hint = next((a for a in typing.get_args(hint) if dataclasses.is_dataclass(a)), hint)  # X | None
            if isinstance(hint, type) and dataclasses.is_dataclass(hint):
                flags.update(registry_fields(hint, f"{name}."))
    for action in parser._actions:
        if action.dest in flags:
            registry, extra = flags[action.dest]
            action.help = f"{action.help or ''} (valid: {', '.join([*extra, *registry.names()])})"


def _config_class(func) -> type | None:
    """The dataclass of a command whose only parameter is a config dataclass (``distill``), else None."""
    import dataclasses
    import typing

    params = list(inspect.signature(func).parameters)
    if len(params) != 1:
        return None
    hint = typing.get_type_hints(func).get(params[0])
    return hint if isinstance(hint, type) and dataclasses.is_dataclass(hint) else None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    for stream in (sys.stdout, sys.stderr):  # Linux names are bytes: print a non-UTF-8 path escaped, never crash on it
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name in ("-V", "--version"):
        from edgedistill import __version__

        print(__version__)
        return 0
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}. Valid: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    absent = None if name in RUNTIME_COMMANDS else _train_stack_absent()
    if absent is not None:
        print(f"error: edgedistill {name} needs the training stack ({absent} is not installed): {TRAIN_EXTRA}",
              file=sys.stderr)
        return 2
    try:
        parser, func = build_parser(name)
        try:
            cfg = parser.parse_args(_positionals_to_flags(func, rest))
        except SystemExit as e:  # --help, or jsonargparse's own exit
            return int(e.code or 0)
        except Exception as e:  # noqa: BLE001 - jsonargparse raises ArgumentError / ValueError on bad flags
            print(f"error: edgedistill {name}: {_single_line(_one_line(e))}", file=sys.stderr)
            return 2
        cfg.pop("config", None)
        wrong = _unchecked_values(func, cfg.as_dict())
        if wrong:  # jsonargparse type-checks flags, but lets these through from a --config file to the dataclass
            print(f"error: edgedistill {name}: {_single_line(wrong)}", file=sys.stderr)
            return 2
        if cfg.get("plugins"):  # before the configs are built: plugins register the names they may use
            from edgedistill.config import check_plugins
            from edgedistill.registry import load_plugins

            load_plugins(check_plugins(cfg["plugins"]))
        kwargs = parser.instantiate(cfg)
        kwargs.pop("config", None)
        config_cls = _config_class(func)
        func(config_cls(**kwargs)) if config_cls is not None else func(**kwargs)
    except EdgeDistillError as e:
        print(f"error: {_single_line(str(e))}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:  # a runtime-only install (plain `pip install edgedistill`) asked to train
        package = missing_train_stack(e)
        if package is None:
            raise
        print(f"error: edgedistill {name} needs the training stack ({package} is not installed): {TRAIN_EXTRA}",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


def _positionals_to_flags(func, argv: list[str]) -> list[str]:
    """Bare arguments fill the function's required parameters in order (``run GRID.yaml``, ``retrieve FILE POOL``,
    ``predict MODEL IMG ...``); a required parameter that takes a list takes every bare argument that follows.

    jsonargparse makes a parameter either a positional or a flag (``as_positional``), while the documented commands
    use both forms of the same parameter (``bench --student DIR``, ``retrieve pets.txt pool/``); so bare arguments
    are turned into the flags jsonargparse parses and checks (types, unknown flags, ``--config``)."""
    import json
    import typing

    hints = typing.get_type_hints(func)

    def takes_list(name: str) -> bool:
        tp = hints.get(name)
        return typing.get_origin(tp) is list or any(typing.get_origin(a) is list for a in typing.get_args(tp))

    required = [p.name for p in inspect.signature(func).parameters.values() if p.default is inspect.Parameter.empty]
    out: list[str] = []
    rest = list(argv)
    for name in required:
        bare = []
        while rest and not rest[0].startswith("-"):
            bare.append(rest.pop(0))
            if not takes_list(name):
                break
        if not bare:
            break
        out += [f"--{name}", json.dumps(bare) if takes_list(name) else bare[0]]
    return out + rest


def _unchecked_values(func, values: dict) -> str | None:
    """What is wrong with the first value jsonargparse passes unchecked from a --config file: a null where the
    parameter or dataclass field does not allow None, or a section (a config dataclass) that is not a mapping."""
    import dataclasses
    import types
    import typing

    def allows_none(tp) -> bool:
        return tp is typing.Any or tp is type(None) or (
            typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp))

    def walk(hints: dict, vals: dict, prefix: str) -> str | None:
        for key, value in vals.items():
            tp = hints.get(key)
            if tp is None:
                continue
            if value is None and not allows_none(tp):
                return f"{prefix}{key}=null is invalid; give a value (see --help)"
            if isinstance(tp, type) and dataclasses.is_dataclass(tp):
                if not isinstance(value, dict):
                    return f"{prefix}{key}={value!r} is invalid; give a mapping of its fields (see --help)"
                found = walk(typing.get_type_hints(tp), value, f"{prefix}{key}.")
                if found:
                    return found
        return None

    config_cls = _config_class(func)
    return walk(typing.get_type_hints(config_cls or func), values, "")


def _single_line(text: str) -> str:
    """The message with line breaks escaped: a file name may hold a newline, and an error is one line."""
    return text.replace("\r", "\\r").replace("\n", "\\n")


def _one_line(e: BaseException) -> str:
    """The error of a refused command line as one line: our own ``EdgeDistillError`` when jsonargparse wraps one (a
    config's ``__post_init__`` refused a value: every enum and registry choice is checked there, see
    ``config.choice``), else jsonargparse's message (an unknown flag, a value of the wrong type), whitespace folded."""
    cause: BaseException | None = e
    while cause is not None:
        if isinstance(cause, EdgeDistillError):
            return str(cause)
        cause = cause.__cause__ or cause.__context__
    text = " ".join(str(e).split())
    return text if len(text) < 400 else text[:400] + " ..."


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
