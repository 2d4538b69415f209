"""Training throughput on this machine: tokens/s and model FLOPs utilisation (MFU).

    python bench/bench_training.py [--threads 2] [--no-write]

MFU = achieved model FLOPs / measured matmul peak, where model FLOPs per token =
6 x (matmul parameters, incl. the tied output layer) + 12 x layers x seq x hidden
(attention scores and context), the usual Megatron/PaLM count, and the peak is the
best of a few large fp32 matmuls with the same thread count.  Steps run through the
real training path (TorchBackend: AdamW, grad clipping, the CogView loss).
Results go to bench/RESULTS.md, section "Training throughput".
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Dict, List

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from arguments import get_args  # noqa: E402
from bench.results import write_section  # noqa: E402
from training.backends import make_backend  # noqa: E402
from training.loss import forward_step, get_batch  # noqa: E402
from training.model import get_model  # noqa: E402

CONFIGS = [
    # name, layers, hidden, heads, vocab, seq, batch, timed steps
    ("demo ~5M params", 6, 256, 8, 2048, 256, 4, 6),
    ("12-layer 1024-hidden (tutorial model)", 12, 1024, 16, 58240, 128, 1, 2),
]


def matmul_peak_gflops(n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def flops_per_token(model: torch.nn.Module, layers: int, hidden: int, seq: int) -> float:
    matmul = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2 and "position_embeddings" not in n)
    return 6 * matmul + 12 * layers * seq * hidden


def bench_config(
    name: str, layers: int, hidden: int, heads: int, vocab: int, seq: int, batch: int, steps: int, peak: float
) -> Dict[str, float]:
    args = get_args(
        [
            "--num-layers",
            str(layers),
            "--hidden-size",
            str(hidden),
            "--num-attention-heads",
            str(heads),
            "--max-position-embeddings",
            str(seq + 1),
            "--batch-size",
            str(batch),
            "--device",
            "cpu",
            "--hidden-dropout",
            "0.1",
            "--attention-dropout",
            "0.1",
        ]
    )
    args.vocab_size = vocab
    torch.manual_seed(0)
    model = get_model(args)
    backend = make_backend(model, args, torch.device("cpu"))
    text = torch.randint(0, vocab, (batch, seq + 1))
    batch_ = get_batch(text, torch.ones_like(text), num_image_tokens=vocab // 2)

    def step() -> None:
        out, _ = forward_step(backend.model, batch_, 1.0)
        backend.backward(out.loss)
        backend.step()

    step()  # warm-up (allocations, first-touch)
    t = time.perf_counter()
    for _ in range(steps):
        step()
    elapsed = time.perf_counter() - t
    tokens_per_s = steps * batch * seq / elapsed
    params = sum(p.numel() for p in model.parameters())
    achieved = tokens_per_s * flops_per_token(model, layers, hidden, seq) / 1e9
    return {
        "name": name,
        "params": params,
        "seq": seq,
        "batch": batch,
        "step_s": elapsed / steps,
        "tokens_per_s": tokens_per_s,
        "gflops": achieved,
        "mfu": achieved / peak,
    }


def main(argv: List[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md alone")
    opts = parser.parse_args(argv)
    torch.set_num_threads(opts.threads)
    peak = matmul_peak_gflops()
    print(f"matmul peak (fp32, 2048^2, {opts.threads} threads): {peak:.1f} GFLOP/s", flush=True)
    rows = []
    for cfg in CONFIGS:
        r = bench_config(*cfg, peak=peak)
        print(
            f"{r['name']}: {r['params'] / 1e6:.1f}M params, {r['tokens_per_s']:.0f} tokens/s, "
            f"{r['gflops']:.1f} GFLOP/s, MFU {100 * r['mfu']:.1f}%",
            flush=True,
        )
        rows.append(r)
    table = [
        "| model | parameters | batch x seq | s / step | tokens/s | model GFLOP/s | MFU |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        table.append(
            f"| {r['name']} | {r['params'] / 1e6:.1f} M | {r['batch']} x {r['seq']} | {r['step_s']:.2f} | "
            f"{r['tokens_per_s']:.0f} | {r['gflops']:.1f} | {100 * r['mfu']:.1f}% |"
        )
    body = (
        f"`python bench/bench_training.py` (fp32, CPU, torch AdamW, dropout 0.1, single process). "
        f"Matmul peak measured with the same threads: {peak:.1f} GFLOP/s (fp32 2048x2048 mm, best of 5). "
        "Model FLOPs/token = 6 x matmul parameters + 12 x layers x seq x hidden. The 12-layer model uses "
        "the released vocabulary (58240) but a short sequence (128) to keep the run to a few minutes; "
        f"at 1088 tokens the attention term grows and MFU changes. 1-minute load average at the start: "
        f"{os.getloadavg()[0]:.1f} (other jobs on the 2 cores make the numbers noisy).\n\n" + "\n".join(table)
    )
    if not opts.no_write:
        write_section("Training throughput", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
