"""The released model size on this machine: memory, load time and sampling speed per format.

Makes a random checkpoint at the given size in the original layout (fp16, as released:
``mp_rank_00_model_states.pt`` + ``model_config.json``, vocabulary 58240, 1089 positions)
in a working folder (--scratch), converts it to safetensors, then measures, for each weight format,
in a fresh process each:
  * load: seconds and peak resident memory (``VmHWM``) of a process that only loads, and
    that peak over the weights' bytes;
  * decoding: seconds per sampled token at batch 1 and 8 with the key/value cache half
    full (544 positions), against the memory-bandwidth floor: the bytes a step must read
    (layer weights, the sampled rows of the output matrix, the cached keys and values)
    over the read bandwidth measured here;
  * the whole text2image process (``generate_samples.py``, batch 1, one 32x32-code
    image): its peak resident memory (``ru_maxrss``) and the time per image it reports.
The tokenizers are the demo's (its vocabulary padded to 58240 rows); the weights are
random, so the image is noise: what is measured is memory and time.  Writes the
"Released-size model" section of bench/RESULTS.md.

    python bench/bench_big.py --size 3.9B --scratch /tmp/cogview-big [--no-image] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from typing import Dict, List, Optional

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from arch import GPT2Config, save_checkpoint  # noqa: E402
from arch.lean_load import build_meta_model, load_model_weights, model_bytes  # noqa: E402
from arch.model_config import write_model_config  # noqa: E402
from bench.results import machine_description, write_section  # noqa: E402
from common.dtypes import DTYPES  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = {"1.3B": (24, 2048, 32), "3.9B": (48, 2560, 40)}  # layers, hidden, heads (the released 3.9B)
VOCAB, POSITIONS = 58240, 1089
VQVAE = os.path.join(ROOT, "pretrained", "vqvae", "shapes_vqvae_base.pt")
TEXT_TOKENIZER = os.path.join(ROOT, "pretrained", "text_tokenizer", "shapes.model")
IMAGE_ROWS = 512  # image codes of the demo VQ-VAE: the output rows an image step reads
CACHE_POSITIONS = 544  # half of a 1089-position sequence: the average context of an image
# (label, --dtype, --quantize, source): what is measured, by default
FORMATS = [
    ("bf16", "bfloat16", "none", "pt"),
    ("bf16, safetensors", "bfloat16", "none", "safetensors"),
    ("int8", "bfloat16", "int8", "pt"),
    ("fp16", "float16", "none", "pt"),
    ("fp32", "float32", "none", "pt"),
]
ERRORS_AT = "1.3B"  # the size whose bf16 and int8 logits are compared with float32
FP32_UP_TO = "1.3B"  # 3.9B in fp32 is 15.7 GB of weights: with a batch-8 cache past a 24 GB machine


def status_kib(field: str) -> int:
    """A ``/proc/self/status`` value in KiB (VmHWM: peak resident memory so far)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def read_bandwidth_gbs(gigabytes: float = 2.0) -> float:
    """Memory read bandwidth (GB/s): the best of 3 sums of a float32 tensor far larger than the caches."""
    big = torch.ones(int(gigabytes * 1e9) // 4)
    big.sum()
    best = min(_timed(big.sum) for _ in range(3))
    return big.numel() * 4 / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def gpt_config(layers: int, hidden: int, heads: int) -> GPT2Config:
    """The released layout at these dimensions (the defaults: 1089 positions, no memory window;
    dropout is off in the eval mode every measurement runs in)."""
    return GPT2Config(num_layers=layers, vocab_size=VOCAB, hidden_size=hidden, num_attention_heads=heads)


def make_random_checkpoint(folder: str, layers: int, hidden: int, heads: int) -> str:
    """A random fp16 checkpoint of the original layout in ``folder`` (kept when it exists
    for these dimensions); returns the folder.  Tensors are drawn one at a time in fp16,
    so making it needs the fp16 bytes once."""
    config_file = os.path.join(folder, "model_config.json")
    wanted = {"num_layers": layers, "hidden_size": hidden, "num_attention_heads": heads}
    if os.path.isfile(config_file):
        with open(config_file) as f:
            stored = json.load(f)
        if all(stored.get(k) == v for k, v in wanted.items()):
            return folder
        shutil.rmtree(folder)
    generator = torch.Generator().manual_seed(0)
    state = {}
    for key, meta in build_meta_model(gpt_config(layers, hidden, heads), torch.float16).state_dict().items():
        if "layernorm" in key and key.endswith("weight"):
            state[key] = torch.ones(meta.shape, dtype=torch.float16)
        elif key.endswith("bias"):
            state[key] = torch.zeros(meta.shape, dtype=torch.float16)
        else:
            state[key] = torch.empty(meta.shape, dtype=torch.float16).normal_(0.0, 0.02, generator=generator)
    save_checkpoint(folder, "release", state)
    del state
    write_model_config(
        folder,
        {
            **wanted,
            "max_position_embeddings": POSITIONS,
            "make_vocab_size_divisible_by": VOCAB,  # pads the demo tokenizers to the released 58240 rows
            "img_size": 256,
            "img_tokenizer_path": VQVAE,
            "txt_tokenizer_path": TEXT_TOKENIZER,
        },
    )
    return folder


def make_safetensors(src: str, dst: str) -> str:
    if not os.path.isfile(os.path.join(dst, "model.safetensors")):
        subprocess.run([sys.executable, "-m", "arch.convert_checkpoint", src, dst], cwd=ROOT, check=True)
    return dst


# ---------------------------------------------------------------- the measuring process


def decode_bytes(model, batch: int, positions: int, hidden: int, layers: int, kv_itemsize: int) -> int:
    """Bytes one decoding step reads: every layer's weights (and scales), the sampled rows of
    the output matrix and the cached keys and values."""
    layer_bytes = sum(t.numel() * t.element_size() for n, t in model.state_dict().items() if ".layers." in n)
    out_rows = IMAGE_ROWS * hidden * model.word_embeddings.weight.element_size()
    return layer_bytes + out_rows + 2 * layers * positions * hidden * batch * kv_itemsize


def worker(args) -> Dict[str, float]:
    """Load one format, time decoding steps; the numbers as a dict (printed as JSON)."""
    torch.set_num_threads(args.threads)
    base = status_kib("VmRSS")
    layers, hidden, heads = args.dims
    start = time.perf_counter()
    model = build_meta_model(gpt_config(layers, hidden, heads), DTYPES[args.dtype], args.quantize)
    weights = model_bytes(model)
    model = model.to_empty(device="cpu")
    load_model_weights(model, args.load)
    model.eval()
    result = {
        "weights_gib": weights / 2**30,
        "load_s": time.perf_counter() - start,
        "load_peak_gib": status_kib("VmHWM") / 2**20,
        "base_gib": base / 2**20,
    }
    result["load_peak_over_weights"] = result["load_peak_gib"] / result["weights_gib"]
    bandwidth = read_bandwidth_gbs()
    result["bandwidth_gbs"] = bandwidth
    dtype = DTYPES[args.dtype]
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for batch in args.batches:
            cache = model.new_kv_cache(POSITIONS)
            head = hidden // heads
            for layer in range(layers):
                kv = torch.randn(2, batch, heads, CACHE_POSITIONS, head, generator=generator).to(dtype)
                cache.extend(layer, kv[0], kv[1])
            times = []
            for step in range(args.steps + 2):
                ids = torch.randint(0, VOCAB, (batch, 1), generator=generator)
                pos = torch.full((batch, 1), CACHE_POSITIONS + step)
                elapsed = _timed(
                    lambda ids=ids, pos=pos, cache=cache: model(
                        ids, pos, 0, kv_cache=cache, last_only=True, vocab_range=(0, IMAGE_ROWS)
                    )
                )
                times.append(elapsed)
            per_step = sorted(times[2:])[len(times[2:]) // 2]  # median, after two warm-up steps
            floor = decode_bytes(model, batch, CACHE_POSITIONS, hidden, layers, dtype.itemsize) / (bandwidth * 1e9)
            result[f"step_s_b{batch}"] = per_step
            result[f"floor_s_b{batch}"] = floor
    result["peak_gib"] = status_kib("VmHWM") / 2**20
    return result


def logit_errors(args) -> Dict[str, Dict[str, float]]:
    """Logits of bf16 and of int8 (bf16 activations) against float32 on one random 64-token
    row: max and mean absolute difference, and how many of float32's top-5 ids each keeps."""
    torch.set_num_threads(args.threads)
    layers, hidden, heads = args.dims
    tokens = torch.randint(0, VOCAB, (1, 64), generator=torch.Generator().manual_seed(0))
    positions = torch.arange(64).unsqueeze(0)
    mask = torch.ones(1, 1, 64, 64).tril_()
    results, reference = {}, None
    for label, dtype, quantize in (
        ("fp32", "float32", "none"),
        ("bf16", "bfloat16", "none"),
        ("int8", "bfloat16", "int8"),
    ):
        model = build_meta_model(gpt_config(layers, hidden, heads), DTYPES[dtype], quantize).to_empty(device="cpu")
        load_model_weights(model, args.load)
        with torch.no_grad():
            logits = model.eval()(tokens, positions, mask.to(DTYPES[dtype]))[0].float()
        del model
        if reference is None:
            reference = logits
            continue
        diff = (logits - reference).abs()
        top = reference.topk(5, dim=-1).indices
        kept = (logits.topk(5, dim=-1).indices.unsqueeze(-1) == top.unsqueeze(-2)).any(-1).float().mean()
        results[label] = {"max_abs": diff.max().item(), "mean_abs": diff.mean().item(), "top5_kept": kept.item()}
    results["logit_scale"] = {"max_abs": reference.abs().max().item(), "mean_abs": reference.abs().mean().item()}
    return results


# ---------------------------------------------------------------- the driver


def run_worker(load: str, dims, dtype: str, quantize: str, batches: List[int], steps: int, threads: int) -> dict:
    command = [
        sys.executable,
        os.path.abspath(__file__),
        "--worker",
        "--load",
        load,
        "--dims",
        *map(str, dims),
        "--dtype",
        dtype,
        "--quantize",
        quantize,
        "--threads",
        str(threads),
        "--steps",
        str(steps),
        "--batches",
        *map(str, batches),
    ]
    out = subprocess.run(command, cwd=ROOT, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def whole_image(load: str, dtype: str, quantize: str, scratch: str, threads: int) -> Dict[str, float]:
    """Peak resident memory and the reported time per image of one generate_samples.py run."""
    prompt = os.path.join(scratch, "prompt.txt")
    with open(prompt, "w") as f:
        f.write("a small red circle in the top left\n")
    out = os.path.join(scratch, "images")
    shutil.rmtree(out, ignore_errors=True)
    flags = {"bfloat16": ["--bf16"], "float16": ["--fp16"], "float32": []}[dtype]
    command = [sys.executable, "generate_samples.py", "--load", load, *flags, "--quantize", quantize]
    command += ["--generation-task", "text2image", "--input-source", prompt, "--output-path", out]
    command += ["--batch-size", "1", "--max-inference-batch-size", "1", "--threads", str(threads)]
    # a fresh parent whose only child is the run: its RUSAGE_CHILDREN peak is the run's own
    report = "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
    report += "print('MAXRSS_KIB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)"
    start = time.perf_counter()
    process = subprocess.run(
        [sys.executable, "-c", report, *command], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    output = process.stdout
    wall = time.perf_counter() - start
    if process.returncode != 0:
        raise RuntimeError(f"generate_samples.py failed:\n{output[-2000:]}")
    per_image = None
    for line in output.replace("\r", "\n").splitlines():
        if "s per image)" in line:
            per_image = float(line.split("(")[-1].split("s per image")[0])
    images = [f for _, _, files in os.walk(out) for f in files if f.endswith(".jpg")]
    peak = int(output.split("MAXRSS_KIB")[-1].split()[0])
    return {"image_s": per_image, "process_s": wall, "process_peak_gib": peak / 2**20, "images": len(images)}


def fmt(value: Optional[float], digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), nargs="+", default=["1.3B", "3.9B"])
    parser.add_argument("--scratch", default="/tmp/cogview-big", help="folder for the random checkpoints (GBs)")
    parser.add_argument("--formats", nargs="+", default=None, help="labels of FORMATS to measure (default: all)")
    parser.add_argument("--image-formats", nargs="+", default=["bf16", "int8"], help="formats timed on a whole image")
    parser.add_argument("--image-sizes", nargs="+", default=["3.9B"], help="sizes timed on a whole image")
    parser.add_argument("--no-image", action="store_true", help="skip the whole-image runs")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--no-write", action="store_true")
    # the measuring process
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--load", help=argparse.SUPPRESS)
    parser.add_argument("--dims", type=int, nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--dtype", default="bfloat16", help=argparse.SUPPRESS)
    parser.add_argument("--quantize", default="none", help=argparse.SUPPRESS)
    parser.add_argument("--errors", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(logit_errors(args) if args.errors else worker(args)))
        return
    rows, errors = [], None
    for size in args.size:
        dims = SIZES[size]
        folder = make_random_checkpoint(os.path.join(args.scratch, size), *dims)
        safetensors = make_safetensors(folder, os.path.join(args.scratch, size + "-safetensors"))
        for label, dtype, quantize, source in FORMATS:
            if (args.formats and label not in args.formats) or (dtype == "float32" and size != FP32_UP_TO):
                continue
            load = safetensors if source == "safetensors" else folder
            print(f"{size} {label}: loading and timing steps", flush=True)
            r = run_worker(load, dims, dtype, quantize, args.batches, args.steps, args.threads)
            if not args.no_image and label in args.image_formats and size in args.image_sizes:
                print(f"{size} {label}: one whole image", flush=True)
                r.update(whole_image(load, dtype, quantize, args.scratch, args.threads))
            print(json.dumps(r), flush=True)
            rows.append((size, label, r))
        if size == ERRORS_AT:
            print(f"{size}: logit errors of bf16 and int8 against fp32", flush=True)
            command = [sys.executable, os.path.abspath(__file__), "--worker", "--errors", "--load", folder]
            command += ["--dims", *map(str, dims), "--threads", str(args.threads)]
            out = subprocess.run(command, cwd=ROOT, check=True, capture_output=True, text=True).stdout
            errors = json.loads(out.strip().splitlines()[-1])
            print(json.dumps(errors), flush=True)
    lines = [
        "| size | format | weights GiB | load s | load peak GiB (x weights) | s/token b=1 (floor) | "
        "s/token b=8 (floor) | image s | whole process peak GiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for size, label, r in rows:
        lines.append(
            f"| {size} | {label} | {fmt(r['weights_gib'])} | {fmt(r['load_s'], 1)} | "
            f"{fmt(r['load_peak_gib'])} ({fmt(r['load_peak_over_weights'])}x) | "
            f"{fmt(r.get('step_s_b1'), 3)} ({fmt(r.get('floor_s_b1'), 3)}) | "
            f"{fmt(r.get('step_s_b8'), 3)} ({fmt(r.get('floor_s_b8'), 3)}) | "
            f"{fmt(r.get('image_s'), 0)} | {fmt(r.get('process_peak_gib'))} |"
        )
    if errors:
        lines += [
            "",
            "| logits against fp32 (1.3B, 64 tokens) | max abs | mean abs | fp32's top-5 kept |",
            "|---|---|---|---|",
        ]
        for label in ("bf16", "int8"):
            e = errors[label]
            lines.append(f"| {label} | {e['max_abs']:.3f} | {e['mean_abs']:.4f} | {100 * e['top5_kept']:.0f}% |")
        scale = errors["logit_scale"]
        lines.append(f"| (fp32 logits themselves) | {scale['max_abs']:.2f} | {scale['mean_abs']:.3f} | |")
    bandwidth = rows[0][2]["bandwidth_gbs"] if rows else 0.0
    body = "\n".join(lines) + (
        f"\n\nRandom weights at the released dimensions (1.3B: 24 layers, hidden 2048, 32 heads; 3.9B: 48 layers, "
        f"hidden 2560, 40 heads; vocabulary {VOCAB}, {POSITIONS} positions), loaded from an fp16 checkpoint of the "
        f"original layout (safetensors: converted by `python -m arch.convert_checkpoint`). {args.threads} threads. "
        f"Floor: bytes one step reads (layer weights, {IMAGE_ROWS} output rows, keys and values of "
        f"{CACHE_POSITIONS} cached positions) over the read bandwidth measured here, {bandwidth:.1f} GB/s. "
        "Load peak: the loading process's VmHWM, the interpreter and torch included. Image: one 32x32-code "
        "text2image image at batch 1 as generate_samples.py reports it; whole process peak: its ru_maxrss "
        f"(VQ-VAE and key/value cache included).\n\nCommand: `python bench/bench_big.py --size {' '.join(args.size)}"
        f"{' --no-image' if args.no_image else ''}`. Machine: {machine_description()}."
    )
    print(body)
    if not args.no_write:
        write_section("Released-size model", body)


if __name__ == "__main__":
    main()
