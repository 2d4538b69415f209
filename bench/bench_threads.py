"""Decoding speed by thread count, on an idle machine and beside one busy process.

Runs the demo model's text2image (``generate_samples.py``, the two first prompts of
input.txt, 4 images each) with ``--threads`` fixed to every core, fixed to 1, and left
to the sampler's own choice (generation/threads.py: it times steps on each count and
keeps the faster), first alone, then beside a process spinning on one core.  Reports
image tokens per second as the command line reports the time per image.  Writes the
"Decoding threads" section of bench/RESULTS.md.

    python bench/bench_threads.py [--no-write]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.results import machine_description, write_section  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join("pretrained", "cogview", "cogview-demo")
TOKENS_PER_IMAGE = 64  # the demo model's 8x8 codes
BUSY = "while True: pass"


def seconds_per_image(threads: int, scratch: str) -> float:
    """The mean of the per-image times generate_samples.py reports for the prompts."""
    prompts = os.path.join(scratch, "prompts.txt")
    with open(os.path.join(ROOT, "input.txt")) as f, open(prompts, "w") as out:
        out.writelines(f.readlines()[:2])
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    command = [sys.executable, "generate_samples.py", "--load", DEMO, "--generation-task", "text2image"]
    command += ["--input-source", prompts, "--output-path", os.path.join(scratch, f"out{threads}")]
    command += ["--batch-size", "4", "--max-inference-batch-size", "4", "--threads", str(threads)]
    run = subprocess.run(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"generate_samples.py failed:\n{run.stdout[-2000:]}")
    output = run.stdout
    times = [
        float(line.split("(")[-1].split("s per image")[0])
        for line in output.replace("\r", "\n").splitlines()
        if "s per image)" in line
    ]
    return sum(times) / len(times)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    cores = len(os.sched_getaffinity(0))
    settings = [(f"--threads {cores}", cores), ("--threads 1", 1), ("chosen by timing (default)", 0)]
    rates = {}
    with tempfile.TemporaryDirectory() as scratch:
        for load in ("idle", "beside one busy process"):
            busy = subprocess.Popen([sys.executable, "-c", BUSY]) if load != "idle" else None
            try:
                for label, threads in settings:
                    rates[(load, label)] = TOKENS_PER_IMAGE / seconds_per_image(threads, scratch)
                    print(f"{load}, {label}: {rates[(load, label)]:.0f} tokens/s", flush=True)
            finally:
                if busy is not None:
                    busy.kill()
                    busy.wait()
    lines = ["| threads | idle: tokens/s | beside one busy process: tokens/s | slow-down |", "|---|---|---|---|"]
    for label, _ in settings:
        idle, busy = rates[("idle", label)], rates[("beside one busy process", label)]
        lines.append(f"| {label} | {idle:.0f} | {busy:.0f} | {idle / busy:.1f}x |")
    body = "\n".join(lines) + (
        "\n\nThe demo model's text2image through `generate_samples.py` (2 prompts x 4 images of 64 codes, "
        "batch 4), image tokens per second from the time per image it reports. The busy process spins on "
        "one core. Default: the sampler times 3 steps on each thread count, keeps the faster for 128 steps, "
        "then times again (generation/threads.py); `--threads N` or `OMP_NUM_THREADS` fix the count.\n\n"
        f"Command: `python bench/bench_threads.py`. Machine: {machine_description()}."
    )
    print(body)
    if not args.no_write:
        write_section("Decoding threads", body)


if __name__ == "__main__":
    main()
