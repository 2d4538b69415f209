"""Model-parallel generation: the demo model split in two by arch.change_mp and run by two
processes on gloo samples the tokens, prints the lines and writes the files of the whole
model in one process (tests/mpgen_worker.py, float64)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from arch.change_mp import main as change_mp_main

from .catalogue import tree_hashes
from .conftest import ROOT

DEMO = os.path.join(ROOT, "pretrained", "cogview", "cogview-demo")
WORKER = os.path.join(ROOT, "tests", "mpgen_worker.py")
EXAMPLES = os.path.join(ROOT, "assets", "examples")


@pytest.fixture(scope="module")
def demo_mp2(tmp_path_factory) -> str:
    folder = str(tmp_path_factory.mktemp("split") / "cogview-demo-mp2")
    assert change_mp_main([DEMO, folder, "--model-parallel-size", "2"]) == 0
    return folder


def env() -> dict:
    e = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", PYTHONUNBUFFERED="1")
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        e.pop(key, None)
    return e


def tasks(folder, load: str, model_parallel_size: int) -> list:
    """text2image (guided, two lines), image2text (guided, ranked captions) and post-selection."""
    images = [os.path.join(EXAMPLES, name) for name in ("red_star.png", "green_triangle.png")]
    inputs = {
        "text2image": ["a red circle", "a blue square"],
        "image2text": images[:1],
        "post-selection": ["a red star\t" + "\t".join(images)],
    }
    argv = []
    for task, lines in inputs.items():
        source = os.path.join(folder, f"{task}.txt")
        with open(source, "w") as f:
            f.write("\n".join(lines) + "\n")
        argv += ["--next"] if argv else []
        argv += [
            *("--load", load, "--device", "cpu", "--seed", "7", "--batch-size", "2"),
            *("--generation-task", task, "--input-source", source, "--output-path", os.path.join(folder, "out")),
            *("--model-parallel-size", str(model_parallel_size)),
        ]
    return argv


def run(folder, launcher: list, load: str, model_parallel_size: int):
    os.makedirs(folder)
    result = subprocess.run(
        [*launcher, WORKER, os.path.join(folder, "record"), *tasks(folder, load, model_parallel_size)],
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    records = {}
    for rank in range(model_parallel_size):
        with open(os.path.join(folder, f"record.rank{rank}.json")) as f:
            records[rank] = json.load(f)
    # timings and the run's own folder aside, what a user reads
    printed = re.sub(r" in \d+\.\ds( \(\d+\.\d+s per image\))?", "", result.stdout.replace(folder, "RUN"))
    return records, printed, tree_hashes(os.path.join(folder, "out"))


@pytest.mark.slow
def test_two_processes_generate_what_one_does(demo_mp2, tmp_path):
    one, one_printed, one_files = run(str(tmp_path / "mp1"), [sys.executable], DEMO, 1)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    two, two_printed, two_files = run(str(tmp_path / "mp2"), torchrun, demo_mp2, 2)
    assert one[0]["codes"] == two[0]["codes"] == two[1]["codes"] == [0, 0, 0]
    # 2 text2image lines, 1 image2text line: one sampler call each
    assert len(one[0]["tokens"]) == 3
    assert two[0]["tokens"] == one[0]["tokens"]  # the slices drew what the whole model drew
    assert two[1]["tokens"] == one[0]["tokens"]  # and fed the same tokens on
    assert len(one_files) == 7  # 2 x (2 samples + concat.jpg) and the scores file
    assert two_files == one_files  # byte for byte
    assert two_printed == one_printed  # captions, their ranking scores, post-selection scores: once
    assert one_printed.count("line 1 sample 0:") == 1 and "line 1: scores " in one_printed


def test_model_config_records_the_vocabulary_padding_of_a_model_parallel_run(tmp_path):
    """Training with --model-parallel-size 2 pads the vocabulary to a multiple of 2 x 128 rows;
    model_config.json says so, so generation builds those rows whatever its own size."""
    from arguments import get_args
    from training.checkpointing import model_config_from_args

    args = get_args(["--make-vocab-size-divisible-by", "128"])
    assert model_config_from_args(str(tmp_path), args)["make_vocab_size_divisible_by"] == 128
    args.model_parallel_size = 2  # what get_args gives each of two processes
    assert model_config_from_args(str(tmp_path), args)["make_vocab_size_divisible_by"] == 256
