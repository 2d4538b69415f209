"""The bad-input catalogue of generation: ordinary mistakes and faults a user meets with
generate_samples.py, the generation scripts and checkpoint loading. Each case asserts the exit
code, one stderr line naming the problem (and the fix), no traceback, that the other lines
still run, and that no earlier output is overwritten or lost.

Most cases call ``generate_samples.main`` in-process on the shipped 64 px demo model; signals,
scripts and exit codes of whole processes run as subprocesses.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from typing import List

import numpy as np
import pytest
import torch
from PIL import Image

import generate_samples
import generation.outputs
from arch.change_mp import main as change_mp_main

from .catalogue import (
    ROOT,
    Result,
    assert_fails_cleanly,
    assert_no_traceback,
    error_lines,
    read_only,
    run,
    small_disk,
    tree_hashes,
)

pytestmark = [pytest.mark.catalogue]

DEMO = os.path.join(ROOT, "pretrained", "cogview", "cogview-demo")
DEMO_SR = os.path.join(ROOT, "pretrained", "cogview", "cogview-demo-sr")
VQVAE = os.path.join(ROOT, "pretrained", "vqvae", "shapes_vqvae_base.pt")
SP = os.path.join(ROOT, "pretrained", "text_tokenizer", "shapes.model")
EXAMPLES = os.path.join(ROOT, "assets", "examples")
RED_STAR = os.path.join(EXAMPLES, "red_star.png")


def gen(capsys, *argv: str, load: str = DEMO) -> Result:
    """generate_samples.main in-process on the demo model, one sample per query."""
    try:
        code = generate_samples.main(["--load", load, "--device", "cpu", "--batch-size", "1", "--seed", "1", *argv])
    except SystemExit as exc:  # argparse
        code = exc.code
    out, err = capsys.readouterr()
    return Result(code, out, err)


def lines_file(path, *lines: str) -> str:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


PROGRESS_BAR = re.compile(r"\d+%\|")


def problems(result: Result) -> List[str]:
    """catalogue.error_lines without the progress bars (their label is ``line N``)."""
    return [line for line in error_lines(result) if not PROGRESS_BAR.search(line)]


def one_error(result: Result, *needles: str, code=None) -> None:
    """assert_fails_cleanly, and no other stderr line reports a problem."""
    assert_fails_cleanly(result, *needles, code=code)
    others = [line for line in problems(result) if not all(n in line for n in needles)]
    assert not others, result.err


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread, as the subprocess cases run (OMP_NUM_THREADS=1): on 2 shared cores a
    second thread only waits for the first."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def no_model(monkeypatch):
    """Fails the test if the model would be loaded: a refusal must come first."""

    def refuse(cfg):
        raise AssertionError("the model was loaded before the refusal")

    monkeypatch.setattr(generate_samples, "setup", refuse)


def images_under(folder) -> List[str]:
    found = []
    for root, _, files in os.walk(folder):
        found += [os.path.join(root, f) for f in files if f.endswith(".jpg")]
    return sorted(found)


def assert_whole_images(folder) -> None:
    """Every file under ``folder`` is a complete image; no temporary file is left."""
    for root, _, files in os.walk(folder):
        for name in files:
            assert not name.startswith(".tmp-"), f"temporary file left: {name}"
            with Image.open(os.path.join(root, name)) as img:
                img.load()


def checkpoint_copy(tmp_path, payload=None) -> str:
    """A checkpoint folder with the demo's model_config.json (tokenizer paths absolute) and
    ``payload`` (default: the demo's own weights) as its model-states file."""
    folder = tmp_path / "ckpt"
    (folder / "1").mkdir(parents=True)
    config = json.loads(open(os.path.join(DEMO, "model_config.json")).read())
    config.update(img_tokenizer_path=VQVAE, txt_tokenizer_path=SP)
    (folder / "model_config.json").write_text(json.dumps(config))
    (folder / "latest_checkpointed_iteration.txt").write_text("1")
    if payload is None:
        os.symlink(
            os.path.join(DEMO, "3000", "mp_rank_00_model_states.pt"), folder / "1" / "mp_rank_00_model_states.pt"
        )
    else:
        torch.save(payload, folder / "1" / "mp_rank_00_model_states.pt")
    return str(folder)


def demo_state():
    return torch.load(os.path.join(DEMO, "3000", "mp_rank_00_model_states.pt"), weights_only=True)["module"]


# ---------------------------------------------------------------- 1. output location, checked first


def test_output_path_that_is_a_file_is_refused_before_loading(tmp_path, capsys, no_model):
    target = tmp_path / "results.txt"
    target.write_text("keep me")
    before = tree_hashes(str(target))
    result = gen(
        capsys, "--input-source", lines_file(tmp_path / "in.txt", "a red circle"), "--output-path", str(target)
    )
    one_error(result, "--output-path", "results.txt", "is a file", code=1)
    assert tree_hashes(str(target)) == before


def test_output_path_below_a_file_is_refused(tmp_path, capsys, no_model):
    (tmp_path / "file").write_text("x")
    result = gen(
        capsys,
        "--input-source",
        lines_file(tmp_path / "in.txt", "a red"),
        "--output-path",
        str(tmp_path / "file" / "o"),
    )
    one_error(result, "--output-path", "cannot create it", code=1)


def test_read_only_output_folder_is_refused_before_loading(tmp_path, capsys, no_model):
    out = tmp_path / "out"
    (out / "earlier").mkdir(parents=True)
    (out / "earlier" / "0.jpg").write_bytes(b"earlier run")
    before = tree_hashes(str(out))
    with read_only(str(out)):
        result = gen(
            capsys, "--input-source", lines_file(tmp_path / "in.txt", "a red circle"), "--output-path", str(out)
        )
    one_error(result, "--output-path", "cannot write there", "Read-only", code=1)
    assert tree_hashes(str(out)) == before


def test_disk_filling_up_fails_the_line_not_the_run(tmp_path, capsys):
    source = lines_file(tmp_path / "in.txt", "a red circle", "a blue square", "a green star", "a pink heart")
    with small_disk(40) as disk:  # 10 pages of tmpfs: one line of 4 images and a grid fits, not three
        result = gen(capsys, "--input-source", source, "--output-path", disk, "--batch-size", "4")
        assert_no_traceback(result)
        assert result.code == 1
        full = [line for line in problems(result) if "No space left on device" in line]
        assert full and all(line.startswith("line ") for line in full), result.err
        assert "line 4" in result.text  # the lines after the first failure were still tried
        assert sorted(os.listdir(os.path.join(disk, "a_red_circle"))) == [
            "0.jpg",
            "1.jpg",
            "2.jpg",
            "3.jpg",
            "concat.jpg",
        ]
        assert_whole_images(disk)


# ---------------------------------------------------------------- 2. nothing is overwritten


def test_queries_sharing_their_first_characters_get_their_own_folders(tmp_path, capsys):
    out = tmp_path / "out"
    source = lines_file(
        tmp_path / "in.txt", "a red circle in the top left corner", "a red circle in the top right corner"
    )
    result = gen(capsys, "--input-source", source, "--output-path", str(out))
    assert result.code == 0 and "Traceback" not in result.text
    assert sorted(os.listdir(out)) == ["a_red_circle_in_the", "a_red_circle_in_the-1"]
    assert "-> " + str(out / "a_red_circle_in_the-1") in result.out


def test_running_the_same_input_twice_keeps_the_first_run(tmp_path, capsys):
    out = tmp_path / "out"
    source = lines_file(tmp_path / "in.txt", "a red circle")
    assert gen(capsys, "--input-source", source, "--output-path", str(out)).code == 0
    first = tree_hashes(str(out))
    result = gen(capsys, "--input-source", source, "--output-path", str(out), "--seed", "2")
    assert result.code == 0 and "-> " + str(out / "a_red_circle-1") in result.out
    assert {k: v for k, v in tree_hashes(str(out)).items() if k.startswith("a_red_circle/")} == first


def test_with_id_reused_gets_a_new_folder(tmp_path, capsys):
    out = tmp_path / "out"
    source = lines_file(tmp_path / "in.txt", "cat7\ta red circle", "cat7\ta blue square")
    result = gen(capsys, "--input-source", source, "--output-path", str(out), "--with-id")
    assert result.code == 0 and sorted(os.listdir(out)) == ["cat7", "cat7-1"]


def test_debug_grid_with_a_taken_name_is_not_replaced(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(generation.outputs.time, "strftime", lambda fmt: "01-02-03-04-05")  # same second
    out = tmp_path / "out"
    out.mkdir()
    (out / "a_red_circle-01-02-03-04-05.jpg").write_bytes(b"an earlier grid")
    before = tree_hashes(str(out))
    result = gen(
        capsys,
        "--input-source",
        lines_file(tmp_path / "in.txt", "a red circle", "a red circle"),
        "--output-path",
        str(out),
        "--debug",
    )
    assert result.code == 0 and "Traceback" not in result.text
    assert set(os.listdir(out)) == {f"a_red_circle-01-02-03-04-05{s}.jpg" for s in ("", "-1", "-2")}
    assert tree_hashes(str(out))["a_red_circle-01-02-03-04-05.jpg"] == before["a_red_circle-01-02-03-04-05.jpg"]


def test_super_resolution_grid_with_a_taken_name_is_not_replaced(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(generation.outputs.time, "strftime", lambda fmt: "01-02-03-04-05")
    out = tmp_path / "out"
    out.mkdir()
    taken = out / "a_red_star-01-02-03-04-05.jpg"
    taken.write_bytes(b"an earlier grid")
    result = gen(
        capsys,
        "--generation-task",
        "super-resolution",
        "--input-source",
        lines_file(tmp_path / "in.txt", f"a red star\t{RED_STAR}"),
        "--output-path",
        str(out),
        load=DEMO_SR,
    )
    assert result.code == 0 and "-> " + str(out / "a_red_star-01-02-03-04-05-1.jpg") in result.out
    assert taken.read_bytes() == b"an earlier grid"


def test_post_selection_appends_to_its_scores_file(tmp_path, capsys):
    out = tmp_path / "out"
    source = lines_file(tmp_path / "in.txt", f"a red star\t{RED_STAR}\t{os.path.join(EXAMPLES, 'yellow_heart.png')}")
    assert (
        gen(capsys, "--generation-task", "post-selection", "--input-source", source, "--output-path", str(out)).code
        == 0
    )
    first = (out / "scores_rank_0.txt").read_text()
    assert (
        gen(capsys, "--generation-task", "post-selection", "--input-source", source, "--output-path", str(out)).code
        == 0
    )
    both = (out / "scores_rank_0.txt").read_text()
    assert both.startswith(first) and both.count("\n") == 4


# ---------------------------------------------------------------- 3. one bad line stops nothing


def test_a_line_that_is_not_utf8_fails_alone(tmp_path, capsys):
    source = tmp_path / "in.txt"
    source.write_bytes(b"a red \xff circle\na blue square\n")
    result = gen(capsys, "--input-source", str(source), "--output-path", str(tmp_path / "out"))
    one_error(result, "line 1: not valid UTF-8", code=1)
    assert os.listdir(tmp_path / "out") == ["a_blue_square"]


def test_image_paths_with_spaces(tmp_path, capsys):
    folder = tmp_path / "my images (v2)"
    folder.mkdir()
    shutil.copy(RED_STAR, folder / "red star.png")
    path = str(folder / "red star.png")
    result = gen(
        capsys,
        "--generation-task",
        "image2text",
        "--input-source",
        lines_file(tmp_path / "in.txt", path),
        "--no-caption-rerank",
    )
    assert result.code == 0 and "line 1 sample 0:" in result.out, result.err
    result = gen(
        capsys,
        "--generation-task",
        "inpainting",
        "--input-source",
        lines_file(tmp_path / "in2.txt", f"a red star\t{path}\t0,0,0.5,0.5"),
        "--output-path",
        str(tmp_path / "out"),
    )
    assert result.code == 0 and os.listdir(tmp_path / "out") == ["a_red_star"], result.err


def test_a_missing_image_path_with_spaces_is_named_whole(tmp_path, capsys):
    path = str(tmp_path / "no such dir" / "red star.png")
    result = gen(
        capsys, "--generation-task", "image2text", "--input-source", lines_file(tmp_path / "in.txt", path, RED_STAR)
    )
    one_error(result, "line 1:", path, "no such file", code=1)
    assert "line 2 sample 0:" in result.out


@pytest.mark.parametrize("content", ["", "\n\n  \n"], ids=["empty", "blank-lines-only"])
def test_input_without_queries_says_there_is_nothing_to_do(tmp_path, capsys, no_model, content):
    source = tmp_path / "in.txt"
    source.write_text(content)
    result = gen(capsys, "--input-source", str(source), "--output-path", str(tmp_path / "out"))
    assert result.code == 0 and "Traceback" not in result.text
    assert [line for line in result.err.splitlines() if line] == [
        f"generate_samples.py: {source} holds no queries (blank lines are skipped); nothing to do"
    ]
    assert not (tmp_path / "out").exists()


def test_blank_lines_are_skipped_silently(tmp_path, capsys):
    source = lines_file(tmp_path / "in.txt", "", "a red circle", "   ", "", "a blue square", "")
    result = gen(capsys, "--input-source", source, "--output-path", str(tmp_path / "out"))
    assert result.code == 0 and "Traceback" not in result.text
    assert "failed" not in result.err and "line 1:" not in result.err and "line 3:" not in result.err
    assert sorted(os.listdir(tmp_path / "out")) == ["a_blue_square", "a_red_circle"]
    assert "line 2: 1 image(s)" in result.out and "line 5: 1 image(s)" in result.out  # numbers as in an editor


def test_windows_line_ends_and_byte_order_mark(tmp_path, capsys):
    source = tmp_path / "in.txt"
    source.write_bytes(b"\xef\xbb\xbfa red circle\r\na blue square\r\n")
    result = gen(capsys, "--input-source", str(source), "--output-path", str(tmp_path / "out"))
    assert result.code == 0 and sorted(os.listdir(tmp_path / "out")) == ["a_blue_square", "a_red_circle"]


def test_binary_input_file_is_refused(tmp_path, capsys, no_model):
    result = gen(capsys, "--input-source", VQVAE, "--output-path", str(tmp_path / "out"))
    one_error(result, "--input-source", "binary file", code=1)


@pytest.mark.parametrize("kind", ["missing", "folder"])
def test_input_source_that_is_not_a_file(tmp_path, capsys, kind):
    path = tmp_path / "queries.txt"
    if kind == "folder":
        path.mkdir()
    result = gen(capsys, "--input-source", str(path), "--output-path", str(tmp_path / "out"))
    one_error(result, "--input-source", "queries.txt", "no such file" if kind == "missing" else "is a folder", code=1)


# ---------------------------------------------------------------- 4. config files


@pytest.mark.parametrize(
    "text, needles",
    [
        ('{"num_layers": "8"}', ("model_config.json", "num_layers must be an integer", '"8"')),
        ('{"num_layers": 8,', ("model_config.json", "unreadable model config")),
        ("[8, 256]", ("model_config.json", "expected a JSON object")),
        ('{"guidance_scale": 0.8}', ("model_config.json", "guidance_scale must be an object")),
    ],
    ids=["wrong-type", "broken-json", "not-an-object", "guidance-not-per-task"],
)
def test_bad_model_config_is_one_line_naming_file_and_key(tmp_path, capsys, text, needles):
    folder = checkpoint_copy(tmp_path)
    (tmp_path / "ckpt" / "model_config.json").write_text(text)
    result = gen(capsys, "--input-source", lines_file(tmp_path / "in.txt", "a red"), load=folder)
    one_error(result, *needles, code=1)


def test_head_count_is_checked_against_the_checkpoints_hidden_size(tmp_path):
    """NATT=5 with the demo's hidden size 256 (from model_config.json, not the flag's default 1024)."""
    result = run(
        ["scripts/text2image.sh"],
        env=dict(
            CHECKPOINT_PATH=DEMO,
            NATT="5",
            INPUT_SOURCE=lines_file(tmp_path / "in.txt", "a red"),
            OUTPUT_PATH=str(tmp_path / "o"),
        ),
    )
    one_error(result, "hidden_size 256 (from", "model_config.json", "--num-attention-heads 5", code=1)
    assert "1024" not in result.err


def test_zero_attention_heads(tmp_path, capsys):
    result = gen(capsys, "--num-attention-heads", "0", "--input-source", lines_file(tmp_path / "in.txt", "a red"))
    one_error(result, "--num-attention-heads 0 must be at least 1", code=1)


# ---------------------------------------------------------------- 5. checkpoint messages


def test_random_bytes_are_not_called_a_checkpoint(tmp_path, capsys):
    folder = checkpoint_copy(tmp_path)
    os.remove(os.path.join(folder, "1", "mp_rank_00_model_states.pt"))
    with open(os.path.join(folder, "1", "mp_rank_00_model_states.pt"), "wb") as f:
        f.write(np.random.RandomState(0).bytes(4096))
    result = gen(capsys, "--input-source", lines_file(tmp_path / "in.txt", "a red"), load=folder)
    one_error(result, "mp_rank_00_model_states.pt", "not a checkpoint (not a zip/pickle file torch can read)", code=1)
    assert "--trust-checkpoint" not in result.err


class _Evil:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_checkpoint_calling_a_dangerous_global_is_named_and_not_trusted(tmp_path, capsys):
    marker = tmp_path / "pwned"
    folder = checkpoint_copy(tmp_path, {"module": demo_state(), "payload": _Evil(str(marker))})
    result = gen(capsys, "--input-source", lines_file(tmp_path / "in.txt", "a red"), load=folder)
    one_error(result, f"{os.system.__module__}.system", "do not pass --trust-checkpoint", code=1)
    assert not marker.exists()


def test_deepspeed_rng_states_name_the_global_and_the_flag(tmp_path, capsys):
    folder = checkpoint_copy(tmp_path, {"module": demo_state(), "np_rng_state": np.random.get_state()})
    result = gen(capsys, "--input-source", lines_file(tmp_path / "in.txt", "a red"), load=folder)
    one_error(result, "numpy", "if you trust this file, add --trust-checkpoint", code=1)
    result = gen(
        capsys,
        "--input-source",
        lines_file(tmp_path / "in.txt", "a red"),
        "--output-path",
        str(tmp_path / "o"),
        "--trust-checkpoint",
        load=folder,
    )
    assert result.code == 0, result.err


def test_empty_checkpoint_folder_through_the_script(tmp_path):
    """No model_config.json: the script adds the released VQ-VAE's path, which is absent too;
    the checkpoint is named first."""
    (tmp_path / "empty").mkdir()
    result = run(
        ["scripts/text2image.sh"],
        env=dict(
            CHECKPOINT_PATH=str(tmp_path / "empty"),
            INPUT_SOURCE=lines_file(tmp_path / "in.txt", "a red"),
            OUTPUT_PATH=str(tmp_path / "o"),
        ),
    )
    one_error(result, "empty", "holds no checkpoint", code=1)
    assert "VQ-VAE" not in result.err


def test_checkpoint_folder_copied_without_its_tokenizers(tmp_path, capsys):
    moved = tmp_path / "moved"
    moved.mkdir()
    for name in ("model_config.json", "latest_checkpointed_iteration.txt"):
        shutil.copy(os.path.join(DEMO, name), moved / name)
    os.symlink(os.path.join(DEMO, "3000"), moved / "3000")
    source = lines_file(tmp_path / "in.txt", "a red circle")
    result = gen(capsys, "--input-source", source, "--output-path", str(tmp_path / "o"), load=str(moved))
    one_error(
        result,
        f"{moved}/model_config.json names img_tokenizer_path",
        "which does not exist",
        "--img-tokenizer-path",
        code=1,
    )
    result = gen(
        capsys,
        "--input-source",
        source,
        "--output-path",
        str(tmp_path / "o"),
        "--img-tokenizer-path",
        VQVAE,
        "--txt-tokenizer-path",
        SP,
        load=str(moved),
    )
    assert result.code == 0, result.err


def test_vqvae_given_as_the_gpt_checkpoint(tmp_path, capsys):
    folder = checkpoint_copy(tmp_path, torch.load(VQVAE, weights_only=True))
    result = gen(capsys, "--input-source", lines_file(tmp_path / "in.txt", "a red"), load=folder)
    one_error(result, "holds no CogView GPT weights", "--img-tokenizer-path", code=1)


def test_vqvae_path_that_is_a_text_file(tmp_path, capsys):
    notes = tmp_path / "vqvae.pt"
    notes.write_text("download the VQ-VAE from ...\n")
    result = gen(capsys, "--img-tokenizer-path", str(notes), "--input-source", lines_file(tmp_path / "in.txt", "a red"))
    one_error(result, "cannot load VQ-VAE from", "vqvae.pt", "not a zip/pickle file", code=1)


def test_truncated_checkpoint(tmp_path, capsys):
    folder = checkpoint_copy(tmp_path, {"module": demo_state()})
    file = os.path.join(folder, "1", "mp_rank_00_model_states.pt")
    data = open(file, "rb").read()
    open(file, "wb").write(data[: len(data) // 3])
    result = gen(capsys, "--input-source", lines_file(tmp_path / "in.txt", "a red"), load=folder)
    one_error(result, "mp_rank_00_model_states.pt", "truncated or corrupt", code=1)


def test_missing_load_folder(tmp_path, capsys):
    result = gen(capsys, "--input-source", lines_file(tmp_path / "in.txt", "a red"), load=str(tmp_path / "nope"))
    one_error(result, "nope", "no such checkpoint file or folder", "--load", code=1)


# ---------------------------------------------------------------- 6. interrupts


def test_ctrl_c_keeps_finished_images_and_exits_130(tmp_path):
    source = lines_file(tmp_path / "in.txt", *[f"a red circle {i}" for i in range(12)])
    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    cmd = [sys.executable, os.path.join(ROOT, "generate_samples.py"), "--load", DEMO, "--device", "cpu"]
    cmd += ["--input-source", source, "--output-path", str(out), "--batch-size", "1"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (out / "a_red_circle_0" / "concat.jpg").exists():
            assert proc.poll() is None and time.time() < deadline, "no first image"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    result = Result(proc.returncode, stdout, stderr)
    one_error(result, "interrupted;", "line(s) done, outputs in", str(out), code=130)
    assert (out / "a_red_circle_0" / "0.jpg").exists()
    assert_whole_images(out)


# ---------------------------------------------------------------- 7. what a new user tries


@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--generation-task", "text-to-image"], "invalid choice: 'text-to-image'"),
        (["--batch-size", "0"], "--batch-size and --max-inference-batch-size must be at least 1"),
        (["--batch-size", "-3"], "--batch-size and --max-inference-batch-size must be at least 1"),
        (["--max-inference-batch-size", "0"], "--batch-size and --max-inference-batch-size must be at least 1"),
        (["--temperature", "0"], "--temperature must be > 0"),
        (["--temperature", "-1"], "--temperature must be > 0"),
        (["--top_k", "-5"], "--top_k must be >= 0"),
        (["--top_p", "1.5"], "--top_p must be within [0, 1]"),
        (["--top_p", "-0.1"], "--top_p must be within [0, 1]"),
        (["--seed", "abc"], "--seed: invalid int value"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else None,
)
def test_bad_flag_values_are_one_line(tmp_path, capsys, no_model, flags, needle):
    result = gen(capsys, "--input-source", lines_file(tmp_path / "in.txt", "a red"), *flags)
    one_error(result, needle, code=2)


@pytest.mark.parametrize(
    "size, needle",
    [("50", "6x6 code grid"), ("4", "too small for the VQ-VAE"), ("128", "do not fit the model's 96 positions")],
)
def test_img_size_the_model_cannot_use(tmp_path, capsys, size, needle):
    result = gen(capsys, "--img-size", size, "--input-source", lines_file(tmp_path / "in.txt", "a red"))
    one_error(result, f"--img-size {size}", needle, code=1)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_device_cuda_without_a_gpu(tmp_path, capsys):
    result = gen(capsys, "--input-source", lines_file(tmp_path / "in.txt", "a red"), "--device", "cuda")
    one_error(result, "--device cuda: CUDA is not available", "--device cpu", code=2)


def huge_png(path) -> str:
    """A PNG whose header claims 20000 x 20000 pixels: Pillow's decompression-bomb limit."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )
    return str(path)


def test_bad_images_fail_their_line_only(tmp_path, capsys):
    notes = tmp_path / "notes.png"
    notes.write_text("not an image")
    bomb = huge_png(tmp_path / "bomb.png")
    source = lines_file(tmp_path / "in.txt", str(notes), bomb, str(tmp_path / "missing.png"), RED_STAR)
    result = gen(capsys, "--generation-task", "image2text", "--no-caption-rerank", "--input-source", source)
    assert_fails_cleanly(result, "line 1:", "notes.png", "not an image file", code=1)
    assert_fails_cleanly(result, "line 2:", "bomb.png", "too many pixels", code=1)
    assert_fails_cleanly(result, "line 3:", "missing.png", "no such file", code=1)
    assert "line 4 sample 0:" in result.out


def test_bad_text2image_lines_fail_alone(tmp_path, capsys):
    source = lines_file(tmp_path / "in.txt", "word " * 200, "[FOO] a red circle", "a red circle")
    result = gen(capsys, "--input-source", source, "--output-path", str(tmp_path / "out"))
    assert_fails_cleanly(result, "line 1:", "positions", "shorten the text", code=1)
    assert_fails_cleanly(result, "line 2: unknown command token [FOO]", code=1)
    assert os.listdir(tmp_path / "out") == ["a_red_circle"]


def test_bad_inpainting_boxes(tmp_path, capsys):
    source = lines_file(
        tmp_path / "in.txt",
        f"a red star\t{RED_STAR}\t0,0,1.5,1",
        f"a red star\t{RED_STAR}\t0.5,0.5,0.5,0.9",
        f"a red star\t{RED_STAR}\tleft half",
        f"a red star\t{RED_STAR}\t0,0,0.5,1",
    )
    result = gen(
        capsys, "--generation-task", "inpainting", "--input-source", source, "--output-path", str(tmp_path / "o")
    )
    assert_fails_cleanly(result, "line 1:", "outside the image", code=1)
    assert_fails_cleanly(result, "line 2:", "is empty", code=1)
    assert_fails_cleanly(result, "line 3:", "x0,y0,x1,y1", code=1)
    assert os.listdir(tmp_path / "o") == ["a_red_star"]


def test_post_selection_line_without_images(tmp_path, capsys):
    source = lines_file(tmp_path / "in.txt", "a red star", f"a red star\t{RED_STAR}")
    result = gen(
        capsys, "--generation-task", "post-selection", "--input-source", source, "--output-path", str(tmp_path / "o")
    )
    one_error(result, "line 1:", "no image given", code=1)
    assert (tmp_path / "o" / "scores_rank_0.txt").read_text().startswith(f"a red star\t{RED_STAR}\n")


def test_interactive_mode_ends_cleanly_at_end_of_input(tmp_path):
    result = run(
        ["generate_samples.py", "--load", DEMO, "--device", "cpu", "--input-source", "interactive"],
        stdin="",
        cwd=str(tmp_path),
    )
    assert result.code == 0 and "Traceback" not in result.text and not problems(result)


def test_script_with_output_path_that_is_a_file(tmp_path):
    (tmp_path / "o").write_text("notes")
    result = run(
        ["scripts/text2image.sh"],
        env=dict(
            CHECKPOINT_PATH=DEMO, INPUT_SOURCE=lines_file(tmp_path / "in.txt", "a red"), OUTPUT_PATH=str(tmp_path / "o")
        ),
    )
    one_error(result, "--output-path", "is a file", code=1)
    assert (tmp_path / "o").read_text() == "notes"


def test_script_with_missing_input_file(tmp_path):
    result = run(
        ["scripts/inpainting.sh"],
        env=dict(CHECKPOINT_PATH=DEMO, INPUT_SOURCE=str(tmp_path / "queries.txt"), OUTPUT_PATH=str(tmp_path / "o")),
    )
    one_error(result, "--input-source", "queries.txt", "no such file", code=1)


@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--temperature", "nan"], "--temperature nan must be a finite number > 0"),
        (["--temperature", "inf"], "--temperature inf must be a finite number > 0"),
        (["--guidance-scale", "nan"], "--guidance-scale (text2image) nan must be a finite number"),
    ],
    ids=["temperature-nan", "temperature-inf", "guidance-nan"],
)
def test_numbers_that_are_not_finite(tmp_path, capsys, flags, needle):
    result = gen(capsys, "--input-source", lines_file(tmp_path / "in.txt", "a red"), *flags)
    one_error(result, needle, code=1)


def test_batch_that_cannot_fit_in_memory_is_refused_before_sampling(tmp_path, capsys):
    big = str(10**7)
    source = lines_file(tmp_path / "in.txt", "a red circle")
    result = gen(capsys, "--input-source", source, "--batch-size", big, "--max-inference-batch-size", big)
    one_error(result, f"--max-inference-batch-size {big}", "GiB", "lower --max-inference-batch-size", code=1)


def test_out_of_memory_fails_the_line_not_the_run(tmp_path, capsys, monkeypatch):
    """A GPU running out of memory on one query (simulated: the sampler raises torch's error)."""
    real = generation.generator.Generator.sample
    calls = []

    def sample(self, ids, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real(self, ids, *args, **kwargs)

    monkeypatch.setattr(generation.generator.Generator, "sample", sample)
    source = lines_file(tmp_path / "in.txt", "a red circle", "a blue square")
    result = gen(capsys, "--input-source", source, "--output-path", str(tmp_path / "o"))
    one_error(result, "line 1: out of memory", "lower --max-inference-batch-size", code=1)
    assert os.listdir(tmp_path / "o") == ["a_blue_square"]


def test_empty_output_path(tmp_path, capsys, no_model):
    result = gen(capsys, "--input-source", lines_file(tmp_path / "in.txt", "a red"), "--output-path", "")
    one_error(result, "--output-path is empty", code=1)


def test_rank_without_a_share_of_the_lines(tmp_path, capsys, no_model, monkeypatch):
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    source = lines_file(tmp_path / "in.txt", "a red circle", "a blue square")
    result = gen(capsys, "--input-source", source, "--output-path", str(tmp_path / "o"))
    assert result.code == 0 and "holds no queries for rank 3 of 4" in result.err and "nothing to do" in result.err


def test_ctrl_c_at_the_interactive_prompt(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, os.path.join(ROOT, "generate_samples.py"), "--load", DEMO, "--device", "cpu"]
    cmd += ["--input-source", "interactive", "--output-path", str(tmp_path / "o"), "--batch-size", "1"]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        proc.stdin.write(b"a red circle\n")
        proc.stdin.flush()
        seen = b""
        while seen.count(generate_samples.PROMPT.encode().strip()) < 2:  # the prompt after the first query
            chunk = os.read(proc.stdout.fileno(), 4096)
            assert chunk, "the program ended before the second prompt"
            seen += chunk
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    result = Result(proc.returncode, seen.decode() + stdout.decode(), stderr.decode())
    one_error(result, "interrupted; 1 line(s) done", code=130)
    assert os.listdir(tmp_path / "o") == ["a_red_circle"]


def test_script_runs_the_good_lines_around_a_bad_one(tmp_path):
    source = tmp_path / "in.txt"
    source.write_bytes(b"a red \xe9toile\t" + RED_STAR.encode() + b"\n\na red star\t" + RED_STAR.encode() + b"\n")
    result = run(
        ["scripts/low_level_super_resolution.sh"],
        env=dict(INPUT_SOURCE=str(source), OUTPUT_PATH=str(tmp_path / "o"), BATCH_SIZE="1"),
    )
    one_error(result, "line 1: not valid UTF-8", "byte 0xe9", code=1)
    assert os.listdir(tmp_path / "o") == ["a_red_star"]
    assert "line 3: 1 image(s)" in result.out


def test_script_reads_an_image_path_with_spaces(tmp_path):
    (tmp_path / "my pictures").mkdir()
    shutil.copy(RED_STAR, tmp_path / "my pictures" / "red star.png")
    result = run(
        ["scripts/image2text.sh", "--no-caption-rerank"],
        env=dict(
            INPUT_SOURCE=lines_file(tmp_path / "in.txt", str(tmp_path / "my pictures" / "red star.png")), BATCH_SIZE="1"
        ),
    )
    assert result.code == 0 and "Traceback" not in result.text, result.err[-2000:]
    assert "line 1 sample 0:" in result.out


def test_full_disk_never_leaves_half_a_score_record(tmp_path, capsys, monkeypatch):
    """The scores file of earlier runs ends near a page boundary; the disk fills up after the
    start-up check (while the first line is scored): appending fails whole, the file is as it was."""
    real = generation.generator.inverse_prompt_score

    def score_then_fill_the_disk(*args, **kwargs):
        with open(os.path.join(disk, "junk"), "ab", buffering=0) as f:
            try:
                while True:
                    f.write(b"\0" * 4096)
            except OSError:
                pass
        return real(*args, **kwargs)

    monkeypatch.setattr(generation.generator, "inverse_prompt_score", score_then_fill_the_disk)
    line = f"a red star\t{RED_STAR}"
    source = lines_file(tmp_path / "in.txt", line, line)
    with small_disk(12) as disk:
        scores = os.path.join(disk, "scores_rank_0.txt")
        with open(scores, "w") as f:
            f.write(("an earlier record\t-1.0\n" * 200)[:4090])
        before = tree_hashes(scores)
        result = gen(capsys, "--generation-task", "post-selection", "--input-source", source, "--output-path", disk)
        assert tree_hashes(scores) == before
    assert_fails_cleanly(result, "line 1: cannot append to", "No space left on device", "the file is as it was", code=1)
    assert_fails_cleanly(result, "line 2: cannot append to", code=1)


# ---------------------------------------------------------------- 8. model parallelism


def test_model_parallel_size_without_the_processes(tmp_path, capsys, no_model, monkeypatch):
    """--model-parallel-size 2 in a single process says how to launch two, not a silent size 1."""
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    source = lines_file(tmp_path / "in.txt", "a red circle")
    result = gen(capsys, "--model-parallel-size", "2", "--input-source", source, "--output-path", str(tmp_path / "o"))
    one_error(result, "--model-parallel-size 2", "torchrun --standalone --nproc_per_node 2", "MPSIZE=2", code=2)
    assert not (tmp_path / "o").exists()


def test_checkpoint_split_for_another_model_parallel_size(tmp_path, capsys):
    split = str(tmp_path / "cogview-demo-mp2")
    assert change_mp_main([DEMO, split, "--model-parallel-size", "2"]) == 0
    source = lines_file(tmp_path / "in.txt", "a red circle")
    result = gen(capsys, "--input-source", source, "--output-path", str(tmp_path / "o"), load=split)
    one_error(
        result,
        "holds the model in 2 model-parallel part(s)",
        f"python -m arch.change_mp {split} {split}-mp1 --model-parallel-size 1",
        "or run with --model-parallel-size 2",
        code=1,
    )


@pytest.mark.slow
def test_script_with_mpsize_and_an_unsplit_checkpoint(tmp_path):
    """MPSIZE=2 launches two processes (torchrun); both find one part and the first says so, once."""
    result = run(
        ["scripts/text2image.sh"],
        env=dict(
            MPSIZE="2",
            CHECKPOINT_PATH=DEMO,
            INPUT_SOURCE=lines_file(tmp_path / "in.txt", "a red circle"),
            OUTPUT_PATH=str(tmp_path / "o"),
        ),
    )
    one_error(
        result,
        "holds the model in 1 model-parallel part(s)",
        f"python -m arch.change_mp {DEMO} {DEMO}-mp2 --model-parallel-size 2",
        code=1,
    )
    assert result.err.count("model-parallel part(s)") == 1 and not os.path.exists(f"{DEMO}-mp2")


def test_web_page_with_mpsize(tmp_path):
    result = run(["scripts/web_demo.sh"], env=dict(MPSIZE="2"))
    one_error(result, "MPSIZE=2", "one process", "python -m arch.change_mp SRC DST --model-parallel-size 1", code=2)
