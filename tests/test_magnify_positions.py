"""arch.magnify_positions: the aligned position rows of a super-resolution model."""

from __future__ import annotations

import pytest
import torch

from arch.magnify_positions import init_magnify_positions, magnify_code_positions


@pytest.mark.parametrize("text_length,window", [(20, 8), (6, 4), (3, 2)])
def test_each_high_res_row_is_nearest_its_low_res_parent(text_length, window):
    """Among the low-res code rows, the one a high-res row is most similar to (dot product)
    is the code at half its row and column: the alignment magnify needs."""
    low0, high0, length = magnify_code_positions(text_length, window)
    assert (low0, high0, length) == (
        3 + text_length,
        3 + text_length + window**2 + 5,
        3 + text_length + 5 * window**2 + 6,
    )
    table = init_magnify_positions(
        torch.empty(length + 3, 64), text_length, window, generator=torch.Generator().manual_seed(1)
    )
    low = table[low0 : low0 + window**2]
    for m in range(4 * window**2):
        r, c = divmod(m, 2 * window)
        assert int((low @ table[high0 + m]).argmax()) == (r // 2) * window + c // 2
    # the rest keeps a small random init, and the call is deterministic in its generator
    assert table[:low0].std() < 0.05 and table[length:].abs().max() < 0.2
    again = init_magnify_positions(
        torch.empty(length + 3, 64), text_length, window, generator=torch.Generator().manual_seed(1)
    )
    assert torch.equal(table, again)


def test_refuses_what_it_cannot_align():
    with pytest.raises(ValueError, match="--sr-text-length"):
        magnify_code_positions(0, 8)
    with pytest.raises(ValueError, match="349 tokens"):
        init_magnify_positions(torch.empty(264, 192), 20, 8)
    with pytest.raises(ValueError, match="hidden size 16"):
        init_magnify_positions(torch.empty(400, 16), 20, 8)


def test_check_positions_counts_the_whole_row_without_the_restart():
    """A 349-token magnify window fits 264 positions when they restart at [ROI2] (the
    original's rule) and needs 349 when they count on (roi2_id None)."""
    from generation.queries import QueryError, check_positions

    roi2 = 99
    row = [1] * 88 + [roi2] + [2] * 260
    check_positions(row, roi2, 264)
    with pytest.raises(QueryError, match="needs position 348"):
        check_positions(row, None, 264)
    check_positions(row, None, 352)
