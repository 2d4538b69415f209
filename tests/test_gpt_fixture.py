"""GPT2Model against the original's outputs (../shared/fixtures/original/gpt), minGPT style:
same weights, same inputs, logits compared to the reference implementation's."""

from __future__ import annotations

import pytest
import torch

from arch import load_checkpoint_state, mpu

from .gpt_fixture import build_fixture_model, fixture_config, fixture_expected, fixture_inputs

TOL = dict(atol=1e-4, rtol=1e-4)


def incremental_logits(model, tokens, position_ids, step_bounds, use_cache: bool):
    """Feed the tokens chunk by chunk as filling_sequence does (mems or KV cache)."""
    mems, cache, chunks = [], (model.new_kv_cache() if use_cache else None), []
    causal = torch.ones(1, 1, int(step_bounds[0][1]), int(step_bounds[0][1]), device=tokens.device).tril_()
    for i, (start, end) in enumerate(step_bounds.tolist()):
        mask = causal if i == 0 else 0
        ids, pos = tokens[:, start:end], position_ids[:, start:end]
        if use_cache:
            logits, *_ = model(ids, pos, mask, None, None, 0, kv_cache=cache)
        else:
            logits, *mems = model(ids, pos, mask, None, None, 0, *mems)
        chunks.append(logits)
    return torch.cat(chunks, dim=1), (cache if use_cache else mems)


@pytest.fixture(scope="module")
def data():
    return build_fixture_model(), fixture_inputs(), fixture_expected()


def test_state_dict_keys_and_order_match_original(data):
    model, _, _ = data
    state = load_checkpoint_state(__import__("tests.conftest", fromlist=["x"]).fixture_path("gpt", "checkpoint"))
    assert list(model.state_dict().keys()) == list(state.keys())


@torch.no_grad()
def test_causal_logits_and_mems(data):
    model, inp, exp = data
    logits, *mems = model(inp["tokens"], inp["position_ids"], inp["causal_attention_mask"])
    torch.testing.assert_close(logits, exp["causal_logits"], **TOL)
    assert len(mems) == fixture_config()["num_layers"] + 1
    torch.testing.assert_close(torch.stack(mems), exp["causal_mems"], **TOL)


@torch.no_grad()
def test_sep_int_mask(data):
    model, inp, exp = data
    logits, *_ = model(inp["tokens"], inp["position_ids"], int(inp["sep"]))
    torch.testing.assert_close(logits, exp["sep_logits"], **TOL)


@pytest.mark.parametrize("use_cache", [False, True], ids=["mems", "kv-cache"])
@torch.no_grad()
def test_step_by_step(data, use_cache):
    model, inp, exp = data
    logits, _ = incremental_logits(model, inp["tokens"], inp["position_ids"], inp["step_bounds"], use_cache)
    torch.testing.assert_close(logits, exp["steps_logits"], **TOL)


@pytest.mark.parametrize("use_cache", [False, True], ids=["mems", "kv-cache"])
@torch.no_grad()
def test_roi2_position_offset(data, use_cache):
    model, inp, exp = data
    logits, _ = incremental_logits(model, inp["tokens"], inp["roi2_position_ids"], inp["step_bounds"], use_cache)
    torch.testing.assert_close(logits, exp["roi2_steps_logits"], **TOL)


@pytest.mark.parametrize("use_cache", [False, True], ids=["mems", "kv-cache"])
@torch.no_grad()
def test_truncated_memory(data, use_cache):
    _, inp, exp = data
    model = build_fixture_model(max_memory_length=fixture_config()["truncmem_max_memory_length"])
    logits, state = incremental_logits(model, inp["tokens"], inp["position_ids"], inp["step_bounds"], use_cache)
    torch.testing.assert_close(logits, exp["truncmem_steps_logits"], **TOL)
    if use_cache:
        assert state.length == fixture_config()["truncmem_max_memory_length"]
    else:
        torch.testing.assert_close(torch.stack(state), exp["truncmem_final_mems"], **TOL)


@torch.no_grad()
def test_loss_with_txt_loss_scale(data):
    """forward_step's loss: tokens/labels shifted, text positions weighted by txt_loss_scale."""
    model, inp, exp = data
    cfg = fixture_config()
    text, raw_mask = inp["loss_text"], inp["loss_mask_raw"]
    tokens, labels, loss_mask = text[:, :-1], text[:, 1:], raw_mask[:, 1:].float()
    seq = tokens.size(1)
    causal = torch.ones(1, 1, seq, seq).tril_()
    positions = torch.arange(seq).expand_as(tokens)
    logits, *_ = model(tokens, positions, causal)
    losses = mpu.vocab_parallel_cross_entropy(logits.float(), labels)
    img = tokens < cfg["num_image_tokens"]
    txt = (~img) & (loss_mask > 0)
    scaled = torch.where(txt, loss_mask * cfg["txt_loss_scale"], loss_mask)
    loss = (losses * scaled).sum() / scaled.sum()
    img_loss = (losses * scaled)[img].sum() / img.sum()
    txt_loss = (losses * scaled)[txt].sum() / txt.sum() / cfg["txt_loss_scale"]
    torch.testing.assert_close(losses, exp["loss_per_token"], **TOL)
    torch.testing.assert_close(scaled, exp["loss_mask_scaled"])
    torch.testing.assert_close(loss.view(1), exp["loss"], **TOL)
    torch.testing.assert_close(img_loss.view(1), exp["img_loss"], **TOL)
    torch.testing.assert_close(txt_loss.view(1), exp["txt_loss"], **TOL)
    # and equals the library cross entropy for a single model-parallel rank
    torch.testing.assert_close(
        losses,
        torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), labels, reduction="none"),
        atol=1e-5,
        rtol=1e-5,
    )


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
@pytest.mark.parametrize("use_cache", [False, True], ids=["mems", "kv-cache"])
@torch.no_grad()
def test_every_device_one_code_path(data, device, use_cache):
    _, inp, exp = data
    model = build_fixture_model().to(device)
    logits, _ = incremental_logits(
        model, inp["tokens"].to(device), inp["position_ids"].to(device), inp["step_bounds"], use_cache
    )
    torch.testing.assert_close(logits.cpu(), exp["steps_logits"], **TOL)
