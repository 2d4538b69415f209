"""Write one benchmark's section of bench/RESULTS.md, keeping the other sections."""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re

import torch

from common.fileio import write_text_atomic

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md")
HEADER = (
    "# Benchmark results\n\nEach section is rewritten by the script named in it, stamped with the machine and the date\n"
    "([docs/benchmarks.md](../docs/benchmarks.md)).\n"
)


def machine_description() -> str:
    """CPU model, core count, torch version and threads: the context of a number."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {platform.system()} {platform.release()}"
    )


def write_section(name: str, body: str, path: str = RESULTS) -> None:
    """Replace (or append) the section ``## name`` with ``body``, stamped with machine and date."""
    stamp = f"Machine: {machine_description()}. Date: {datetime.date.today().isoformat()}.\n\n"
    section = f"## {name}\n\n{stamp}{body.strip()}\n"
    text = open(path).read() if os.path.exists(path) else HEADER
    pattern = re.compile(rf"^## {re.escape(name)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    write_text_atomic(path, text)


def add_write_results_argument(parser: argparse.ArgumentParser) -> None:
    """``--write-results [FILE]`` of the scripts that write results on request: None when not
    given, else the file (RESULTS when given bare)."""
    parser.add_argument(
        "--write-results",
        nargs="?",
        const=RESULTS,
        default=None,
        metavar="FILE",
        help=f"write the table to FILE (default {os.path.relpath(RESULTS)})",
    )
