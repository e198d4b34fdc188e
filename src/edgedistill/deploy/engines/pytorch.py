"""Eager PyTorch (CPU or CUDA): rebuilds the model from its run directory / teacher config in the child."""

from __future__ import annotations

import importlib.util


def available(runtime) -> tuple[bool, str]:
    if importlib.util.find_spec("torch") is None:
        return False, "torch is not installed (pip install 'edgedistill[train]')"
    if runtime.cuda:
        import torch

        if not torch.cuda.is_available():
            return False, "no CUDA GPU is visible"
    return True, ""


_MODEL_LIBRARIES = {"student": ["timm", "edgedistill.deploy.export"], "teacher": ["timm", "open_clip", "edgedistill.deploy.export"],
                    "open_clip": ["open_clip"], "timm": ["timm"]}


def prepare(runtime, job: dict) -> None:
    import torch

    if job["threads"]:
        torch.set_num_threads(job["threads"])
    if runtime.cuda:
        torch.zeros(1, device="cuda")  # the CUDA context before the baseline
    for mod in _MODEL_LIBRARIES.get((job["torch"] or {}).get("kind"), []):
        importlib.import_module(mod)


def build(spec: dict):
    """The eager model a bench entry's ``torch`` spec describes."""
    from edgedistill.errors import ConfigError

    if spec["kind"] == "student":
        from edgedistill.deploy.export import load_student_deploy

        return load_student_deploy(spec["path"])[0]
    if spec["kind"] == "teacher":
        from edgedistill.deploy.export import load_teacher_deploy, teacher_config

        return load_teacher_deploy(teacher_config(spec["config"]))[0]
    if spec["kind"] == "open_clip":
        from edgedistill.deploy.bench_entries import open_clip_tower

        return open_clip_tower(spec["name"], spec.get("config"))
    if spec["kind"] == "timm":
        import timm

        return timm.create_model(spec["arch"], pretrained=False, num_classes=spec.get("num_classes", 1000))
    raise ConfigError(f"Unknown torch spec kind {spec['kind']!r}. Valid: student, teacher, open_clip, timm")


def load(runtime, job: dict, x):
    import torch

    model = build(job["torch"]).eval()
    xt = torch.from_numpy(x)
    if runtime.cuda:
        model, xt = model.cuda(), xt.cuda()

    def run():
        with torch.inference_mode():
            model(xt)

    return run, (torch.cuda.synchronize if runtime.cuda else (lambda: None))


def gpu_mem_mb(runtime) -> float | None:
    if not runtime.cuda:
        return None
    import torch

    return torch.cuda.max_memory_allocated() / 2**20
