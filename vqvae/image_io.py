"""Image I/O for the VQ-VAE with Pillow + numpy (no torchvision).

Reading follows torchvision's Resize(size) (shorter side, bilinear) + CenterCrop + ToTensor +
Normalize on PIL images, which is what the original read_img did, but converts every mode to RGB
first (the original failed on grey, palette and CMYK images).
"""

from __future__ import annotations

import math
import os
from typing import Sequence, Union

import numpy as np
import torch
from PIL import Image, ImageFile, UnidentifiedImageError

from common.fileio import atomic_write

# Mean / std of the corpus the released VQ-VAE was trained on (bright images: means near 0.77).
MEAN: tuple[float, float, float] = (0.79093, 0.76271, 0.75340)
STD: tuple[float, float, float] = (0.30379, 0.32279, 0.32800)

ImageLike = Union[str, os.PathLike, Image.Image]


def _stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (1, 3, 1, 1) if x.dim() == 4 else (3, 1, 1)
    mean = torch.tensor(MEAN, dtype=x.dtype, device=x.device).view(shape)
    std = torch.tensor(STD, dtype=x.dtype, device=x.device).view(shape)
    return mean, std


def normalize(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] RGB ([3,H,W] or [b,3,H,W]) -> the VQ-VAE's input space."""
    mean, std = _stats(x)
    return (x - mean) / std


def denormalize(x: torch.Tensor) -> torch.Tensor:
    """VQ-VAE output space -> [0, 1] RGB (not clamped)."""
    mean, std = _stats(x)
    return x * std + mean


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB; alpha is dropped (not composited), as the original's
    'keep the first three channels' did for RGBA."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I") and arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img.convert("RGB")


def open_image(path: ImageLike) -> Image.Image:
    """Open and fully decode an image as RGB; ValueError naming the path on any failure."""
    if isinstance(path, Image.Image):
        return to_rgb(path)
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ValueError(f"cannot read image {path}: no such file")
    if os.path.isdir(path):
        raise ValueError(f"cannot read image {path}: is a directory")
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with Image.open(path) as img:
            img.load()
            return to_rgb(img)
    except UnidentifiedImageError:
        raise ValueError(f"cannot read image {path}: not an image file Pillow can identify") from None
    except Image.DecompressionBombError as exc:
        raise ValueError(f"cannot read image {path}: too many pixels ({exc})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise ValueError(f"cannot read image {path}: truncated or corrupt ({reason})") from None
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def resize_shorter(img: Image.Image, size: int) -> Image.Image:
    """torchvision Resize(size) on a PIL image: shorter side -> size, bilinear, aspect kept."""
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    if short == size:
        return img
    new_long = int(size * long / short)
    new = (size, new_long) if w <= h else (new_long, size)
    return img.resize(new, Image.BILINEAR)


def center_crop(img: Image.Image, size: int) -> Image.Image:
    """torchvision CenterCrop(size) (images at least ``size`` on both sides)."""
    w, h = img.size
    top = int(round((h - size) / 2.0))
    left = int(round((w - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float [3, H, W] in [0, 1]."""
    arr = np.asarray(img, dtype=np.uint8)
    return torch.from_numpy(arr.astype(np.float32) / 255.0).permute(2, 0, 1).contiguous()


def read_img(path: ImageLike, img_size: int) -> torch.Tensor:
    """Path or PIL image -> normalised FloatTensor [1, 3, img_size, img_size] for img2code."""
    img = open_image(path)
    img = center_crop(resize_shorter(img, img_size), img_size)
    return normalize(pil_to_tensor(img)).unsqueeze(0)


def make_grid(images: torch.Tensor, nrow: int = 8, padding: int = 2, pad_value: float = 0.0) -> torch.Tensor:
    """[b, 3, H, W] -> one [3, H', W'] picture with ``nrow`` images per row (torchvision layout)."""
    if images.dim() == 3:
        return images
    b, c, h, w = images.shape
    cols = min(nrow, b)
    rows = int(math.ceil(b / cols))
    grid = images.new_full((c, rows * (h + padding) + padding, cols * (w + padding) + padding), pad_value)
    for k in range(b):
        r, col = divmod(k, cols)
        top, left = r * (h + padding) + padding, col * (w + padding) + padding
        grid[:, top : top + h, left : left + w] = images[k]
    return grid


_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP"}


def save_image(images: torch.Tensor, path: Union[str, os.PathLike], nrow: int = 8, padding: int = 2) -> None:
    """Write [3,H,W] or [b,3,H,W] values in [0, 1] (e.g. code2img output; clamped) as one picture.

    Written atomically (common.fileio), so a reader never sees half an image.
    """
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext not in _FORMATS:
        raise ValueError(
            f"cannot save {path}: unsupported extension {ext!r} (use one of {', '.join(sorted(_FORMATS))})"
        )
    grid = make_grid(images.detach().float().cpu(), nrow=nrow, padding=padding)
    arr = grid.clamp(0, 1).mul(255).add(0.5).clamp(0, 255).to(torch.uint8)
    img = Image.fromarray(arr.permute(1, 2, 0).numpy(), "RGB")
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    options = {"quality": 95} if ext in (".jpg", ".jpeg") else {}
    atomic_write(path, lambda tmp: img.save(tmp, format=_FORMATS[ext], **options))


def read_imgs(paths: Sequence[ImageLike], img_size: int) -> torch.Tensor:
    """Several images -> normalised [n, 3, S, S] (read_img on each, stacked)."""
    return torch.cat([read_img(p, img_size) for p in paths], 0)
