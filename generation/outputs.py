"""Writing generated images: one file per sample, a concat grid, or the debug grid."""

from __future__ import annotations

import contextlib
import itertools
import os
import time
from typing import List

import torch
import torch.nn.functional as F

from common.fileio import probe_writable
from vqvae import save_image


def to_side(image: torch.Tensor, side: int) -> torch.Tensor:
    """[1, 3, H, W] -> [1, 3, side, side] (nearest, as the original upsampled 128 px)."""
    if image.size(-1) == side:
        return image
    return F.interpolate(image.float(), size=(side, side), mode="nearest")


class OutputError(Exception):
    """An output that cannot be written; the message names the path and the fix."""


def check_output_folder(path: str, flag: str = "--output-path") -> None:
    """Create ``path`` and write and remove a probe file in it, so a file in the way, a
    read-only mount or a full disk stops the run before any sampling instead of after it."""
    if not path:
        raise OutputError(f"{flag} is empty; pass a folder (it is created if missing)")
    if os.path.exists(path) and not os.path.isdir(path):
        raise OutputError(f"{flag} {path}: is a file, not a folder; pass a folder (it is created if missing)")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{flag} {path}: cannot create it ({_reason(exc)}); pass a folder you can write to") from None
    try:
        probe_writable(path)
    except OSError as exc:
        raise OutputError(
            f"{flag} {path}: cannot write there ({_reason(exc)}); pass a folder you can write to"
        ) from None


def unique_folder(parent: str, name: str) -> str:
    """A new, empty ``<parent>/<name>`` (or ``<name>-1``, ``<name>-2``... when taken), created
    here with one mkdir each, so no earlier output is ever written into, not even by another
    process choosing at the same time."""
    try:
        os.makedirs(parent, exist_ok=True)
        for k in itertools.count():
            path = os.path.join(parent, name if k == 0 else f"{name}-{k}")
            try:
                os.mkdir(path)
                return path
            except FileExistsError:
                continue
    except OSError as exc:
        raise OutputError(f"cannot create a folder in {parent} ({_reason(exc)})") from None
    raise AssertionError("unreachable")


def unique_file(folder: str, stem: str, ext: str) -> str:
    """A new ``<folder>/<stem><ext>`` (or ``<stem>-1<ext>``...), reserved by creating it
    empty, so no existing file is replaced; the caller overwrites the reservation."""
    try:
        os.makedirs(folder, exist_ok=True)
        for k in itertools.count():
            path = os.path.join(folder, f"{stem}{ext}" if k == 0 else f"{stem}-{k}{ext}")
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
                return path
            except FileExistsError:
                continue
    except OSError as exc:
        raise OutputError(f"cannot create a file in {folder} ({_reason(exc)})") from None
    raise AssertionError("unreachable")


def save_samples(images: List[torch.Tensor], folder: str, side: int) -> List[str]:
    """``<folder>/<i>.jpg`` per sample and ``<folder>/concat.jpg``; returns the paths.

    ``folder`` should be fresh (unique_folder): files in it are replaced."""
    os.makedirs(folder, exist_ok=True)
    batch = torch.cat([to_side(im, side) for im in images]).clamp(0, 1)
    paths: List[str] = []
    for i, image in enumerate(batch):
        path = os.path.join(folder, f"{i}.jpg")
        kept = f"{len(paths)} of {len(batch)} image(s) kept in {folder}" if paths else "no image of it was written"
        _save(image, path, kept)
        paths.append(path)
    _save(batch, os.path.join(folder, "concat.jpg"), f"the {len(batch)} image(s) are kept in {folder}")
    return paths


def save_debug_grid(images: List[torch.Tensor], folder: str, label: str, side: int) -> str:
    """One dated grid ``<label>-<%m-%d-%H-%M-%S>.jpg`` holding every image (``-1``, ``-2``...
    added when that name is taken)."""
    path = unique_file(folder, f"{label}-{time.strftime('%m-%d-%H-%M-%S')}", ".jpg")
    batch = torch.cat([to_side(im, side) for im in images]).clamp(0, 1)
    try:
        _save(batch[0] if batch.size(0) == 1 else batch, path)  # one image: no grid border
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(path)  # the empty reservation
        raise
    return path


def append_text(path: str, text: str) -> None:
    """Append ``text`` to ``path`` whole or not at all: a write cut short (a full disk) is
    undone by truncating the file back, so the file never ends in half a record."""
    data = text.encode("utf-8")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    except OSError as exc:
        raise OutputError(f"cannot open {path} to append ({_reason(exc)})") from None
    try:
        size = os.fstat(fd).st_size
        try:
            written = 0
            while written < len(data):
                written += os.write(fd, data[written:])
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)
            raise OutputError(
                f"cannot append to {path} ({_reason(exc)}); the file is as it was; "
                "free some space or pass another --output-path"
            ) from None
    finally:
        os.close(fd)


def _save(image: torch.Tensor, path: str, kept: str = "") -> None:
    """save_image (atomic: the file is whole or absent) with a one-line OutputError."""
    try:
        save_image(image, path)
    except OSError as exc:
        raise OutputError(
            f"cannot write {path} ({_reason(exc)}){'; ' + kept if kept else ''}; "
            "free some space or pass another --output-path"
        ) from None


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


SENTENCE_ENDS = (".", "。", "!", "！", "?", "？")


def first_sentence(text: str) -> str:
    """A generated caption up to its first sentence end (kept), else all of it.

    The caption positions are a fixed number of [MASK]s; a model trained on captions that
    end with a full stop fills the rest with whatever follows, which is not caption.
    """
    text = text.strip()
    ends = [i for i in (text.find(e) for e in SENTENCE_ENDS) if i >= 0]
    return text[: min(ends) + 1] if ends else text
