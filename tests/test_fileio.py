"""common.fileio: atomic writes (old or complete new file), umask permissions, temp clean-up."""

from __future__ import annotations

import os
import stat

import pytest
import torch

from arch.checkpoint import TRACKER_FILENAME, model_states_filename, save_checkpoint
from common.fileio import atomic_write, remove_stale_temps, temp_name_target, torch_save_atomic, write_text_atomic


@pytest.fixture
def umask():
    """Set the process umask for one test, then put the old one back."""
    old = os.umask(0o022)
    try:
        yield os.umask
    finally:
        os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_files_follow_the_umask(tmp_path, umask):
    umask(0o022)
    checkpoint = save_checkpoint(str(tmp_path / "run"), 10, {"w": torch.zeros(2)})
    text = tmp_path / "notes.txt"
    write_text_atomic(text, "hello\n")
    assert mode(checkpoint) == 0o644
    assert mode(tmp_path / "run" / TRACKER_FILENAME) == 0o644
    assert mode(text) == 0o644
    umask(0o027)
    torch_save_atomic({"w": torch.ones(1)}, tmp_path / "other.pt")
    write_text_atomic(text, "again\n")
    assert mode(tmp_path / "other.pt") == 0o640 and mode(text) == 0o640


def test_write_replaces_the_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "a.txt"
    write_text_atomic(target, "old")
    write_text_atomic(str(target), "new é\n")
    assert target.read_text(encoding="utf-8") == "new é\n"
    torch_save_atomic({"x": torch.arange(3)}, tmp_path / "b.pt")
    assert torch.equal(torch.load(tmp_path / "b.pt", weights_only=True)["x"], torch.arange(3))
    assert sorted(os.listdir(tmp_path)) == ["a.txt", "b.pt"]


def test_temporary_is_hidden_unique_beside_the_target_and_keeps_the_suffix(tmp_path):
    seen = []

    def write(tmp: str) -> None:
        seen.append(tmp)
        assert os.path.isfile(tmp) and os.path.getsize(tmp) == 0  # created (exclusively) before write
        with open(tmp, "w") as f:
            f.write("x")

    atomic_write(tmp_path / "image.png", write)
    atomic_write(tmp_path / "image.png", write)
    assert seen[0] != seen[1]
    for tmp in seen:
        folder, name = os.path.split(tmp)
        assert folder == str(tmp_path) and name.startswith(".tmp-") and name.endswith("-image.png")
        assert temp_name_target(name) == "image.png"


@pytest.mark.parametrize("error", [ValueError("disk full"), KeyboardInterrupt()])
def test_a_failing_write_keeps_the_old_file_and_removes_its_temporary(tmp_path, error):
    target = tmp_path / "ckpt.pt"
    torch_save_atomic({"v": torch.tensor(1)}, target)

    def half_then_fail(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(b"partial")
        raise error

    with pytest.raises(type(error)):
        atomic_write(target, half_then_fail)
    assert os.listdir(tmp_path) == ["ckpt.pt"]
    assert torch.load(target, weights_only=True)["v"].item() == 1


def test_data_is_fsynced_before_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", os.path.realpath(src)))
        return real_replace(src, dst)

    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc to name a file descriptor")
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    write_text_atomic(tmp_path / "t.txt", "data")
    kinds = [kind for kind, _ in events]
    tmp = events[kinds.index("replace")][1]
    assert ("fsync", tmp) in events[: kinds.index("replace")]
    assert events[-1] == ("fsync", os.path.realpath(tmp_path))  # then the folder: the rename is durable


def test_remove_stale_temps_removes_only_temporaries_of_the_named_file(tmp_path):
    names = [
        ".tmp-4242-0a1b2c3d-ckpt.pt",
        ".tmp-7-ff-ckpt.pt",
        ".tmp-4242-0a1b2c3d-other.txt",
        ".tmp-notours",
        "ckpt.pt",
        "x.tmp-1-ab-ckpt.pt",
    ]
    for name in names:
        (tmp_path / name).write_text("x")
    removed = remove_stale_temps(tmp_path, "ckpt.pt")
    assert sorted(os.path.basename(p) for p in removed) == [".tmp-4242-0a1b2c3d-ckpt.pt", ".tmp-7-ff-ckpt.pt"]
    assert sorted(os.listdir(tmp_path)) == sorted(names[2:])
    assert [os.path.basename(p) for p in remove_stale_temps(tmp_path)] == [".tmp-4242-0a1b2c3d-other.txt"]
    assert sorted(os.listdir(tmp_path)) == sorted(names[3:])
    assert remove_stale_temps(tmp_path / "missing") == []


def test_save_checkpoint_removes_what_a_killed_save_left(tmp_path):
    folder = tmp_path / "run" / "20"
    folder.mkdir(parents=True)
    name = model_states_filename(0)
    (folder / f".tmp-99999-deadbeef-{name}").write_bytes(b"half a checkpoint")
    (folder / f".tmp-99999-deadbeef-{model_states_filename(1)}").write_bytes(b"another rank's file")
    (tmp_path / "run" / f".tmp-99999-deadbeef-{TRACKER_FILENAME}").write_text("2")
    save_checkpoint(str(tmp_path / "run"), 20, {"w": torch.zeros(1)})
    assert sorted(os.listdir(folder)) == sorted([name, f".tmp-99999-deadbeef-{model_states_filename(1)}"])
    assert sorted(os.listdir(tmp_path / "run")) == ["20", TRACKER_FILENAME]
