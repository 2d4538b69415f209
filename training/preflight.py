"""Start-up checks of a training run: the flags, the run folder, the save location.

Each problem found here is one line before any step runs, so a mistake costs seconds
instead of the iterations a run would throw away when it first tried to save.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import shutil
from typing import List, Optional, Tuple

from common.fileio import probe_writable, remove_stale_temps


def check_training_args(args) -> None:
    """ValueError naming the first training flag whose value cannot mean anything."""

    def number(name: str) -> float:
        return getattr(args, name.lstrip("-").replace("-", "_"))  # a declared flag, looked up by its name

    for flag in ("--train-iters", "--eval-iters", "--eval-interval"):
        if number(flag) < 0:
            raise ValueError(f"{flag} must be >= 0, got {number(flag)}")
    for flag in ("--save-interval", "--log-interval"):
        if number(flag) < 1:
            raise ValueError(f"{flag} must be >= 1 (iterations between two {flag[2:6]}s), got {number(flag)}")
    for flag in ("--exit-interval", "--lr-decay-iters"):
        if number(flag) is not None and number(flag) < 1:
            raise ValueError(f"{flag} must be >= 1 when given, got {number(flag)}")
    if not math.isfinite(args.lr) or args.lr < 0:
        raise ValueError(f"--lr must be a number >= 0, got {args.lr}")
    if not 0.0 <= args.warmup <= 1.0:
        raise ValueError(
            f"--warmup is the fraction of the schedule spent warming up: within [0, 1] (e.g. 0.01), got {args.warmup}"
        )
    if not math.isfinite(args.clip_grad) or args.clip_grad < 0:
        raise ValueError(f"--clip-grad must be >= 0 (0: no clipping), got {args.clip_grad}")
    if args.num_workers < 0:
        raise ValueError(f"--num-workers must be >= 0 (0: load data in the training process), got {args.num_workers}")


def _holds_files(folder: str) -> bool:
    try:
        return any(not name.startswith(".") for name in os.listdir(folder))
    except FileNotFoundError:
        return False


def claim_run_folder(save_root: str, name: str, load: Optional[str]) -> Tuple[str, bool]:
    """(name of this run's folder under ``save_root``, whether this call created it).

    The --load folder itself is resumed in place. Any other existing folder belongs to another
    run (two runs started in the same minute get the same timestamped name): the name gets
    ``-1``, ``-2``... Creating the folder claims it (``os.mkdir`` fails when another process
    got there first), so two runs never share one. An empty folder is used as it is when
    --load names other weights (a fine-tuning script may create its run folder first).
    """
    os.makedirs(save_root, exist_ok=True)
    base = os.path.join(save_root, name)
    if load and os.path.realpath(base) == os.path.realpath(load):
        return name, False
    candidate, k = name, 0
    while True:
        path = os.path.join(save_root, candidate)
        if load and os.path.isdir(path) and not _holds_files(path):
            return candidate, False
        try:
            os.mkdir(path)
            return candidate, True
        except FileExistsError:
            k += 1
            candidate = f"{name}-{k}"


def save_location_error(save_root: str, folder: str, exc: OSError) -> str:
    """The one line for a --save location that cannot be written."""
    if exc.errno in (errno.EEXIST, errno.ENOTDIR):
        return f"--save {save_root}: {exc.filename or folder} is a file, not a folder; choose a folder for --save"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"--save {save_root}: no space left on the disk of {folder}; free space or choose another --save folder"
    return f"--save {save_root}: cannot write in {folder} ({exc.strerror or exc}); choose a writable --save folder"


def check_writable(save_root: str, folder: str, rank: int) -> Optional[str]:
    """Create ``folder`` and write, fsync and remove a small probe file there; the error line, or None."""
    try:
        probe_writable(folder)
    except OSError as exc:
        return save_location_error(save_root, folder, exc)
    return None


def check_free_space(save_root: str, folder: str, needed: int) -> Optional[str]:
    """The error line when the disk of ``folder`` cannot hold one more checkpoint of ``needed`` bytes."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return None
    if free >= needed:
        return None
    return (
        f"--save {save_root}: {_size(free)} free on the disk of {folder}, but a checkpoint needs about "
        f"{_size(needed)}; free space or choose another --save folder"
    )


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def remove_interrupted_saves(folder: str) -> List[str]:
    """Temporary files a killed save left in the run folder and its iteration folders (this
    run is their only writer: the folder is claimed or resumed by it alone)."""
    removed = remove_stale_temps(folder)
    with contextlib.suppress(OSError):
        for name in os.listdir(folder):
            sub = os.path.join(folder, name)
            if os.path.isdir(sub) and (name.isdigit() or name == "release"):
                removed += remove_stale_temps(sub)
    return removed


def remove_if_empty(folder: str) -> None:
    """Drop a run folder this run created when it ends before writing anything there."""
    with contextlib.suppress(OSError):
        os.rmdir(folder)
