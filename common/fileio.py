"""Atomic file writes: whoever reads the file, or restarts after a crash, sees either the old
file or the complete new one, never a partial file under the final name.

Every atomic write in the project goes through ``atomic_write`` and follows these rules:

* the data goes to a temporary file in the target's own folder (a rename is atomic only
  within one file system) named ``.tmp-<pid>-<random>-<name>``: unique per writer, hidden,
  recognisable by ``remove_stale_temps``, and still ending in the target's name, so writers
  that choose a format by suffix see the right extension;
* the temporary file is fsynced before it is renamed over the target (and the folder after
  the rename), so a crash or power loss cannot leave a truncated file under the final name;
* the temporary file is removed on any failure, KeyboardInterrupt and SystemExit included;
  only a writer killed outright (SIGKILL, power loss) leaves one behind, and
  ``remove_stale_temps`` deletes it when the folder is next opened for saving;
* the new file gets mode 0o666 minus the process umask, as ``open()`` would create it, so
  permissions never depend on whether a file was written atomically.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import Callable, Mapping
from typing import Any

PathLike = str | os.PathLike[str]

TEMP_PREFIX = ".tmp-"
_TEMP_NAME = re.compile(r"\.tmp-\d+-[0-9a-f]+-(?P<name>.+)\Z", re.S)


def temp_name_target(filename: str) -> str | None:
    """The target name a temporary file of ``atomic_write`` stands for, or None for other files."""
    match = _TEMP_NAME.match(filename)
    return match.group("name") if match else None


def _create_temp(folder: str, name: str) -> str:
    """Create (exclusively) an empty temporary file for ``name`` in ``folder``; return its path."""
    while True:
        tmp = os.path.join(folder, f"{TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}-{name}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp


def _fsync_path(path: str, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: PathLike, write: Callable[[str], Any]) -> None:
    """Replace ``path`` with what ``write(tmp_path)`` writes to a temporary path (rules above).

    ``write`` gets a path whose file already exists (empty); it may open it, or hand it to
    ``torch.save`` / ``PIL.Image.save``. Anything it raises propagates after the temporary
    file is removed, and ``path`` is left as it was.
    """
    path = os.fspath(path)
    folder, name = os.path.split(path)
    if not name:
        raise ValueError(f"atomic_write needs a file name, got the folder {path!r}")
    folder = folder or "."
    tmp = _create_temp(folder, name)
    try:
        write(tmp)
        _fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    with contextlib.suppress(OSError):  # durability of the rename; not every file system allows it
        _fsync_path(folder, directory=True)


def write_text_atomic(path: PathLike, text: str, encoding: str = "utf-8") -> None:
    """Atomically replace ``path`` with ``text``."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding=encoding) as f:
            f.write(text)

    atomic_write(path, write)


def torch_save_atomic(obj: Any, path: PathLike) -> None:
    """Atomically replace ``path`` with ``torch.save(obj)``."""
    import torch  # here, so the text helpers do not pay for importing torch

    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def save_safetensors_atomic(
    tensors: Mapping[str, Any], path: PathLike, metadata: Mapping[str, str] | None = None
) -> None:
    """Atomically replace ``path`` with a safetensors file of ``tensors`` (+ string ``metadata``)."""
    from safetensors.torch import save_file

    atomic_write(path, lambda tmp: save_file(dict(tensors), tmp, metadata=dict(metadata or {})))


def remove_stale_temps(folder: PathLike, name: str | None = None) -> list[str]:
    """Delete the temporary files that killed writers left in ``folder``; return their paths.

    With ``name``, only the temporaries of that target file; without, every one in the folder.
    Call it only where this process is the one writer of ``name`` (or of the whole folder):
    the temporary file of a write in progress elsewhere would be deleted too. A missing
    folder has nothing to remove.
    """
    folder = os.fspath(folder)
    try:
        entries = os.listdir(folder)
    except FileNotFoundError:
        return []
    removed = []
    for entry in entries:
        target = temp_name_target(entry)
        if target is None or (name is not None and target != name):
            continue
        path = os.path.join(folder, entry)
        with contextlib.suppress(FileNotFoundError, IsADirectoryError):
            os.remove(path)
            removed.append(path)
    return removed


PROBE_PREFIX = ".write-probe-"


def probe_writable(folder: PathLike, size: int = 4096) -> None:
    """Create ``folder``, then write, fsync and remove a small probe file in it.

    Raises the OSError a read-only mount, a file in the way or a full disk gives, at start-up,
    so a run stops before any work whose output could not be written."""
    os.makedirs(folder, exist_ok=True)
    probe = os.path.join(folder, f"{PROBE_PREFIX}{os.getpid()}-{secrets.token_hex(4)}")
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        try:
            os.write(fd, b"\0" * size)
            os.fsync(fd)
        finally:
            os.close(fd)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(probe)
