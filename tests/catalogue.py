"""Shared checks of the bad-input catalogue (``tests/test_bad_inputs_*.py``): what a user
expects when they get something wrong or a fault hits a run.

Every case asserts the same things: the exit code, one line that names the problem (and
the fix), no ``Traceback``, and nothing overwritten or lost (file hashes before and after).
Read-only folders and full disks are real mounts (a read-only bind mount, a small tmpfs);
they need root, and a case that cannot mount skips and says why.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from typing import Dict, Iterator, Optional, Sequence

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err


def run(
    argv: Sequence[str],
    cwd: Optional[str] = None,
    env: Optional[Dict[str, str]] = None,
    stdin: Optional[str] = None,
    timeout: float = 600,
) -> Result:
    """A command of the project (``argv[0]`` a script path relative to the repo root, run with
    this Python, or ``bash`` for a shell script) as a user runs it."""
    cmd = list(argv)
    if cmd[0].endswith(".py"):
        cmd = [sys.executable, os.path.join(ROOT, cmd[0]), *cmd[1:]]
    elif cmd[0].endswith(".sh"):
        cmd = ["bash", os.path.join(ROOT, cmd[0]), *cmd[1:]]
    full_env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", PYTHONUNBUFFERED="1")
    full_env.update(env or {})
    proc = subprocess.run(
        cmd, cwd=cwd or ROOT, env=full_env, input=stdin, capture_output=True, text=True, timeout=timeout
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def error_lines(result: Result) -> list:
    """The stderr lines that report a problem (progress bars and warnings left out)."""
    lines = [line.strip() for line in result.err.replace("\r", "\n").splitlines()]
    return [line for line in lines if "error" in line.lower() or line.startswith("line ")]


def assert_fails_cleanly(result: Result, *needles: str, code: Optional[int] = None) -> None:
    """Non-zero exit (or exactly ``code``), no traceback, and one stderr line holding every needle."""
    assert "Traceback" not in result.text, result.text[-3000:]
    if code is None:
        assert result.code != 0, result.text[-3000:]
    else:
        assert result.code == code, f"exit {result.code}, wanted {code}\n{result.text[-3000:]}"
    lines = [line for line in result.err.replace("\r", "\n").splitlines() if all(n in line for n in needles)]
    assert lines, f"no stderr line names {needles}:\n{result.err[-3000:]}"


def assert_no_traceback(result: Result) -> None:
    assert "Traceback" not in result.text, result.text[-3000:]


def tree_hashes(path: str) -> Dict[str, str]:
    """sha256 of every file under ``path`` (or of ``path`` itself), by relative path."""
    if os.path.isfile(path):
        return {"": _sha256(path)}
    found = {}
    for folder, _, files in os.walk(path):
        for name in files:
            full = os.path.join(folder, name)
            found[os.path.relpath(full, path)] = _sha256(full)
    return found


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _mount(args: Sequence[str]) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a read-only folder or a small disk needs root")
    proc = subprocess.run(["mount", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount here ({proc.stderr.strip()})")


@contextlib.contextmanager
def read_only(path: str) -> Iterator[str]:
    """``path`` (a folder) made read-only by a read-only bind mount onto itself."""
    _mount(["--bind", path, path])
    try:
        _mount(["-o", "remount,ro,bind", path, path])
        yield path
    finally:
        subprocess.run(["umount", "-l", path], capture_output=True)


@contextlib.contextmanager
def small_disk(size_kb: int) -> Iterator[str]:
    """A fresh folder on a tmpfs of ``size_kb`` KiB: writes past that fail with ENOSPC."""
    folder = tempfile.mkdtemp(prefix="cogview-full-")
    try:
        _mount(["-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", folder])
        try:
            yield folder
        finally:
            subprocess.run(["umount", "-l", folder], capture_output=True)
    finally:
        os.rmdir(folder)
