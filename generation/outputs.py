"""Writing generated images: one file per sample, a concat grid, or the debug grid."""

from __future__ import annotations

import os
import time
from typing import List

import torch
import torch.nn.functional as F

from vqvae import save_image


def to_side(image: torch.Tensor, side: int) -> torch.Tensor:
    """[1, 3, H, W] -> [1, 3, side, side] (nearest, as the original upsampled 128 px)."""
    if image.size(-1) == side:
        return image
    return F.interpolate(image.float(), size=(side, side), mode="nearest")


def save_samples(images: List[torch.Tensor], folder: str, side: int) -> List[str]:
    """``<folder>/<i>.jpg`` per sample and ``<folder>/concat.jpg``; returns the paths."""
    os.makedirs(folder, exist_ok=True)
    batch = torch.cat([to_side(im, side) for im in images]).clamp(0, 1)
    paths = []
    for i, image in enumerate(batch):
        path = os.path.join(folder, f"{i}.jpg")
        save_image(image, path)
        paths.append(path)
    save_image(batch, os.path.join(folder, "concat.jpg"))
    return paths


def save_debug_grid(images: List[torch.Tensor], folder: str, label: str, side: int) -> str:
    """One dated grid ``<label>-<%m-%d-%H-%M-%S>.jpg`` holding every image."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{label}-{time.strftime('%m-%d-%H-%M-%S')}.jpg")
    batch = torch.cat([to_side(im, side) for im in images]).clamp(0, 1)
    save_image(batch[0] if batch.size(0) == 1 else batch, path)  # one image: no grid border
    return path


SENTENCE_ENDS = (".", "。", "!", "！", "?", "？")


def first_sentence(text: str) -> str:
    """A generated caption up to its first sentence end (kept), else all of it.

    The caption positions are a fixed number of [MASK]s; a model trained on captions that
    end with a full stop fills the rest with whatever follows, which is not caption.
    """
    text = text.strip()
    ends = [i for i in (text.find(e) for e in SENTENCE_ENDS) if i >= 0]
    return text[: min(ends) + 1] if ends else text
