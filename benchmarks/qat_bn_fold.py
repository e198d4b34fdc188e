"""Where should BatchNorm go in INT8 QAT for ONNX Runtime on CPU? Five ways of exporting one QAT student, measured.

ModelOpt's default INT8 placement quantizes each conv's input and weights and leaves BatchNorm alone. Its QDQ graph
is what TensorRT expects, but ONNX Runtime's CPU provider fuses QDQ into integer kernels (QLinearConv) only for
``DQ -> Conv -> Q``, i.e. with a Q right after the conv. This script trains one demo-sized student (the demo's
narrow ResNet18 at 32 px, on the 4,500 labeled demo training images, labels only: a few minutes), then QAT-fine-tunes
copies of it (the same 100 steps at lr 0.02, a tenth of the base's, cosine to 0) placed four ways and exports each:

    A  FP32                                    (reference)
    B  ONNX Runtime static INT8 (PTQ, U8S8)    (today's `export --int8`)
    C  ModelOpt INT8_DEFAULT_CFG, BN unfolded  (what `edgedistill optimize` ships)
    D  C with BN folded into the convs at export (exact for per-channel weight scales)
    E  BN folded before QAT + conv output quantizers   (DQ -> Conv -> Q: ORT's QLinearConv)
    F  BN kept in training, BN output quantizers, BN folded at export  (also QLinearConv)

For each: accuracy of PyTorch (fake-quant) and of ONNX Runtime on 1,000 held-out demo images, their top-1
agreement and largest logit difference, the kernels ONNX Runtime runs, and its throughput at batch 1 and 8.

    .venv/bin/python benchmarks/qat_bn_fold.py     # ~5-10 min on 2 CPU cores; writes benchmarks/results/qat_bn_fold.json
"""

from __future__ import annotations

import argparse
import collections
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

os.environ.setdefault("EDGEDISTILL_NO_PROGRESS", "1")
torch.set_num_threads(1)  # 2 spin-waiting OpenMP threads on 2 shared cores train several times slower

from edgedistill import storage  # noqa: E402
from edgedistill.config import DataConfig  # noqa: E402
from edgedistill.deploy.bench import machine_info  # noqa: E402
from edgedistill.deploy.export import DeployModel, export_onnx  # noqa: E402
from edgedistill.deploy.quantize import quantize_int8  # noqa: E402
from edgedistill.deploy.runtime import DeployMeta, ort_session  # noqa: E402
from edgedistill.students import create_student  # noqa: E402
from edgedistill.training import modelopt as mo_adapter  # noqa: E402


def demo_tensors(split: str, n: int | None, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Preprocessed demo images [N, 3, 32, 32] and labels (the student's eval view)."""
    from edgedistill.data.splits import build_splits
    from edgedistill.data.transforms import eval_transform
    from edgedistill.data.views import student_view

    ds = build_splits(DataConfig(dataset="demo", val_fraction=0.1)).dataset(split, eval_transform(student_view(32)))
    idx = range(len(ds)) if n is None else np.random.default_rng(seed).choice(len(ds), n, replace=False)
    items = [ds[int(i)] for i in idx]
    return torch.stack([it["image"] for it in items]), torch.tensor([it["label"] for it in items])


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float, bs: int = 64) -> nn.Module:
    """SGD (Nesterov) with flips; one-cycle for the base, cosine to 0 without warmup for the QAT fine-tunes (as
    ``edgedistill optimize``)."""
    import math

    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    sched = (torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps) if steps > 200 else
             torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s / steps, 1.0)))))
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        i = torch.randint(0, len(x), (bs,), generator=g)
        flip = torch.rand(bs, generator=g) < 0.5
        xb = torch.where(flip[:, None, None, None], x[i].flip(3), x[i])
        loss = F.cross_entropy(model(xb), y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


def conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(conv, bn) module names of a timm ResNet: the stem, convN/bnN in each block, downsample.0/.1."""
    import timm

    pairs = [("conv1", "bn1")]
    for name, m in model.named_modules():
        if isinstance(m, (timm.models.resnet.BasicBlock, timm.models.resnet.Bottleneck)):
            pairs += [(f"{name}.conv{k}", f"{name}.bn{k}") for k in (1, 2, 3) if hasattr(m, f"conv{k}")]
            if m.downsample is not None:
                pairs.append((f"{name}.downsample.0", f"{name}.downsample.1"))
    return pairs


def _set(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


@torch.no_grad()
def fold_before(model: nn.Module) -> nn.Module:
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for c, b in conv_bn_pairs(model):
        _set(model, c, fuse_conv_bn_eval(model.get_submodule(c), model.get_submodule(b)))
        _set(model, b, nn.Identity())
    return model


@torch.no_grad()
def fold_after(model: nn.Module) -> nn.Module:
    """Fold each BN into its fake-quantized conv: w *= s, weight amax *= |s| (per output channel: exact), bias."""
    for c, b in conv_bn_pairs(model):
        conv, bn = model.get_submodule(c), model.get_submodule(b)
        s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        conv._parameters["weight"].mul_(s.view(-1, 1, 1, 1))
        conv.weight_quantizer._amax.mul_(s.abs().view(-1, 1, 1, 1))
        conv.bias = nn.Parameter(bn.bias - bn.running_mean * s)
        if getattr(bn, "output_quantizer", None) is not None and bn.output_quantizer.is_enabled:
            conv.output_quantizer = bn.output_quantizer
        _set(model, b, nn.Identity())
    return model


META = DeployMeta(role="student", arch="resnet18 (32-256)", outputs=["logits"],
                  view={"image_size": 32, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]})


def export(model: nn.Module, path: Path) -> Path:
    """The exporter `edgedistill export` uses (TorchScript: ModelOpt's quantizers become Q/DQ), batch axis dynamic."""
    return export_onnx(DeployModel(model).eval(), path, meta=META)[0]


def kernels(path: Path) -> dict[str, int]:
    import onnx

    out = path.with_suffix(".ort.onnx")
    ort_session(path, threads=1, settings={"optimized_model_filepath": str(out)})
    ops = collections.Counter(n.op_type for n in onnx.load(str(out)).graph.node)
    return {k: ops[k] for k in ("QLinearConv", "Conv", "FusedConv", "BatchNormalization", "DequantizeLinear") if ops[k]}


def throughput(path: Path, batch: int, reps: int) -> float:
    sess = ort_session(path, threads=1)
    x = np.random.default_rng(0).standard_normal((batch, 3, 32, 32), dtype=np.float32)
    for _ in range(20):
        sess.run(None, {"image": x})
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        sess.run(None, {"image": x})
        times.append(time.perf_counter() - t0)
    return batch / float(np.median(times))


def measure(tag: str, model: nn.Module, path: Path, x: torch.Tensor, y: torch.Tensor, reps: int) -> dict:
    with torch.no_grad():
        ref = torch.cat([model(x[i:i + 250]) for i in range(0, len(x), 250)]).numpy()
    sess = ort_session(path, threads=1)
    got = np.concatenate([sess.run(None, {"image": x[i:i + 250].numpy()})[0] for i in range(0, len(x), 250)])
    row = {"variant": tag, "torch_acc": float((ref.argmax(1) == y.numpy()).mean()),
           "ort_acc": float((got.argmax(1) == y.numpy()).mean()),
           "top1_agreement": float((ref.argmax(1) == got.argmax(1)).mean()),
           "max_abs_diff": float(np.abs(ref - got).max()), "max_abs_logit": float(np.abs(ref).max()),
           "ort_kernels": kernels(path), "ips_b1": throughput(path, 1, reps), "ips_b8": throughput(path, 8, reps)}
    print(json.dumps(row), file=sys.stderr, flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base-steps", type=int, default=600)
    ap.add_argument("--qat-steps", type=int, default=100)
    ap.add_argument("--reps", type=int, default=200, help="timed ONNX Runtime runs per batch size (1 thread)")
    ap.add_argument("--out", default="benchmarks/results/qat_bn_fold.json")
    args = ap.parse_args()
    mo = mo_adapter.require_modelopt("benchmarks/qat_bn_fold.py")
    mtq = mo.mtq
    t_all = time.time()
    xtr, ytr = demo_tensors("train", None, 0)
    xte, yte = demo_tensors("test", 1000, 1)
    calib = xtr[torch.randperm(len(xtr), generator=torch.Generator().manual_seed(0))[:256]]
    torch.manual_seed(0)
    base = train(create_student("resnet18", 10, kwargs={"channels": [32, 64, 128, 256]}), xtr, ytr, args.base_steps, 0.2)

    def fresh() -> nn.Module:
        return copy.deepcopy(base).eval()

    def calibrate(m: nn.Module) -> None:
        for i in range(0, len(calib), 64):
            m(calib[i:i + 64])

    def qat(cfg: dict, model: nn.Module) -> nn.Module:
        with mo_adapter.modelopt_quiet():
            model = mtq.quantize(model, cfg, calibrate)
        return train(model, xtr, ytr, args.qat_steps, 0.02)

    def with_output_quantizers(parent: str) -> dict:
        cfg = copy.deepcopy(mtq.INT8_DEFAULT_CFG)
        cfg["quant_cfg"].append({"quantizer_name": "*output_quantizer", "parent_class": parent,
                                 "cfg": {"num_bits": 8, "axis": None}})
        return cfg

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        a = export(fresh(), d / "a.onnx")
        rows.append(measure("A FP32", base, a, xte, yte, args.reps))
        quantize_int8(a, d / "b.onnx", (calib[i:i + 64].numpy() for i in range(0, len(calib), 64)))
        rows.append(measure("B ONNX Runtime static INT8 (PTQ)", base, d / "b.onnx", xte, yte, args.reps))
        c = qat(mtq.INT8_DEFAULT_CFG, fresh())
        rows.append(measure("C ModelOpt default, BN unfolded (shipped)", c, export(c, d / "c.onnx"), xte, yte, args.reps))
        dd = fold_after(copy.deepcopy(c))
        rows.append(measure("D = C, BN folded at export", dd, export(dd, d / "d.onnx"), xte, yte, args.reps))
        e = qat(with_output_quantizers("nn.Conv2d"), fold_before(fresh()))
        rows.append(measure("E BN folded before QAT + conv output quantizers", e, export(e, d / "e.onnx"), xte, yte,
                            args.reps))
        f = fold_after(qat(with_output_quantizers("nn.BatchNorm2d"), fresh()))
        rows.append(measure("F BN output quantizers, BN folded at export", f, export(f, d / "f.onnx"), xte, yte,
                            args.reps))
    report = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "args": vars(args), "machine": machine_info(),
              "student": "resnet18 channels 32-256, 32 px, demo labeled images (labels), held-out: 1,000 demo eval images",
              "rows": rows, "elapsed_s": round(time.time() - t_all, 1)}
    storage.write_json(args.out, report)
    print("| variant | PyTorch acc | ORT acc | top-1 agreement | max abs diff (max logit) | ORT kernels | img/s b1 | b8 |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {100 * r['torch_acc']:.1f}% | {100 * r['ort_acc']:.1f}% | "
              f"{100 * r['top1_agreement']:.1f}% | {r['max_abs_diff']:.2f} ({r['max_abs_logit']:.1f}) | "
              f"{', '.join(f'{k} {v}' for k, v in r['ort_kernels'].items())} | {r['ips_b1']:.0f} | {r['ips_b8']:.0f} |")
    print(f"wrote {args.out} ({report['elapsed_s']:.0f} s)")


if __name__ == "__main__":
    main()
