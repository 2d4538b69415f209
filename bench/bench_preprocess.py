"""Preprocessing throughput (images/s) of preprocess_entry's pipeline on generated images.

Runs the whole pipeline (decode + resize in --num-workers processes, VQ-VAE encode in the
main process, LMDB writes) on JPEGs a bit larger than 256 px, with the released VQ-VAE
architecture (random weights: speed does not depend on them) and with a small one, each
with 1 and 2 workers. Writes the section "Preprocessing throughput" of bench/RESULTS.md.

    OMP_NUM_THREADS=1 python -m bench.bench_preprocess [--released-images 40] [--small-images 500]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from typing import List, Tuple

import numpy as np
import torch
from PIL import Image, ImageDraw

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from bench.results import write_section  # noqa: E402
from preprocess import PreprocessConfig, run  # noqa: E402
from vqvae import VQVAE, new_model  # noqa: E402

SMALL_CONFIG = dict(channel=64, n_res_block=0, n_res_channel=32, embed_dim=32, n_embed=1024, stride=6)


def make_images(folder: str, n: int, seed: int = 0) -> str:
    """n 320x256 JPEG pictures (shapes + noise, so JPEG decoding does real work) and captions."""
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(n):
        base = rng.integers(0, 256, (256, 320, 3), dtype=np.uint8) // 4 + rng.integers(0, 192, 3, dtype=np.uint8)
        img = Image.fromarray(base.astype(np.uint8), "RGB")
        d = ImageDraw.Draw(img)
        for _ in range(6):
            x, y = (int(v) for v in rng.integers(0, 280, 2))
            d.ellipse(
                [x, y, x + int(rng.integers(10, 90)), y + int(rng.integers(10, 90))],
                fill=tuple(int(v) for v in rng.integers(0, 256, 3)),
            )
        name = f"img{i:04d}.jpg"
        img.save(os.path.join(folder, name), quality=90)
        lines.append(f"{name}\tpicture number {i}")
    captions = os.path.join(folder, "captions.tsv")
    with open(captions, "w") as f:
        f.write("\n".join(lines) + "\n")
    return captions


def measure(captions: str, model_path: str, workers: int, n: int, out: str, batch: int) -> Tuple[float, int]:
    cfg = PreprocessConfig(
        captions=captions,
        output=out,
        img_tokenizer_path=model_path,
        output_format="TextCode",
        img_size=256,
        num_workers=workers,
        batch_size=batch,
        progress=False,
        overwrite=True,
    )
    start = time.perf_counter()
    summary = run(cfg)
    seconds = time.perf_counter() - start
    if summary.total_rows != n:
        raise RuntimeError(f"expected {n} rows, got {summary.total_rows}")
    return seconds, summary.total_rows


def main(argv: List[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--released-images", type=int, default=40)
    p.add_argument("--small-images", type=int, default=500)
    p.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md alone")
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_pre_") as tmp:
        folder = os.path.join(tmp, "images")
        os.makedirs(folder)
        n_max = max(args.released_images, args.small_images)
        t0 = time.perf_counter()
        make_images(folder, n_max)
        print(f"generated {n_max} images in {time.perf_counter() - t0:.1f}s", flush=True)
        torch.manual_seed(0)
        models = {
            "released (channel 512, 8192 codes)": (new_model(), args.released_images, 8),
            "small (channel 64, 1024 codes)": (VQVAE(**SMALL_CONFIG), args.small_images, 32),
        }
        for label, (model, n, batch) in models.items():
            model_path = os.path.join(tmp, "vqvae.pt")
            torch.save(model.state_dict(), model_path)
            captions = os.path.join(folder, f"captions_{n}.tsv")
            with open(os.path.join(folder, "captions.tsv")) as f:
                lines = f.readlines()[:n]
            with open(captions, "w") as f:
                f.writelines(lines)
            for workers in (1, 2):
                seconds, count = measure(captions, model_path, workers, n, os.path.join(tmp, "out.lmdb"), batch)
                rows.append((label, workers, count, batch, seconds, count / seconds))
                print(
                    f"{label}: {workers} worker(s), {count} images in {seconds:.1f}s = {count / seconds:.2f} images/s",
                    flush=True,
                )
    table = ["| VQ-VAE | workers | images | batch | seconds | images/s |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    table += [f"| {m} | {w} | {c} | {b} | {s:.1f} | {r:.2f} |" for m, w, c, b, s, r in rows]
    body = (
        "`python -m bench.bench_preprocess` (OMP_NUM_THREADS="
        f"{os.environ.get('OMP_NUM_THREADS', 'unset')}): preprocess_entry's pipeline on 320x256 JPEGs "
        "encoded at 256 px (32x32 codes), TextCode rows, CPU, end to end (VQ-VAE load, worker start, "
        "LMDB writes included).\n\n" + "\n".join(table) + "\n\n"
        "With the released architecture the VQ-VAE encode in the main process dominates on CPU "
        "(about 44 GFLOP per 256 px image); use --device cuda for real datasets. Decode workers only "
        "help when cores are free beyond the encoder's threads: on a machine with few cores a second "
        "worker competes with the encoder (and with anything else running)."
    )
    print("\n".join(table))
    if not args.no_write:
        write_section("Preprocessing throughput", body)


if __name__ == "__main__":
    main()
