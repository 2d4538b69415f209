"""The KV-cache sampler equals the original algorithm and a full-recompute reference."""

from __future__ import annotations

import pytest
import torch

from arch import GPT2Model
from generation import SamplingConfig, TokenLayout, filling_sequence, generate_in_chunks, inverse_prompt_score
from generation.sampling import count_to_generate

NAMES = [
    "[PAD]",
    "[BOI1]",
    "[BOI2]",
    "[BOI3]",
    "[EOI1]",
    "[EOI2]",
    "[EOI3]",
    "[ROI1]",
    "[ROI2]",
    "[ROI3]",
    "[SEP]",
    "[MASK]",
    "[CLS]",
    "[ENC]",
    "[TINY]",
    "[SMALL]",
    "[BASE]",
    "[BIG]",
] + [f"[POS{i}]" for i in range(9)]
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
    return filling_sequence(
        model, seq, n, LAYOUT, SamplingConfig(**cfg), sampler=sampler, generator=gen, return_scores=True
    )


QUERIES = {
    "text2image": text2image_query(),
    "image2text": [C["[TINY]"], C["[BOI1]"]] + list(range(16)) + [C["[EOI1]"], C["[ROI1]"]] + [-1] * 6,
    "low-level-sr": [C["[ROI1]"], I + 2, C["[TINY]"], C["[BOI1]"]]
    + list(range(16))
    + [C["[EOI1]"], C["[ROI2]"], C["[POS0]"], C["[TINY]"], C["[BOI2]"]]
    + [-1] * 16,
    "inpainting": [C["[ROI1]"], I + 2, C["[TINY]"], C["[BOI1]"]]
    + [3, 4, -1, -1, 7, -1, 9, 9, -1, -1, -1, 1, 2, 3, -1, 5],
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
            logits, *_ = model(
                seq[row : row + 1, : p + 1], torch.arange(p + 1)[None], torch.ones(1, 1, p + 1, p + 1).tril_()
            )
            lg = logits[0, -1].float()
            lg[:I] = -float("inf")
            expected += torch.log_softmax(lg, -1)[seq[row, p + 1]].item()
        assert abs(scores[row].item() - expected) < 1e-4
    with pytest.raises(ValueError, match="ROI1"):
        inverse_prompt_score(model, seq[:, :5], C["[ROI1]"], I)


def test_image_given_text_score_sums_code_log_probs_for_rows_of_any_length():
    """log p(codes | text) of rows ``[ROI1] text [TINY] [BOI1] codes``, texts of different
    lengths in one call, equals an explicit per-row sum (image ids only in the softmax)."""
    from generation import image_given_text_score

    model = model_fixture()
    image = [5, 9, 2, 2, 7, 0, 31, 4]
    texts = ([I + 1, I + 2, I + 3], [I + 9], [I + 4, I + 8, I + 8])
    rows = [[C["[ROI1]"], *text, C["[TINY]"], C["[BOI1]"], *image] for text in texts]
    scores = image_given_text_score(model, rows, C["[BOI1]"], I)
    for row, score in zip(rows, scores.tolist()):
        n = len(row)
        logits, *_ = model(torch.tensor([row]), torch.arange(n)[None], torch.ones(1, 1, n, n).tril_())
        lp = torch.log_softmax(logits[0, :, :I].double(), -1)
        boi = row.index(C["[BOI1]"])
        expected = sum(lp[p, row[p + 1]].item() for p in range(boi, n - 1))
        assert score == pytest.approx(expected, abs=1e-4)
    assert scores[0] != scores[1]  # the text matters
    with pytest.raises(ValueError, match="BOI1"):
        image_given_text_score(model, [[C["[ROI1]"], I + 1, C["[TINY]"]]], C["[BOI1]"], I)


def test_caption_given_image_score_equals_inverse_prompt_score_row_by_row():
    """Rows of different lengths in one call score as inverse_prompt_score does each on its own."""
    from generation import caption_given_image_score, inverse_prompt_score

    model = model_fixture()
    image = [5, 9, 2, 2, 7, 0, 31, 4]
    texts = ([I + 1, I + 2, I + 3], [I + 9], [I + 4, I + 8, I + 8], [I + 5])
    rows = [[C["[TINY]"], C["[BOI1]"], *image, C["[EOI1]"], C["[ROI1]"], *text] for text in texts]
    scores = caption_given_image_score(model, rows, C["[ROI1]"], I)
    expected = [float(inverse_prompt_score(model, torch.tensor([r]), C["[ROI1]"], I)[0]) for r in rows]
    assert scores.tolist() == pytest.approx(expected, abs=1e-4)
    assert len(set(round(x, 3) for x in scores.tolist())) == 4
    with pytest.raises(ValueError, match="ROI1"):
        caption_given_image_score(model, [[C["[TINY]"], C["[BOI1]"], *image]], C["[ROI1]"], I)


def test_super_resolution_windows_identical_for_every_algorithm():
    from generation import magnify

    model = model_fixture(max_memory_length=512)
    low = torch.arange(16) % I  # a 4x4 low-resolution grid -> one 4x4 window, 8x8 output
    prefix = [C["[ROI1]"], I + 2, C["[BASE]"], C["[BOI1]"]]
    results = []
    for sampler in ("full", "kv-cache", "mems"):
        gen = torch.Generator().manual_seed(9)

        def fill(seq, sampler=sampler, gen=gen):
            return filling_sequence(model, seq, 1, LAYOUT, SamplingConfig(top_k=8), sampler=sampler, generator=gen)

        results.append(magnify(low, prefix, fill, C, window=4, stride=2))
    assert results[0].shape == (1, 64) and bool((results[0] < I).all())
    assert torch.equal(results[0], results[1]) and torch.equal(results[0], results[2])


def _guided_log_probs(model, seq, sample, start, scale, top_k=0):
    """Summed log-probabilities of a sample's generated tokens under
    log_softmax(cond + scale * (cond - prior)) over the allowed slice (only the ``top_k``
    ids cond ranks highest, when given; the sample must be among them), by full
    recomputation; the prior is the sample from ``start`` on, on its own."""
    context = seq.index(-1)
    lo, hi = (0, I) if C["[EOI1]"] not in seq[:context] else (I, I + T)

    @torch.no_grad()
    def last_logits(ids):
        mask = torch.ones(1, 1, len(ids), len(ids), dtype=torch.double).tril_()
        logits, *_ = model(torch.tensor([ids]), torch.arange(len(ids))[None], mask)
        return logits[0, -1, lo:hi]

    total = 0.0
    for p in range(context, len(seq)):
        cond, prior = last_logits(sample[:p]), last_logits(sample[start:p])
        guided = cond + scale * (cond - prior)
        if top_k:
            keep = cond.topk(top_k).indices
            assert sample[p] - lo in keep.tolist()
            guided = torch.full_like(guided, -float("inf")).index_copy(0, keep, guided[keep])
        total += float(torch.log_softmax(guided, -1)[sample[p] - lo])
    return total


@pytest.mark.parametrize("task,start", [("text2image", 4), ("image2text", 19)])
def test_guidance_samples_cond_plus_scale_times_cond_minus_prior(task, start):
    """Guided samples are drawn from softmax(cond + s * (cond - prior)) (checked by a
    full-recompute reference), identical for every algorithm; a scale of 0 is
    unguided sampling."""
    from generation import Guidance

    model, seq = model_fixture(), QUERIES[task]
    assert seq[start] in (C["[TINY]"], C["[ROI1]"])  # the prior starts as a training row does
    outs = {}
    for sampler in ("full", "kv-cache", "mems"):
        gen = torch.Generator().manual_seed(3)
        outs[sampler] = filling_sequence(
            model,
            seq,
            3,
            LAYOUT,
            SamplingConfig(),
            sampler=sampler,
            generator=gen,
            return_scores=True,
            guidance=Guidance(1.5, start=start),
        )
    tokens, scores = outs["full"]
    for sampler in ("kv-cache", "mems"):
        assert torch.equal(outs[sampler][0], tokens), sampler
        torch.testing.assert_close(outs[sampler][1], scores, atol=1e-4, rtol=1e-5)
    for row, score in zip(tokens.tolist(), scores.tolist()):
        assert score == pytest.approx(_guided_log_probs(model, seq, row, start, 1.5), abs=1e-4)
    unguided = run(model, seq, 3, "kv-cache", seed=3)[0]
    off = filling_sequence(
        model,
        seq,
        3,
        LAYOUT,
        SamplingConfig(),
        generator=torch.Generator().manual_seed(3),
        guidance=Guidance(0.0, start=start),
    )
    assert torch.equal(off, unguided)
    assert not torch.equal(tokens, unguided)  # the guidance changed what was drawn


@pytest.mark.parametrize("task,start", [("text2image", 4), ("image2text", 19)])
def test_guidance_top_k_draws_among_the_conditioned_models_most_likely(task, start):
    """Guidance(top_k=k) draws each token from the guided distribution restricted to the k
    ids the conditioned model ranks highest (full-recompute reference), identically for every
    algorithm; k = 1 is the conditioned model's greedy choice whatever the scale."""
    from generation import Guidance

    model, seq = model_fixture(), QUERIES[task]
    outs = {}
    for sampler in ("full", "kv-cache", "mems"):
        gen = torch.Generator().manual_seed(4)
        outs[sampler] = filling_sequence(
            model,
            seq,
            4,
            LAYOUT,
            SamplingConfig(),
            sampler=sampler,
            generator=gen,
            return_scores=True,
            guidance=Guidance(1.5, start=start, top_k=2),
        )
    tokens, scores = outs["full"]
    for sampler in ("kv-cache", "mems"):
        assert torch.equal(outs[sampler][0], tokens), sampler
        torch.testing.assert_close(outs[sampler][1], scores, atol=1e-4, rtol=1e-5)
    for row, score in zip(tokens.tolist(), scores.tolist()):
        assert score == pytest.approx(_guided_log_probs(model, seq, row, start, 1.5, top_k=2), abs=1e-4)
    unrestricted = filling_sequence(
        model,
        seq,
        4,
        LAYOUT,
        SamplingConfig(),
        generator=torch.Generator().manual_seed(4),
        guidance=Guidance(1.5, start=start),
    )
    assert not torch.equal(tokens, unrestricted)  # the restriction changed what was drawn
    greedy = run(model, seq, 1, "kv-cache", top_k=1)[0]
    one = filling_sequence(
        model,
        seq,
        1,
        LAYOUT,
        SamplingConfig(),
        generator=torch.Generator().manual_seed(4),
        guidance=Guidance(3.0, start=start, top_k=1),
    )
    assert torch.equal(one, greedy)


def test_guidance_prefix_and_bad_start():
    from generation import Guidance

    model, seq = model_fixture(), QUERIES["image2text"]
    # a prefix stands in for a cut-off part: [ROI1] + caption == seq[19:]
    a = filling_sequence(model, seq, 1, LAYOUT, SamplingConfig(top_k=1), guidance=Guidance(1.0, start=19))
    b = filling_sequence(
        model, seq, 1, LAYOUT, SamplingConfig(top_k=1), guidance=Guidance(1.0, start=20, prefix=[C["[ROI1]"]])
    )
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="guidance"):
        filling_sequence(model, seq, 1, LAYOUT, guidance=Guidance(1.0, start=len(seq)))


@pytest.mark.parametrize("sampler", ["full", "kv-cache", "mems"])
def test_roi2_restart_off_numbers_positions_straight_through(sampler):
    """roi2_restart=False (a model trained without the [ROI2] restart): every forward call
    gets positions 0, 1, 2, ... of the whole row; the default restarts them after [ROI2]."""
    model = model_fixture()
    seq = QUERIES["low-level-sr"]
    roi2 = seq.index(C["[ROI2]"])
    for restart in (True, False):
        seen = []
        real = model.forward

        def spy(ids, pos, *args, **kwargs):
            seen.append(pos[0].tolist())
            return real(ids, pos, *args, **kwargs)

        model.forward = spy
        gen = torch.Generator().manual_seed(5)
        filling_sequence(
            model, seq, 2, LAYOUT, SamplingConfig(top_k=5), sampler=sampler, generator=gen, roi2_restart=restart
        )
        model.forward = real
        last = seen[-1][-1]  # the position of the last token fed
        fed_through = len(seq) - 2
        assert last == (fed_through - roi2 if restart else fed_through)
        if not restart:
            assert all(p == list(range(p[0], p[0] + len(p))) for p in seen)
