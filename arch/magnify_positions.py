"""Position rows for a super-resolution model that make its window-to-block alignment easy to learn.

A magnify row is ``[ROI1] text(T) [size] [BOI1] low(w x w) [EOI1] [ROI2] [POS0] [size]
[BOI2] high(2w x 2w) [EOI2]``. Each high-res code has to find the low-res code it magnifies
(the one at half its row and column), and with randomly initialised position embeddings
the model can only find it by learning every pair of positions: the shipped demo model
still drew blobs after 13,000 iterations. Here the rows of both grids start as the same
2-D sinusoids of their centre in low-res cells, so a high-res position's row is closest
to its parent's from the first step; the rest of the table keeps a normal random init.
It needs positions that count on through the row (no restart at [ROI2]: the restart would
give the low-res codes and some high-res codes the same rows) and a caption padded to a
fixed length (``--sr-text-length``), so the low-res codes sit at fixed positions.
"""

from __future__ import annotations

import math
from typing import Tuple

import torch

MIDDLE_TOKENS = 5  # [EOI1] [ROI2] [POS0] [size] [BOI2], generation.magnify.sr_middle_tokens


def magnify_code_positions(text_length: int, window: int) -> Tuple[int, int, int]:
    """(first low-res code position, first high-res code position, row length) of a
    magnify row whose caption is padded to ``text_length`` tokens."""
    if text_length <= 0:
        raise ValueError(
            "aligned super-resolution positions need a fixed caption length: pass --sr-text-length (e.g. 20)"
        )
    low0 = 1 + text_length + 2  # [ROI1] text [size] [BOI1]
    high0 = low0 + window * window + MIDDLE_TOKENS
    return low0, high0, high0 + 4 * window * window + 1  # ... high block [EOI2]


def sinusoids(y: float, x: float, frequencies: int = 8, longest: float = 16.0, shortest: float = 1.5) -> torch.Tensor:
    """[4 * frequencies] features sin/cos of y and x at wavelengths from ``longest`` down to
    ``shortest`` (geometric steps): the dot product of two points' features falls with their
    distance, most steeply over about ``shortest`` cells."""
    out = []
    for f in range(frequencies):
        wavelength = longest * (shortest / longest) ** (f / max(frequencies - 1, 1))
        w = 2 * math.pi / wavelength
        out += [math.sin(w * y), math.cos(w * y), math.sin(w * x), math.cos(w * x)]
    return torch.tensor(out)


@torch.no_grad()
def init_magnify_positions(
    table: torch.Tensor,
    text_length: int,
    window: int,
    amplitude: float = 0.2,
    std: float = 0.02,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Overwrite ``table`` ([positions, hidden], in place; returned): every row N(0, std), then
    the low-res code rows get ``amplitude`` * sinusoids of their cell centre (i + 0.5, j + 0.5)
    and the high-res rows those of theirs in low-res cells ((r + 0.5) / 2, (c + 0.5) / 2) in
    the first 32 dimensions, plus one random vector per grid so the two stay apart."""
    low0, high0, length = magnify_code_positions(text_length, window)
    if table.size(0) < length:
        raise ValueError(
            f"a magnify row with a {text_length}-token caption and {window}x{window} windows is "
            f"{length} tokens; the position table has {table.size(0)} rows "
            f"(--max-position-embeddings {length} or more)"
        )
    hidden = table.size(1)
    width = len(sinusoids(0.0, 0.0))
    if hidden < width:
        raise ValueError(f"hidden size {hidden} is below the {width} sinusoid features")
    fresh = torch.randn(table.shape, generator=generator) * std
    low_grid, high_grid = torch.randn(hidden, generator=generator) * std, torch.randn(hidden, generator=generator) * std
    for k in range(window * window):
        i, j = divmod(k, window)
        fresh[low0 + k, :width] = amplitude * sinusoids(i + 0.5, j + 0.5)
        fresh[low0 + k] += low_grid
    for m in range(4 * window * window):
        r, c = divmod(m, 2 * window)
        fresh[high0 + m, :width] = amplitude * sinusoids((r + 0.5) / 2, (c + 0.5) / 2)
        fresh[high0 + m] += high_grid
    table.copy_(fresh.to(table.dtype))
    return table
