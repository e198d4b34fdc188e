"""Training step speed on this CPU: FP32 against bf16 autocast, torch.compile, and thread counts, side by side.

    python benchmarks/train_speed.py --seconds 8

The demo's student (narrow ResNet18, channels 32-256, small-input stem) at 32 px, batch 128, NHWC, a response-KD
step (forward, KL to fixed random teacher probabilities, backward, Nesterov SGD): the step the budget buys. Each
setting warms up (3 steps; torch.compile's first call compiles and is not timed), then runs for ``--seconds``; the
table gives the median step time and images/s, and the ratio to FP32 with all threads. bf16 autocast uses the
CPU's AMX / AVX512-BF16 units where the CPU has them (``lscpu`` flags ``amx_bf16``, ``avx512_bf16``).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from edgedistill.students import create_student


def step_times(mode: str, threads: int, seconds: float, batch: int = 128, size: int = 32) -> list[float]:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = create_student("resnet18", 10, small_input=True, kwargs={"channels": [32, 64, 128, 256]})
    model = model.train().to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    run = torch.compile(model) if mode == "compile" else model
    x = torch.randn(batch, 3, size, size).to(memory_format=torch.channels_last)
    target = torch.softmax(torch.randn(batch, 10), dim=1)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "bf16"):
            logits = run(x)
        loss = F.kl_div(F.log_softmax(logits.float() / 2, 1), target, reduction="batchmean") * 4
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    times, t_end = [], time.perf_counter() + seconds
    while time.perf_counter() < t_end or len(times) < 3:
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--batch", type=int, default=128)
    a = p.parse_args()
    cores = torch.get_num_threads()
    settings = [("fp32", cores), ("bf16", cores), ("compile", cores), ("fp32", 1)]
    rows = []
    for mode, threads in settings:
        med = statistics.median(step_times(mode, threads, a.seconds, a.batch))
        rows.append((mode, threads, med))
    base = rows[0][2]
    print("| setting | threads | step ms (median) | images/s | vs FP32 |\n|---|---:|---:|---:|---:|")
    for mode, threads, med in rows:
        print(f"| {mode} | {threads} | {1000 * med:.1f} | {a.batch / med:.0f} | {base / med:.2f}x |")


if __name__ == "__main__":
    main()
