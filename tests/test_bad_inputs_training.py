"""The bad-input catalogue of training and preprocessing: ordinary mistakes and faults
(a read-only or full --save, two runs of one name, bad data found at start or mid-run, a
preprocessing run without rows, a broken DeepSpeed json, SIGTERM / SIGINT, flags without
meaning, umask) each end in one line and an exit code, never a traceback, and never lose
a checkpoint or overwrite another run's files.

Most cases run ``pretrain_gpt2.main`` in this process; signals, launchers, concurrent runs
and exit codes of scripts run as subprocesses.
"""

from __future__ import annotations

import glob
import os
import signal
import socket
import subprocess
import sys

import lmdb
import numpy as np
import pytest
import torch

from .catalogue import (
    ROOT,
    Result,
    assert_fails_cleanly,
    assert_no_traceback,
    read_only,
    run,
    small_disk,
    tree_hashes,
)
from .training_data import make_lmdb, make_rows, tiny_flags, tiny_setup

pytestmark = [pytest.mark.catalogue]

TRACKER = "latest_checkpointed_iteration.txt"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny sentencepiece model and a good 32-row LMDB (shared, never written to)."""
    return tiny_setup(str(tmp_path_factory.mktemp("catalogue-data")))


def flags(setup, save, tmp_path, **overrides):
    """A tiny run's command line; TensorBoard logs outside --save, so --save holds checkpoints only."""
    return tiny_flags(setup, str(save), **{"--summary-dir": str(tmp_path / "tb"), **overrides})


def train(argv, capsys) -> Result:
    """pretrain_gpt2.main in this process, as the command line would run it."""
    import pretrain_gpt2

    code = pretrain_gpt2.main(argv)
    captured = capsys.readouterr()
    return Result(code, captured.out, captured.err)


def fails_in_one_line(result: Result, *needles: str, code: int = 1) -> None:
    """assert_fails_cleanly, plus: exactly one line on stderr says "error"."""
    assert_fails_cleanly(result, *needles, code=code)
    errors = [line for line in result.err.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, result.err[-3000:]


def no_step_ran(result: Result) -> None:
    assert " iteration " not in result.out, "training ran before the problem was found"


def run_dirs(save) -> list:
    return sorted(glob.glob(os.path.join(str(save), "tiny-*")))


def tracker(run_dir: str) -> str:
    with open(os.path.join(run_dir, TRACKER)) as f:
        return f.read().strip()


def temp_files(folder: str) -> list:
    return [os.path.join(d, n) for d, _, names in os.walk(folder) for n in names if n.startswith(".tmp-")]


def env() -> dict:
    e = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", CUDA_VISIBLE_DEVICES="")
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "NODE_RANK"):
        e.pop(key, None)
    return e


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def put_raw(path: str, rows: dict) -> None:
    """Store raw bytes under row keys (or the length key) of an LMDB, as a broken writer would."""
    env_ = lmdb.open(path, map_size=1 << 24)
    with env_.begin(write=True) as txn:
        for key, value in rows.items():
            txn.put(str(key).encode("ascii"), value)
    env_.close()


def first_unsampled_row(n_rows: int, batch: int, min_iteration: int):
    """(row, iteration): a row the start-up check does not read, and the number of
    iterations completed before a tiny run (--split 1) first draws it."""
    from data_utils.configure_data import RandomMappingDataset
    from data_utils.datasets import sample_rows

    sampled = set(sample_rows(n_rows))
    for p in range(min_iteration * batch, 10_000):
        row = RandomMappingDataset.map_index(p, n_rows)
        if row not in sampled and all(RandomMappingDataset.map_index(q, n_rows) != row for q in range(p)):
            return row, p // batch
    raise AssertionError("no unsampled row drawn")


# ------------------------------------------------------------------ 1. the save location


def test_read_only_save_is_refused_before_any_step(setup, tmp_path, capsys):
    save = tmp_path / "ro"
    save.mkdir()
    (save / "old-run").mkdir()
    (save / "old-run" / "notes.txt").write_text("kept")
    before = tree_hashes(str(save))
    with read_only(str(save)):
        result = train(flags(setup, save, tmp_path), capsys)
    fails_in_one_line(result, f"--save {save}", "Read-only file system", "writable")
    no_step_ran(result)
    assert tree_hashes(str(save)) == before


def test_save_on_a_disk_too_small_for_one_checkpoint_is_refused(setup, tmp_path, capsys):
    with small_disk(64) as save:
        result = train(flags(setup, save, tmp_path), capsys)
        assert os.listdir(save) == []  # the run folder it claimed is gone again
    fails_in_one_line(result, f"--save {save}", "free on the disk", "a checkpoint needs about")
    no_step_ran(result)


def test_save_on_a_full_disk_is_refused(setup, tmp_path, capsys):
    with small_disk(256) as save:
        filler = os.path.join(save, "filler.bin")
        with open(filler, "wb") as f, pytest.raises(OSError):
            f.write(b"\0" * (1 << 20))
        before = tree_hashes(save)
        result = train(flags(setup, save, tmp_path), capsys)
        assert tree_hashes(save) == before
    fails_in_one_line(result, f"--save {save}", "no space left")
    no_step_ran(result)


def test_save_that_is_a_file_is_refused(setup, tmp_path, capsys):
    save = tmp_path / "ckpt"
    save.write_text("not a folder")
    result = train(flags(setup, save, tmp_path), capsys)
    fails_in_one_line(result, f"--save {save}", "not a folder")
    assert save.read_text() == "not a folder"


def test_disk_filling_during_a_checkpoint_keeps_the_previous_one(setup, tmp_path, capsys):
    from arch import load_checkpoint_state

    with small_disk(704) as save:  # room for one checkpoint of the tiny model (~440 KiB), not two
        argv = flags(setup, save, tmp_path, **{"--train-iters": 12, "--save-interval": 5})
        result = train(argv, capsys)
        (run_dir,) = run_dirs(save)
        fails_in_one_line(
            result,
            f"checkpoint at iteration 10 not saved: no space left on {run_dir}",
            "the checkpoint of iteration 5 is kept",
        )
        assert " iteration       11/" not in result.out  # the run stops there
        assert tracker(run_dir) == "5"
        assert sorted(os.listdir(run_dir)) == ["5", "latest_checkpointed_iteration.txt", "model_config.json"]
        assert temp_files(save) == []
        assert "word_embeddings.weight" in load_checkpoint_state(run_dir)


# ------------------------------------------------------------------ 2. two runs, one name


def test_second_run_in_the_same_minute_gets_its_own_folder(setup, tmp_path, capsys, monkeypatch):
    import pretrain_gpt2

    monkeypatch.setattr(pretrain_gpt2.time, "strftime", lambda *args: "-01-02-03-04")
    save = tmp_path / "ckpt"
    argv = flags(setup, save, tmp_path, **{"--train-iters": 3})
    first = train(argv, capsys)
    assert first.code == 0, first.err
    before = tree_hashes(str(save / "tiny-01-02-03-04"))
    second = train(argv, capsys)
    assert second.code == 0, second.err
    assert_no_traceback(second)
    assert f"checkpoints go to {save / 'tiny-01-02-03-04-1'}" in second.out
    assert tree_hashes(str(save / "tiny-01-02-03-04")) == before
    assert tracker(str(save / "tiny-01-02-03-04-1")) == "3"


def test_two_runs_started_together_never_share_a_folder(setup, tmp_path):
    save = tmp_path / "ckpt"
    cmd = [
        sys.executable,
        os.path.join(ROOT, "pretrain_gpt2.py"),
        *flags(setup, save, tmp_path, **{"--train-iters": 4}),
    ]
    procs = [subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in "ab"]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    folders = [line.split("checkpoints go to ")[1] for out, _ in outs for line in out.splitlines() if "go to" in line]
    assert len(set(folders)) == 2 and sorted(folders) == run_dirs(save)
    for folder in folders:
        assert tracker(folder) == "4"


def test_resume_with_load_writes_to_its_own_run_folder(setup, tmp_path, capsys):
    save = tmp_path / "ckpt"
    assert train(flags(setup, save, tmp_path, **{"--train-iters": 3}), capsys).code == 0
    (run_dir,) = run_dirs(save)
    first = tree_hashes(os.path.join(run_dir, "3"))
    resumed = train(flags(setup, save, tmp_path, **{"--train-iters": 5, "--load": run_dir}), capsys)
    assert resumed.code == 0, resumed.err
    assert run_dirs(save) == [run_dir] and tracker(run_dir) == "5"
    assert tree_hashes(os.path.join(run_dir, "3")) == first


def test_finetune_into_an_existing_run_name_gets_a_new_folder(setup, tmp_path, capsys):
    source = tmp_path / "pre"
    assert train(flags(setup, source, tmp_path, **{"--train-iters": 2}), capsys).code == 0
    (weights,) = run_dirs(source)
    save = tmp_path / "fine"
    argv = flags(setup, save, tmp_path, **{"--train-iters": 2, "--load": weights, "--finetune": True})
    assert train(argv, capsys).code == 0
    name = os.path.basename(weights)
    before = tree_hashes(str(save / name))
    again = train(argv, capsys)
    assert again.code == 0, again.err
    assert f"checkpoints go to {save / (name + '-1')}" in again.out
    assert tree_hashes(str(save / name)) == before


# --------------------------------------------------------------- 3. bad data at start-up


def test_empty_lmdb_is_refused(setup, tmp_path, capsys):
    empty = make_lmdb(str(tmp_path), "empty.lmdb", [])
    before = tree_hashes(empty)
    result = train(flags(setup, tmp_path / "ckpt", tmp_path, **{"--train-data": empty}), capsys)
    fails_in_one_line(result, empty, "holds no rows", "rebuild it")
    no_step_ran(result)
    assert tree_hashes(empty) == before and run_dirs(tmp_path / "ckpt") == []


def test_ids_from_another_tokenizer_are_refused(setup, tmp_path, capsys):
    rows = make_rows(setup["tokenizer"], 8)
    rows[0] = rows[0] + 5000  # ids of a larger vocabulary
    other = make_lmdb(str(tmp_path), "other.lmdb", rows)
    result = train(flags(setup, tmp_path / "ckpt", tmp_path, **{"--train-data": other}), capsys)
    fails_in_one_line(result, f"{other} row 0: token id", "outside the vocabulary", "--txt-tokenizer-path")
    no_step_ran(result)


def test_length_key_beyond_the_stored_rows_is_refused(setup, tmp_path, capsys):
    path = make_lmdb(str(tmp_path), "long.lmdb", make_rows(setup["tokenizer"], 32))
    put_raw(path, {"length": b"40"})
    result = train(flags(setup, tmp_path / "ckpt", tmp_path, **{"--train-data": path}), capsys)
    fails_in_one_line(result, path, "'length' key says 40 rows but it stores only 32", "rebuild")


def test_garbage_row_in_the_start_up_sample_is_refused(setup, tmp_path, capsys):
    path = make_lmdb(str(tmp_path), "garbage.lmdb", make_rows(setup["tokenizer"], 32))
    put_raw(path, {31: b"\x93CVROW1\nZ not a row"})
    result = train(flags(setup, tmp_path / "ckpt", tmp_path, **{"--train-data": path}), capsys)
    fails_in_one_line(result, f"{path} row 31: cannot be read", "corrupt row", "preprocess_entry.py --overwrite")
    no_step_ran(result)


def test_data_of_another_dataset_type_is_refused(setup, tmp_path, capsys):
    argv = flags(setup, tmp_path / "ckpt", tmp_path, **{"--dataset-type": "TextCodeDataset"})
    result = train(argv, capsys)
    fails_in_one_line(result, f"{setup['lmdb']} row 0: cannot be read", "is --dataset-type the file's?")
    no_step_ran(result)


def test_folder_that_is_not_an_lmdb_is_refused(setup, tmp_path, capsys):
    path = tmp_path / "broken.lmdb"
    path.mkdir()
    (path / "data.mdb").write_bytes(b"\xde\xad" * 3000)
    result = train(flags(setup, tmp_path / "ckpt", tmp_path, **{"--train-data": str(path)}), capsys)
    fails_in_one_line(result, str(path))
    no_step_ran(result)


def test_missing_train_data_is_refused(setup, tmp_path, capsys):
    result = train(flags(setup, tmp_path / "ckpt", tmp_path, **{"--train-data": str(tmp_path / "nope.lmdb")}), capsys)
    fails_in_one_line(result, "nope.lmdb", "no such file or folder")


def test_empty_valid_data_is_refused(setup, tmp_path, capsys):
    empty = make_lmdb(str(tmp_path), "valid.lmdb", [])
    result = train(flags(setup, tmp_path / "ckpt", tmp_path, **{"--valid-data": empty}), capsys)
    fails_in_one_line(result, empty, "holds no rows")
    no_step_ran(result)


# ------------------------------------------------------------------ 3. bad data mid-run


@pytest.mark.parametrize("fault,workers", [("garbage", 0), ("id", 1), ("page", 0)])
def test_bad_row_mid_run_saves_the_iterations_done(setup, tmp_path, capsys, fault, workers):
    """A row the start-up sample misses stops the run when a batch first holds it: the
    iterations done are saved first, and the line names the file, the row and the fix."""
    from arch import load_checkpoint_state
    from data_utils.row_format import MAGIC

    rows = make_rows(setup["tokenizer"], 32)
    row, done = first_unsampled_row(32, batch=4, min_iteration=3)
    if fault == "id":
        rows[row] = rows[row].copy()
        rows[row][-1] = 9999
    path = make_lmdb(str(tmp_path), "data.lmdb", rows)
    if fault == "garbage":
        put_raw(path, {row: b"\x93CVROW1\nZ garbage"})
    if fault == "page":  # bytes of the row damaged inside the LMDB file itself
        from data_utils.row_format import encode_row

        data_file = os.path.join(path, "data.mdb")
        blob = open(data_file, "rb").read()
        offset = blob.index(encode_row(rows[row]))
        with open(data_file, "r+b") as f:
            f.seek(offset)
            f.write(b"\xff" * len(MAGIC))
    save = tmp_path / "ckpt"
    argv = flags(setup, save, tmp_path, **{"--train-data": path, "--train-iters": 200, "--num-workers": workers})
    result = train(argv, capsys)
    needle = "token id 9999 is outside the vocabulary" if fault == "id" else "cannot be read"
    fails_in_one_line(result, f"{path} row {row}:", needle, f"stopped at iteration {done}", "saved in")
    (run_dir,) = run_dirs(save)
    assert tracker(run_dir) == str(done)
    state = torch.load(os.path.join(run_dir, str(done), "mp_rank_00_model_states.pt"), weights_only=True)
    assert state["iteration"] == done and state["data_position"] == done
    assert "word_embeddings.weight" in load_checkpoint_state(run_dir)


# ------------------------------------------------------------ 4. preprocessing without rows


@pytest.fixture(scope="module")
def vqvae(tmp_path_factory):
    from vqvae import VQVAE

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("vqvae") / "vqvae.pt"
    torch.save(VQVAE(channel=16, n_res_block=0, n_res_channel=8, embed_dim=8, n_embed=64, stride=6).state_dict(), path)
    return str(path)


def preprocess_argv(setup, vqvae, folder, output) -> list:
    (folder / "notimage.png").write_text("this is not a png")
    captions = folder / "captions.tsv"
    captions.write_text("missing1.png\ta red bird\nmissing2.png\ta big dog\nnotimage.png\ta blue fish\n")
    return [
        "--captions",
        str(captions),
        "--img-tokenizer-path",
        vqvae,
        "--txt-tokenizer-path",
        setup["sp"],
        "--output",
        str(output),
        "--img-size",
        "64",
        "--num-workers",
        "0",
        "--no-progress",
    ]


def test_preprocessing_that_writes_no_rows_fails_with_the_reasons(setup, vqvae, tmp_path, capsys):
    from preprocess_entry import main

    output = tmp_path / "out.lmdb"
    code = main(preprocess_argv(setup, vqvae, tmp_path, output))
    captured = capsys.readouterr()
    result = Result(code, captured.out, captured.err)
    fails_in_one_line(
        result, f"{output} holds no rows", "all 3 inputs were skipped", "2 x missing file", "1 x not an image"
    )
    assert "report.tsv" in result.err
    # and training on that output is refused at start-up, pointing at the report
    trained = train(flags(setup, tmp_path / "ckpt", tmp_path, **{"--train-data": str(output)}), capsys)
    fails_in_one_line(trained, str(output), "holds no rows", "preprocessing skipped every input")


def test_preprocess_script_without_rows_exits_non_zero(setup, vqvae, tmp_path):
    output = tmp_path / "out.lmdb"
    result = run(["scripts/preprocess.sh", *preprocess_argv(setup, vqvae, tmp_path, output)], cwd=str(tmp_path))
    assert_fails_cleanly(result, "holds no rows", "inputs were skipped", code=1)


def test_preprocessing_into_a_read_only_folder_is_refused(setup, vqvae, tmp_path, capsys):
    from preprocess_entry import main

    folder = tmp_path / "ro"
    folder.mkdir()
    argv = preprocess_argv(setup, vqvae, tmp_path, folder / "out.lmdb")
    with read_only(str(folder)):
        code = main(argv)
    captured = capsys.readouterr()
    fails_in_one_line(Result(code, captured.out, captured.err), "--output", "Read-only file system")
    assert os.listdir(folder) == []


def test_disk_filling_during_preprocessing_keeps_the_committed_rows(setup, vqvae, tmp_path, capsys):
    from PIL import Image

    from data_utils.datasets import LMDBDataset
    from data_utils.lmdb_readers import close_reader
    from preprocess_entry import main

    rng = np.random.default_rng(0)
    lines = []
    for i in range(60):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / f"img{i}.png")
        lines.append(f"img{i}.png\ta red bird number {i}")
    (tmp_path / "images.tsv").write_text("\n".join(lines) + "\n")
    with small_disk(48) as folder:
        output = os.path.join(folder, "out.lmdb")
        argv = [
            *("--captions", str(tmp_path / "images.tsv"), "--img-tokenizer-path", vqvae),
            *("--txt-tokenizer-path", setup["sp"], "--output", output, "--img-size", "64"),
            *("--num-workers", "0", "--no-progress", "--commit-every", "5", "--batch-size", "5"),
        ]
        code = main(argv)
        captured = capsys.readouterr()
        fails_in_one_line(
            Result(code, captured.out, captured.err), f"writing {output} failed (no space left", "rows committed"
        )
        kept = len(LMDBDataset(output))
        close_reader(output)
        assert 0 < kept < 60
        subprocess.run(["mount", "-o", "remount,size=2m", folder], check=True)
        assert main(argv) == 0  # the same command resumes once there is room
        assert len(LMDBDataset(output)) == 60
        close_reader(output)


# ------------------------------------------------------------------ 5. DeepSpeed json files


@pytest.mark.parametrize(
    "content,needles",
    [
        ("[1, 2]", ("expected a JSON object", "got a list")),
        ("{not json", ("cannot read it as json",)),
        ('{"optimizer": {"params": [0.1]}}', ("'optimizer.params' must be an object",)),
        ('{"train_micro_batch_size_per_gpu": 0}', ("'train_micro_batch_size_per_gpu' must be an integer >= 1",)),
        (None, ("cannot read it as json", "No such file")),
    ],
    ids=["list", "unparsable", "params-not-object", "batch-0", "missing"],
)
def test_bad_deepspeed_config_is_one_line(setup, tmp_path, capsys, content, needles):
    config = tmp_path / "ds.json"
    if content is not None:
        config.write_text(content)
    argv = flags(setup, tmp_path / "ckpt", tmp_path, **{"--deepspeed": True, "--deepspeed_config": str(config)})
    with pytest.raises(SystemExit) as exit_info:
        train(argv, capsys)
    err = capsys.readouterr().err
    fails_in_one_line(Result(exit_info.value.code, "", err), f"--deepspeed_config {config}", *needles, code=2)


# --------------------------------------------------------------------- 6. signals


def _stop_with(signum: int, setup, tmp_path, stop_after: int = 4) -> tuple:
    """Run in a subprocess, send ``signum`` once iteration ``stop_after`` is logged; (result, run folder)."""
    save = tmp_path / "ckpt"
    argv = flags(setup, save, tmp_path, **{"--train-iters": 500, "--save-interval": 3})
    proc = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "pretrain_gpt2.py"), *argv],
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if f" iteration {stop_after:8d}/" in line:
            proc.send_signal(signum)
            break
    out, err = proc.communicate(timeout=120)
    return Result(proc.returncode, "".join(lines) + out, err), run_dirs(save)[0]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_saves_a_checkpoint_where_training_stops(setup, tmp_path, signum):
    result, run_dir = _stop_with(signum, setup, tmp_path)
    name = signal.Signals(signum).name
    assert_fails_cleanly(result, f"stopped by {name} at iteration", "saved in", code=128 + signum)
    (line,) = [x for x in result.err.splitlines() if "stopped by" in x]
    reached = int(line.split(" at iteration ")[1].split(":")[0])
    assert reached >= 4 and tracker(run_dir) == str(reached)
    assert os.path.isfile(os.path.join(run_dir, str(reached), "mp_rank_00_model_states.pt"))
    assert os.path.isfile(os.path.join(run_dir, "3", "mp_rank_00_model_states.pt"))  # earlier ones stay


def test_sigterm_to_torchrun_stops_every_rank_at_one_iteration(setup, tmp_path):
    save = tmp_path / "ckpt"
    argv = flags(setup, save, tmp_path, **{"--train-iters": 2000, "--batch-size": 2, "--save-interval": 1000})
    cmd = [
        sys.executable,
        os.path.join(ROOT, "scripts", "run_torchrun.py"),
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
        os.path.join(ROOT, "pretrain_gpt2.py"),
        *argv,
    ]
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if " iteration        5/" in line:
            proc.send_signal(signal.SIGTERM)
            break
    out, err = proc.communicate(timeout=180)
    result = Result(proc.returncode, "".join(lines) + out, err)
    assert_fails_cleanly(result, "stopped by SIGTERM at iteration", "saved in", code=128 + signal.SIGTERM)
    stops = [x for x in err.splitlines() if "pretrain_gpt2.py: stopped by SIGTERM" in x]
    assert len(stops) == 1, err  # rank 0 speaks for both
    reached = int(stops[0].split(" at iteration ")[1].split(":")[0])
    (run_dir,) = run_dirs(save)
    assert tracker(run_dir) == str(reached) and os.listdir(run_dir + f"/{reached}") == ["mp_rank_00_model_states.pt"]
    assert "world size 2" in result.out


def test_temporary_file_of_a_killed_save_is_removed_at_the_next_start(setup, tmp_path):
    save = tmp_path / "run"
    argv = flags(setup, save, tmp_path, **{"--train-iters": 40, "--save-interval": 10})
    worker = os.path.join(ROOT, "tests", "kill_in_save_worker.py")
    killed = subprocess.run(
        [sys.executable, worker, *argv], env={**env(), "KILL_AT_SAVE": "2"}, capture_output=True, text=True
    )
    assert killed.returncode == -signal.SIGKILL
    (run_dir,) = run_dirs(save)
    assert temp_files(run_dir) and tracker(run_dir) == "10"
    before = tree_hashes(os.path.join(run_dir, "10"))
    # resume to an iteration before the interrupted save's: only the start-up clean-up can remove it
    resumed = run(["pretrain_gpt2.py", *argv, "--load", run_dir, "--train-iters", "12"])
    assert resumed.code == 0, resumed.err[-2000:]
    assert "removed 1 temporary file(s) of an interrupted save" in resumed.out
    assert temp_files(run_dir) == [] and tracker(run_dir) == "12"
    assert tree_hashes(os.path.join(run_dir, "10")) == before


def test_script_reports_a_read_only_save_in_one_line(setup, tmp_path):
    """scripts/pretrain_single_node.sh (torchrun on CPU): the launcher adds no traceback."""
    save = tmp_path / "ro"
    save.mkdir()
    overrides = {
        k: None
        for k in ("--batch-size", "--lr", "--warmup", "--lr-decay-style", "--seed", "--device", "--experiment-name")
    }
    argv = flags(setup, save, tmp_path, **overrides, **{"--train-iters": 2, "--save-interval": None})
    with read_only(str(save)):
        result = run(["scripts/pretrain_single_node.sh", *argv], env={"FORCE_CPU": "1"}, cwd=str(tmp_path))
    assert_fails_cleanly(result, f"--save {save}", "Read-only file system", code=1)
    assert "torchrun: training process of rank 0 exited with code 1" in result.err
    assert os.listdir(save) == []


# -------------------------------------------------------------- 7. flags without meaning


@pytest.mark.parametrize(
    "override,needles,code",
    [
        ({"--train-iters": -5}, ("--train-iters must be >= 0", "-5"), 1),
        ({"--train-iters": 0}, ("--train-iters 0", "nothing to train", "no validation or test data"), 1),
        ({"--save-interval": 0}, ("--save-interval must be >= 1",), 1),
        ({"--batch-size": 0}, ("--batch-size", "at least 1"), 2),
        ({"--lr": -0.1}, ("--lr must be a number >= 0",), 1),
        ({"--warmup": 1.5}, ("--warmup", "within [0, 1]"), 1),
        ({"--split": "1,,2"}, ("--split", "expected numbers"), 1),
        ({"--split": "7,2,1,5"}, ("--split", "at most three proportions"), 1),
        ({"--num-attention-heads": 0}, ("--num-attention-heads must be at least 1", "0"), 2),
    ],
    ids=[
        "train-iters-negative",
        "train-iters-0",
        "save-interval-0",
        "batch-0",
        "lr",
        "warmup",
        "split",
        "split-4",
        "heads-0",
    ],
)
def test_meaningless_flag_is_refused(setup, tmp_path, capsys, override, needles, code):
    save = tmp_path / "ckpt"
    argv = flags(setup, save, tmp_path, **override)
    if code == 2:
        with pytest.raises(SystemExit) as exit_info:
            train(argv, capsys)
        result = Result(exit_info.value.code, "", capsys.readouterr().err)
    else:
        result = train(argv, capsys)
    fails_in_one_line(result, *needles, code=code)
    no_step_ran(result)
    assert run_dirs(save) == []


def test_load_of_the_save_root_names_its_run_folders(setup, tmp_path, capsys):
    save = tmp_path / "ckpt"
    assert train(flags(setup, save, tmp_path, **{"--train-iters": 2}), capsys).code == 0
    (run_dir,) = run_dirs(save)
    before = tree_hashes(str(save))
    result = train(flags(setup, save, tmp_path, **{"--load": str(save)}), capsys)
    fails_in_one_line(result, f"--load {save} holds no checkpoint itself", os.path.basename(run_dir), "pass one")
    no_step_ran(result)
    assert tree_hashes(str(save)) == before


def test_load_of_a_folder_that_does_not_exist_creates_nothing(setup, tmp_path, capsys):
    save = tmp_path / "ckpt"
    assert train(flags(setup, save, tmp_path, **{"--train-iters": 2}), capsys).code == 0
    (run_dir,) = run_dirs(save)
    before = tree_hashes(str(save))
    typo = run_dir + "x"  # a --load inside --save: its run folder would be the --load folder
    result = train(flags(setup, save, tmp_path, **{"--load": typo}), capsys)
    fails_in_one_line(result, f"--load {typo}: no such checkpoint folder")
    assert tree_hashes(str(save)) == before and run_dirs(save) == [run_dir]


def test_load_of_a_folder_with_other_files_is_refused(setup, tmp_path, capsys):
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "model.bin").write_bytes(b"x")
    result = train(flags(setup, tmp_path / "ckpt", tmp_path, **{"--load": str(folder)}), capsys)
    fails_in_one_line(result, f"--load {folder} holds no checkpoint", "model.bin")


def test_load_of_a_checkpoint_with_other_shapes_names_the_flag(setup, tmp_path, capsys):
    save = tmp_path / "ckpt"
    assert train(flags(setup, save, tmp_path, **{"--train-iters": 2}), capsys).code == 0
    (run_dir,) = run_dirs(save)
    before = tree_hashes(str(save))
    result = train(flags(setup, save, tmp_path, **{"--load": run_dir, "--hidden-size": 64}), capsys)
    fails_in_one_line(result, "--hidden-size is 32 in the checkpoint but 64 on the command line")
    no_step_ran(result)
    assert tree_hashes(str(save)) == before


# ------------------------------------------------------------ 8. permissions under umask


def test_checkpoint_files_are_group_readable_under_umask_022(setup, tmp_path, capsys):
    old = os.umask(0o022)
    try:
        result = train(flags(setup, tmp_path / "ckpt", tmp_path, **{"--train-iters": 2}), capsys)
    finally:
        os.umask(old)
    assert result.code == 0, result.err
    (run_dir,) = run_dirs(tmp_path / "ckpt")
    for name in ("2/mp_rank_00_model_states.pt", TRACKER, "model_config.json"):
        mode = os.stat(os.path.join(run_dir, name)).st_mode & 0o777
        assert mode == 0o644, f"{name}: {oct(mode)}"
