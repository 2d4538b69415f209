"""Super-resolution by overlapping windows (the original's ``magnify``), any grid size.

The low-resolution s x s code grid becomes a 2s x 2s grid, generated window by
window: each window sees the text prefix and a ``window`` x ``window`` block of
low-resolution codes and fills a 2*window-wide block of high-resolution codes,
keeping the cells earlier windows produced.  For s = 32 (the released model)
this is exactly the original's nine windows, order and row counts; ``sr_window``
gives the window for other grids. A model trained with ``--sr-text-length`` expects
its caption padded to that length (``pad_query_text``, the same padding as the rows).
"""

from __future__ import annotations

from typing import Callable, List, Sequence, Tuple

import torch

Window = Tuple[int, int, int]  # (window row, window column, high-res rows to generate)
SIZE_TOKENS = {8: "[TINY]", 16: "[SMALL]", 32: "[BASE]", 64: "[BIG]"}


def sr_window(grid: int) -> Tuple[int, int]:
    """(window, stride) for magnifying a grid x grid code image: half the grid, at most
    16, every half window. 32 -> 16 every 8 is the original's 3 x 3 windows; smaller grids
    keep that 3 x 3 layout (16 -> 8 every 4, 8 -> 4 every 2), so a model trained on
    windows never sees sequences longer than one window."""
    window = max(1, min(16, grid // 2))
    return window, max(1, window // 2)


def sr_middle_tokens(window: int = 16) -> List[str]:
    """Tokens between a window's low-res codes and its high-res block.

    The size token names the high-res block (2*window per side): [BASE] for the
    original's 16 -> 32 windows, [SMALL] for 8 -> 16; training rows use the same.
    """
    return ["[EOI1]", "[ROI2]", "[POS0]", SIZE_TOKENS[2 * window], "[BOI2]"]


def padded_text(text_ids: Sequence[int], text_length: int, pad_id: int) -> List[int]:
    """``text_ids`` followed by [PAD] up to ``text_length`` ids (0: unchanged).

    Why: a super-resolution window has to find the low-res code each high-res code
    magnifies; with a fixed-length caption that code sits at a fixed position.
    """
    ids = list(text_ids)
    if text_length <= 0:
        return ids
    if len(ids) > text_length:
        raise ValueError(
            f"the caption is {len(ids)} tokens; this super-resolution model takes at most "
            f"{text_length} (--sr-text-length): shorten the caption"
        )
    return ids + [pad_id] * (text_length - len(ids))


def pad_query_text(ids: Sequence[int], tokens: dict, text_length: int) -> List[int]:
    """A ``[ROI1] text [size] [BOI1] ...`` query with its text padded as the model's
    training rows were (``padded_text``; ``tokens`` maps command names to ids)."""
    ids = list(ids)
    if text_length <= 0:
        return ids
    roi1, boi = ids.index(tokens["[ROI1]"]), ids.index(tokens["[BOI1]"])
    return ids[: roi1 + 1] + padded_text(ids[roi1 + 1 : boi - 1], text_length, tokens["[PAD]"]) + ids[boi - 1 :]


def magnify_windows(grid: int, window: int = 16, stride: int = 8) -> List[Window]:
    """Windows in generation order: first row left to right, each middle row from its
    middle column outwards, the last row left to right (the original's order for 3x3)."""
    if grid < window or (grid - window) % stride != 0:
        raise ValueError(f"cannot tile a {grid}x{grid} code grid with {window}x{window} windows every {stride} codes")
    n = (grid - window) // stride + 1
    hi_window, hi_stride = 2 * window, 2 * stride
    order: List[Tuple[int, int]] = []
    for i in range(n):
        cols = list(range(n))
        if 0 < i < n - 1:
            middle = n // 2
            cols = [middle] + [j for j in cols if j != middle]
        order.extend((i, j) for j in cols)
    windows = []
    for k, (i, j) in enumerate(order):
        if i == n - 1:
            rows = hi_window
        elif k == 0:
            rows = hi_stride + 2
        else:
            rows = hi_window - 2
        windows.append((i, j, rows))
    return windows


def magnify(
    low_res_code: torch.Tensor,
    text_prefix: Sequence[int],
    fill: Callable[[List[int]], torch.Tensor],
    tokens: dict,
    window: int = 16,
    stride: int = 8,
) -> torch.Tensor:
    """Magnify ``low_res_code`` ([s*s] or [s, s]) to [1, (2s)^2] codes.

    ``text_prefix`` is ``[ROI1] text [BASE] [BOI1]``; ``fill(seq)`` fills the -1s of
    one window's sequence and returns [1, len(seq)] ids; ``tokens`` maps command
    names to ids.
    """
    code = torch.as_tensor(low_res_code).reshape(-1)
    s = int(round(code.numel() ** 0.5))
    if s * s != code.numel():
        raise ValueError(f"low-resolution code of {code.numel()} tokens is not a square grid")
    grid = code.view(s, s)
    hi = torch.full((2 * s, 2 * s), -1, dtype=torch.long)
    middle = [tokens[name] for name in sr_middle_tokens(window)]
    for i, j, rows in magnify_windows(s, window, stride):
        low = grid[i * stride : i * stride + window, j * stride : j * stride + window].reshape(-1)
        r0, c0 = 2 * stride * i, 2 * stride * j
        target = hi[r0 : r0 + rows, c0 : c0 + 2 * window]
        seq = list(text_prefix) + low.tolist() + middle + target.reshape(-1).tolist()
        filled = torch.as_tensor(fill(seq))[0, -target.numel() :].view(rows, 2 * window)
        hi[r0 : r0 + rows, c0 : c0 + 2 * window] = filled
    return hi.view(1, -1)
