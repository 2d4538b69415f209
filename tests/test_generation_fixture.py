"""Sampling filter and super-resolution windows against the original's outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from generation import magnify, magnify_windows, top_k_logits

from .conftest import fixture_path, load_fixture_json


def test_top_k_top_p_cases_reproduced_exactly():
    data = np.load(fixture_path("misc", "sampling.npz"))
    for case in load_fixture_json("misc", "misc_meta.json")["sampling_cases"]:
        logits = torch.from_numpy(data["logits_batch2" if case["batch"] == 2 else "logits"])
        out = top_k_logits(logits, case["top_k"], case["top_p"])
        expected = torch.from_numpy(data[case["key"]])
        assert torch.equal(torch.isinf(out), torch.isinf(expected)), case
        assert torch.equal(out[~torch.isinf(out)], expected[~torch.isinf(expected)]), case


def test_top_p_works_row_by_row():
    data = np.load(fixture_path("misc", "sampling.npz"))
    one = torch.from_numpy(data["logits"])
    both = top_k_logits(torch.cat([one, one.flip(-1)]), 5, 0.8)
    assert torch.equal(both[0], top_k_logits(one, 5, 0.8)[0])
    assert torch.equal(both[1], top_k_logits(one.flip(-1), 5, 0.8)[0])


COMMANDS = {"[EOI1]": 58196, "[ROI2]": 58200, "[POS0]": 58210, "[BASE]": 58208, "[BOI2]": 58194}


def test_magnify_windows_and_result_reproduced_exactly():
    data = np.load(fixture_path("misc", "magnify.npz"))
    seen = []

    def fake_fill(seq):
        """The fixture's stand-in: the k-th hole of window w gets (7k + 1000w + 3) % 8192."""
        w = len(seen)
        seen.append(list(seq))
        out, k = [], 0
        for t in seq:
            if t < 0:
                out.append((7 * k + 1000 * w + 3) % 8192)
                k += 1
            else:
                out.append(t)
        return torch.tensor([out])

    result = magnify(torch.from_numpy(data["low_res_code"]), data["text_token_list"].tolist(), fake_fill, COMMANDS)
    assert len(seen) == int(data["n_windows"]) == 9
    for w, seq in enumerate(seen):
        assert seq == data[f"window{w}_seq"].tolist(), f"window {w}"
    assert torch.equal(result, torch.from_numpy(data["magnified"]))


@pytest.mark.parametrize("grid", [16, 24, 32, 48, 64])
def test_windows_cover_every_cell_for_any_grid(grid):
    covered = torch.zeros(2 * grid, 2 * grid, dtype=torch.bool)
    for i, j, rows in magnify_windows(grid):
        covered[16 * i : 16 * i + rows, 16 * j : 16 * j + 32] = True
    assert bool(covered.all())
    assert magnify_windows(32) == [
        (0, 0, 18),
        (0, 1, 30),
        (0, 2, 30),
        (1, 1, 30),
        (1, 0, 30),
        (1, 2, 30),
        (2, 0, 32),
        (2, 1, 32),
        (2, 2, 32),
    ]
