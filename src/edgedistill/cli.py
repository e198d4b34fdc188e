"""Command line: parse, load the config, call one library function. No logic lives here.

Each sub-command is a library function with a typed signature; jsonargparse turns that
signature into flags, ``--config file.yaml`` and dotted overrides (``--teacher.model X``).
Only the chosen command's module is imported, so ``edgedistill --help`` is instant.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
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
    return parser, func


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
            print(f"error: edgedistill {name}: {_one_line(e)}", file=sys.stderr)
            return 2
        cfg.pop("config", None)
        kwargs = parser.instantiate(cfg)
        kwargs.pop("config", None)
        config_cls = _config_class(func)
        func(config_cls(**kwargs)) if config_cls is not None else func(**kwargs)
    except EdgeDistillError as e:
        print(f"error: {e}", file=sys.stderr)
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
    """Bare arguments fill the function's required parameters in order (``run GRID.yaml``,
    ``predict MODEL IMG ...``); a required list parameter takes every bare argument that follows."""
    import json

    required = [p for p in inspect.signature(func).parameters.values() if p.default is inspect.Parameter.empty]
    out: list[str] = []
    rest = list(argv)
    for p in required:
        bare = []
        while rest and not rest[0].startswith("-"):
            bare.append(rest.pop(0))
            if not str(p.annotation).startswith("list"):
                break
        if not bare:
            break
        out += [f"--{p.name}", json.dumps(bare) if str(p.annotation).startswith("list") else bare[0]]
    return out + rest


_LITERAL = re.compile(r'Parser key "(?P<key>[^"]+)":\s*Expected a typing\.Literal\[(?P<choices>[^\]]*)\]\.\s*Got value: (?P<value>.*)')


def _one_line(e: BaseException) -> str:
    # jsonargparse nests the cause (e.g. our ConfigError from __post_init__) in its message.
    cause = e
    while cause.__cause__ is not None or cause.__context__ is not None:
        nxt = cause.__cause__ or cause.__context__
        if isinstance(nxt, EdgeDistillError):
            return str(nxt)
        cause = nxt
    text = " ".join(str(e).split())
    m = _LITERAL.search(text)
    if m:  # the same words as config.check_choices, for a choice jsonargparse refused first
        choices = ", ".join(c.strip().strip("'\"") for c in m["choices"].split(","))
        return f"{m['key']}={m['value'].strip()!r} is invalid; valid: {choices}"
    return text if len(text) < 400 else text[:400] + " ..."


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
