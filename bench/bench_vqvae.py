"""VQ-VAE encoding throughput (img2code, images/s) on CPU, released and small configs.

    python bench/bench_vqvae.py [--threads N] [--no-write]

Random weights (speed does not depend on them), 256x256 inputs. Writes the "VQ-VAE encoding"
section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from bench.results import write_section  # noqa: E402
from vqvae import VQVAE, img2code, new_model  # noqa: E402

SMALL = dict(channel=128, n_res_block=0, n_res_channel=32, embed_dim=64, n_embed=512, stride=6)


def measure(model: VQVAE, batch: int, size: int, min_seconds: float, min_reps: int) -> tuple[float, float, int]:
    """(wall seconds per call, process CPU seconds per call, calls timed) after a warm-up call.

    CPU time is reported too because on a shared machine wall time mostly measures the others.
    """
    x = torch.randn(batch, 3, size, size)
    img2code(model, x)
    reps, start, cpu = 0, time.perf_counter(), time.process_time()
    while reps < min_reps or time.perf_counter() - start < min_seconds:
        img2code(model, x)
        reps += 1
    return (time.perf_counter() - start) / reps, (time.process_time() - cpu) / reps, reps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cases = [
        ("released (new_model: channel 512, embed_dim 256, n_embed 8192, stride 6)", new_model(), (1, 8), 4.0, 2),
        ("small (channel 128, embed_dim 64, n_embed 512, stride 6)", VQVAE(**SMALL), (1, 8, 32), 2.0, 3),
    ]
    rows = [
        "| config | params (M) | batch | codes / image | wall ms / batch | images / s (wall) | CPU s / image |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    load = os.getloadavg()[0]
    for name, model, batches, min_s, min_reps in cases:
        model.eval()
        params = sum(p.numel() for p in model.parameters()) / 1e6
        grid = args.size // model.downsample
        for batch in batches:
            sec, cpu, reps = measure(model, batch, args.size, min_s, min_reps)
            row = (
                f"| {name} | {params:.1f} | {batch} | {grid * grid} | {sec * 1e3:.1f} | "
                f"{batch / sec:.2f} | {cpu / batch:.3f} |"
            )
            print(row, f"({reps} timed calls)", flush=True)
            rows.append(row)
    body = (
        f"img2code on random {args.size}x{args.size} inputs, float32, eval mode, random weights; "
        "one warm-up call, then calls repeated for at least 4 s (released) / 2 s (small). "
        f"Command: `python bench/bench_vqvae.py{f' --threads {args.threads}' if args.threads else ''}`. "
        f"1-minute load average at the start: {load:.1f} (other jobs make wall-clock "
        "throughput a lower bound; CPU seconds per image, over all threads of this process, "
        "are less sensitive to that).\n\n" + "\n".join(rows)
    )
    if not args.no_write:
        write_section("VQ-VAE encoding", body)


if __name__ == "__main__":
    main()
