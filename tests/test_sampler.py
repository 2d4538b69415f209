"""The KV-cache sampler equals the original algorithm and a full-recompute reference."""
from __future__ import annotations

import pytest
import torch

from arch import GPT2Model
from generation import SamplingConfig, TokenLayout, filling_sequence, generate_in_chunks, inverse_prompt_score
from generation.sampling import count_to_generate

NAMES = ["[PAD]", "[BOI1]", "[BOI2]", "[BOI3]", "[EOI1]", "[EOI2]", "[EOI3]", "[ROI1]", "[ROI2]", "[ROI3]",
         "[SEP]", "[MASK]", "[CLS]", "[ENC]", "[TINY]", "[SMALL]", "[BASE]", "[BIG]"] + [f"[POS{i}]" for i in range(9)]
I, T = 32, 40
LAYOUT = TokenLayout(I, T, {n: I + T + k for k, n in enumerate(NAMES)})
C = LAYOUT.command_tokens


def model_fixture(max_memory_length=256):
    torch.manual_seed(0)
    model = GPT2Model(2, 128, 32, 4, 0.0, 0.0, 0.0, 128, max_memory_length, False).double().eval()
    with torch.no_grad():
        model.word_embeddings.weight.mul_(20)  # sharper distributions: sampling is not uniform noise
    return model


def text2image_query(n_codes=16):
    return [C["[ROI1]"], I + 3, I + 7, I + 1, C["[TINY]"], C["[BOI1]"]] + [-1] * n_codes


def run(model, seq, n, sampler, seed=5, **cfg):
    gen = torch.Generator().manual_seed(seed)
    return filling_sequence(model, seq, n, LAYOUT, SamplingConfig(**cfg), sampler=sampler, generator=gen,
                            return_scores=True)


QUERIES = {
    "text2image": text2image_query(),
    "image2text": [C["[TINY]"], C["[BOI1]"]] + list(range(16)) + [C["[EOI1]"], C["[ROI1]"]] + [-1] * 6,
    "low-level-sr": [C["[ROI1]"], I + 2, C["[TINY]"], C["[BOI1]"]] + list(range(16)) + [C["[EOI1]"], C["[ROI2]"],
                     C["[POS0]"], C["[TINY]"], C["[BOI2]"]] + [-1] * 16,
    "inpainting": [C["[ROI1]"], I + 2, C["[TINY]"], C["[BOI1]"]] + [3, 4, -1, -1, 7, -1, 9, 9, -1, -1, -1, 1, 2, 3, -1, 5],
    "free-text": [C["[ROI1]"], I + 5] + [-1] * 10,
}


@pytest.mark.parametrize("task", sorted(QUERIES))
@pytest.mark.parametrize("cfg", [dict(), dict(top_k=5), dict(top_p=0.7, temperature=0.8)])
def test_three_algorithms_identical(task, cfg):
    model = model_fixture()
    seq = QUERIES[task]
    ref, ref_scores = run(model, seq, 3, "full", **cfg)
    for sampler in ("kv-cache", "mems"):
        out, scores = run(model, seq, 3, sampler, **cfg)
        assert torch.equal(out, ref), sampler
        # the per-chunk PB-relax LayerNorm scale moves log-probabilities by ~1e-6 (eps)
        torch.testing.assert_close(scores, ref_scores, atol=1e-4, rtol=1e-5)
    known = torch.tensor(seq) >= 0
    assert torch.equal(ref[:, known], torch.tensor(seq)[known].expand(3, -1))


def test_modes_restrict_sampled_ids():
    model = model_fixture()
    out = run(model, QUERIES["image2text"], 4, "kv-cache")[0]
    assert bool(((out[:, -6:] >= I) & (out[:, -6:] < I + T)).all()), "text only after [EOI1]"
    out = run(model, QUERIES["text2image"], 4, "kv-cache")[0]
    assert bool((out[:, 6:] < I).all()), "image codes only inside an image"
    out = run(model, QUERIES["free-text"], 4, "kv-cache")[0]
    assert bool(((out[:, 2:] >= I) & (out[:, 2:] < LAYOUT.num_tokens)).all()), "no padding rows, no codes"


def test_samples_differ_and_batch_never_collapses():
    model = model_fixture()
    out = run(model, QUERIES["inpainting"], 4, "kv-cache")[0]
    assert out.shape == (4, len(QUERIES["inpainting"]))
    assert len({tuple(r) for r in out.tolist()}) > 1


@pytest.mark.parametrize("n,mbz", [(5, 2), (4, 4), (3, 8), (1, 1)])
def test_any_batch_size_with_any_chunk_size(n, mbz):
    model = model_fixture()
    out = generate_in_chunks(model, text2image_query(), n, mbz, LAYOUT, generator=torch.Generator().manual_seed(1))
    assert out.shape == (n, len(text2image_query()))


def test_roi2_positions_match_the_original_rule():
    from generation.sampling import _positions
    pos = _positions(0, 8, torch.tensor([3, 100000]))
    assert pos.tolist() == [[0, 1, 2, 3, 1, 2, 3, 4], list(range(8))]


def test_count_to_generate():
    assert count_to_generate(text2image_query(16)) == 16


def test_inverse_prompt_score_finds_roi1_and_prefers_likely_text():
    model = model_fixture()
    image = list(range(16))
    rows = []
    for text in ([I + 1, I + 2, I + 3], [I + 9, I + 4, I + 8]):
        rows.append([C["[TINY]"], C["[BOI1]"]] + image + [C["[EOI1]"], C["[ROI1]"]] + text)
    seq = torch.tensor(rows)
    scores = inverse_prompt_score(model, seq, C["[ROI1]"], I)
    # reference: explicit sum of log p(text token | prefix) with image ids excluded
    for row in range(2):
        expected = 0.0
        for p in range(19, seq.size(1) - 1):
            logits, *_ = model(seq[row:row + 1, :p + 1], torch.arange(p + 1)[None], torch.ones(1, 1, p + 1, p + 1).tril_())
            lg = logits[0, -1].float()
            lg[:I] = -float("inf")
            expected += torch.log_softmax(lg, -1)[seq[row, p + 1]].item()
        assert abs(scores[row].item() - expected) < 1e-4
    with pytest.raises(ValueError, match="ROI1"):
        inverse_prompt_score(model, seq[:, :5], C["[ROI1]"], I)


def test_super_resolution_windows_identical_for_every_algorithm():
    from generation import magnify

    model = model_fixture(max_memory_length=512)
    low = torch.arange(16) % I  # a 4x4 low-resolution grid -> one 4x4 window, 8x8 output
    prefix = [C["[ROI1]"], I + 2, C["[BASE]"], C["[BOI1]"]]
    results = []
    for sampler in ("full", "kv-cache", "mems"):
        gen = torch.Generator().manual_seed(9)
        fill = lambda seq: filling_sequence(model, seq, 1, LAYOUT, SamplingConfig(top_k=8), sampler=sampler,  # noqa: E731
                                            generator=gen)
        results.append(magnify(low, prefix, fill, C, window=4, stride=2))
    assert results[0].shape == (1, 64) and bool((results[0] < I).all())
    assert torch.equal(results[0], results[1]) and torch.equal(results[0], results[2])
