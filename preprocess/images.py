"""Worker side: open one image, convert it to RGB, check its size, resize and crop.

Runs in the --num-workers processes, so it returns plain uint8 arrays (cheap to send
back) and never raises: every failure becomes a one-line reason for the report.
Resize + centre crop are vqvae.image_io's (torchvision's Resize + CenterCrop), the
same steps generation uses on [Image] inputs.
"""

from __future__ import annotations

import os
from typing import List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from vqvae.image_io import center_crop, resize_shorter, to_rgb

ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
WHITE = (255, 255, 255)

# (arrays, note) on success, (None, reason) on failure
Prepared = Tuple[Optional[List[np.ndarray]], Optional[str]]


class ImageSkip(Exception):
    """The image cannot be used; the message is the report's reason."""


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def flatten_to_rgb(img: Image.Image) -> Tuple[Image.Image, Optional[str]]:
    """RGB image and a note when it had to be converted.

    Transparency is composited on white (vqvae.read_img drops alpha, which turns the
    transparent parts of many PNGs black); other modes go through vqvae's to_rgb.
    """
    mode = img.mode
    if mode == "RGB":
        return img, None
    has_alpha = mode in ALPHA_MODES or (mode in ("P", "L", "RGB") and "transparency" in img.info)
    if has_alpha:
        rgba = img.convert("RGBA")
        out = Image.new("RGB", rgba.size, WHITE)
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out, f"{mode} with transparency composited on white"
    return to_rgb(img), f"{mode} converted to RGB"


def _upright(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation (phone photos): captions describe the upright picture."""
    try:
        if img.getexif().get(0x0112, 1) in (0, 1):  # no rotation: skip exif_transpose's copy
            return img
        return ImageOps.exif_transpose(img) or img
    except Exception:  # a broken EXIF block is no reason to drop the pixels
        return img


def open_rgb(path: str, draft_size: int = 0) -> Tuple[Image.Image, Tuple[int, int], Optional[str]]:
    """(RGB image, original size, conversion note); ImageSkip with the reason on failure.

    ``draft_size`` lets JPEG decode at a reduced scale that still covers it (much faster
    for large photos).
    """
    if not os.path.exists(path):
        raise ImageSkip("missing file")
    if os.path.isdir(path):
        raise ImageSkip("is a directory")
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with Image.open(path) as img:
            size = img.size
            if draft_size and img.format == "JPEG":
                img.draft("RGB", (draft_size, draft_size))
            img.load()
            rgb, note = flatten_to_rgb(_upright(img))
            rgb.load()
            return rgb, size, note
    except UnidentifiedImageError:
        raise ImageSkip("not an image (Pillow cannot identify the file)") from None
    except Image.DecompressionBombError as exc:
        raise ImageSkip(f"too large ({_one_line(exc)})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageSkip(f"truncated or corrupt ({_one_line(exc)})") from None
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def prepare_image(path: str, sizes: Sequence[int], min_size: int) -> Prepared:
    """The image resized (shorter side) and centre-cropped to each of ``sizes``, as
    uint8 [S, S, 3] arrays; or None and the reason it was skipped."""
    try:
        img, (w, h), note = open_rgb(path, draft_size=max(sizes))
        if min(w, h) < min_size:
            raise ImageSkip(f"too small ({w}x{h} < --min-size {min_size})")
        arrays = [np.asarray(center_crop(resize_shorter(img, s), s), dtype=np.uint8) for s in sizes]
        return arrays, note
    except ImageSkip as exc:
        return None, str(exc)
    except Exception as exc:  # never let one file kill a worker
        return None, f"unreadable ({type(exc).__name__}: {_one_line(exc)})"


def prepare_chunk(task: Tuple[Sequence[Tuple[int, str]], Sequence[int], int]) -> List[Tuple[int, Prepared]]:
    """Pool entry point: a chunk of (index, path) pairs -> [(index, prepare_image(...))]."""
    items, sizes, min_size = task
    return [(i, prepare_image(path, sizes, min_size)) for i, path in items]
