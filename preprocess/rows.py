"""Row layouts written to the LMDB.

text2image rows are TextCodeDataset rows ``(caption, codes)`` or TokenizedDataset rows
(TextCodeTemplate ids: ``[ROI1] text [size] [BOI1] codes [EOI1]``).

Super-resolution rows are built to be exactly what generation.magnify feeds the model
for one window (so a model trained on them can run magnify):

    [ROI1] text [PAD]* [size(g)] [BOI1] <w x w low-res codes> [EOI1] [ROI2] [POS0] [size(2w)] [BOI2]
    <2w x 2w high-res codes> [EOI2]

g is the low-res grid (--img-size / VQ-VAE factor), w = min(16, g/2) the window and
stride w/2 (generation.magnify.sr_window), as generate_samples.py calls magnify. The low-res block is the window at
(i*stride, j*stride) of the image encoded at --img-size; the high-res block is the
matching 2w x 2w block at (2i*stride, 2j*stride) of the same image encoded at twice
--img-size. The middle tokens come from generation.magnify.sr_middle_tokens, so the rows
always match what magnify feeds the model. With ``text_length`` > 0 (the model flag
--sr-text-length) the caption is padded with [PAD] to that many tokens, so the low-res codes
sit at the same positions whatever the caption's length (new; the original does not pad).
Low-level super-resolution rows (``low_level_sr_row``) have the same layout with the
whole image as the window: the image encoded at half --img-size (g/2 x g/2 codes) and at
--img-size (g x g), which is the query generate_samples.py builds for low-level
super-resolution (new: magnify's windows alone never show the model a whole image, and
a model trained on them alone draws noise for that query).
(The original's rows put the whole 32x32 overview and a [POSk] crop index in front of
the crop, which magnify never feeds a model; see the README section.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence, Tuple

import numpy as np

from data_utils.templates import TextCodeTemplate
from data_utils.unified_tokenizer import SIZE_TOKENS, UnifiedTokenizer
from generation.magnify import padded_text, sr_middle_tokens, sr_window


def code_dtype(num_image_tokens: int) -> np.dtype:
    """The smallest signed dtype holding every code (halves TextCode rows for 8192 codes)."""
    return np.dtype(np.int16) if num_image_tokens <= np.iinfo(np.int16).max + 1 else np.dtype(np.int32)


def text_code_row(caption: str, codes: np.ndarray, dtype: np.dtype) -> Tuple[str, np.ndarray]:
    """A TextCodeDataset row: the caption is tokenized at training time."""
    return caption, np.asarray(codes).reshape(-1).astype(dtype)


def tokenized_row(tok: UnifiedTokenizer, text_ids: Sequence[int], codes: np.ndarray) -> np.ndarray:
    """A TokenizedDataset row: TextCodeTemplate of unified text ids and the codes."""
    ids = TextCodeTemplate(
        np.asarray(text_ids, dtype=np.int64), np.asarray(codes, dtype=np.int64).reshape(-1), tokenizer=tok
    )
    return np.asarray(ids, dtype=np.int32)


@dataclass(frozen=True)
class SRLayout:
    grid: int  # low-res code grid side g
    window: int  # low-res window side w
    stride: int  # low-res window step

    @property
    def count(self) -> int:
        """Windows per side."""
        return (self.grid - self.window) // self.stride + 1


def sr_layout(grid: int) -> SRLayout:
    """Windows as generate_samples.py tiles a g x g grid for magnify."""
    window, stride = sr_window(grid)
    if grid not in SIZE_TOKENS:
        raise ValueError(f"the low-res code grid must be 8, 16, 32 or 64 per side, got {grid}")
    if (grid - window) % stride:
        raise ValueError(f"cannot tile a {grid}x{grid} grid with {window}x{window} windows")
    return SRLayout(grid, window, stride)


def sr_positions(layout: SRLayout) -> List[Tuple[int, int]]:
    """Window indices (i, j), row-major; window (i, j) starts at low-res (i*stride, j*stride)."""
    return [(i, j) for i in range(layout.count) for j in range(layout.count)]


def sr_row(
    tok: UnifiedTokenizer,
    text_ids: Sequence[int],
    low: np.ndarray,
    high: np.ndarray,
    position: Tuple[int, int],
    layout: SRLayout,
    text_length: int = 0,
) -> np.ndarray:
    """One super-resolution training row (layout in the module docstring).

    ``low`` holds g*g codes, ``high`` (2g)*(2g) codes, both row-major; ``text_length``
    pads the caption (``padded_text``).
    """
    g, w, s = layout.grid, layout.window, layout.stride
    i, j = position
    low_grid = np.asarray(low).reshape(g, g)
    high_grid = np.asarray(high).reshape(2 * g, 2 * g)
    low_block = low_grid[i * s : i * s + w, j * s : j * s + w]
    high_block = high_grid[2 * i * s : 2 * i * s + 2 * w, 2 * j * s : 2 * j * s + 2 * w]
    return _sr_sequence(tok, text_ids, g, low_block, high_block, text_length)


def _sr_sequence(
    tok: UnifiedTokenizer,
    text_ids: Sequence[int],
    grid: int,
    low_block: np.ndarray,
    high_block: np.ndarray,
    text_length: int,
) -> np.ndarray:
    """``[ROI1] text [size(grid)] [BOI1] low [EOI1] [ROI2] [POS0] [size(2w)] [BOI2] high [EOI2]``
    for a w x w ``low_block`` and its 2w x 2w ``high_block``."""
    window = int(np.asarray(low_block).shape[0])
    head = [tok["[ROI1]"], *padded_text(text_ids, text_length, tok["[PAD]"]), tok[SIZE_TOKENS[grid]], tok["[BOI1]"]]
    middle = [tok[name] for name in sr_middle_tokens(window)]
    return np.concatenate(
        [
            np.asarray(head, dtype=np.int64),
            np.asarray(low_block, dtype=np.int64).reshape(-1),
            np.asarray(middle, dtype=np.int64),
            np.asarray(high_block, dtype=np.int64).reshape(-1),
            np.asarray([tok["[EOI2]"]], dtype=np.int64),
        ]
    ).astype(np.int32)


def low_level_sr_row(
    tok: UnifiedTokenizer, text_ids: Sequence[int], low: np.ndarray, high: np.ndarray, text_length: int = 0
) -> np.ndarray:
    """One low-level super-resolution training row: the whole ``low`` grid (h x h codes,
    the image at half size) then the whole ``high`` grid (2h x 2h, the image at full size),
    laid out as generate_samples.py's low-level super-resolution query (whose size tokens
    both name the full-size grid)."""
    low, high = np.asarray(low).reshape(-1), np.asarray(high).reshape(-1)
    h = int(round(len(low) ** 0.5))
    if h * h != len(low) or len(high) != 4 * h * h:
        raise ValueError(f"low-level rows need h x h and 2h x 2h codes, got {len(low)} and {len(high)}")
    return _sr_sequence(tok, text_ids, 2 * h, low.reshape(h, h), high.reshape(2 * h, 2 * h), text_length)
