"""The KV cache and the SDPA fast path against the original's algorithms."""

from __future__ import annotations

import pytest
import torch

from arch import GPT2Model
from arch.attention import dense_attention, explicit_attention
from arch.masks import build_attention_mask

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def random_model(max_memory_length=64, dtype=torch.float64, device="cpu"):
    torch.manual_seed(0)
    model = GPT2Model(3, 96, 48, 4, 0.0, 0.0, 0.0, 64, max_memory_length, False)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "layernorm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model.to(device=device, dtype=dtype).eval()


@pytest.mark.parametrize("device", DEVICES)
@torch.no_grad()
def test_cache_equals_full_forward_and_mems(device):
    model = random_model(device=device)
    ids = torch.randint(0, 96, (2, 30), device=device)
    pos = torch.arange(30, device=device).expand(2, 30)
    full, *_ = model(ids, pos, torch.ones(1, 1, 30, 30, device=device).tril_())
    cache, mems, cached, memmed = model.new_kv_cache(), [], [], []
    bounds = [(0, 10), (10, 11), (11, 14), (14, 30)]
    for i, (a, b) in enumerate(bounds):
        mask = torch.ones(1, 1, b - a, b - a, device=device).tril_() if i == 0 else 0
        logits, *_ = model(ids[:, a:b], pos[:, a:b], mask, kv_cache=cache)
        cached.append(logits)
        logits, *mems = model(ids[:, a:b], pos[:, a:b], mask, None, None, 0, *mems)
        memmed.append(logits)
    # the per-chunk PB-relax LayerNorm scale differs from the one-shot run only through eps
    torch.testing.assert_close(torch.cat(cached, 1), full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat(cached, 1), torch.cat(memmed, 1), atol=1e-5, rtol=1e-5)
    assert cache.length == 30


@torch.no_grad()
def test_cache_select_expands_one_prompt_to_many_samples():
    model = random_model()
    ids = torch.randint(0, 96, (1, 12))
    pos = torch.arange(12)[None]
    cache = model.new_kv_cache()
    model(ids, pos, torch.ones(1, 1, 12, 12).tril_(), kv_cache=cache)
    cache.select(torch.zeros(3, dtype=torch.long))
    nxt = torch.tensor([[5], [6], [7]])
    logits, *_ = model(nxt, torch.full((3, 1), 12), 0, kv_cache=cache)
    for row in range(3):
        full, *_ = model(
            torch.cat([ids, nxt[row : row + 1]], 1), torch.arange(13)[None], torch.ones(1, 1, 13, 13).tril_()
        )
        torch.testing.assert_close(logits[row], full[0, -1:], atol=1e-6, rtol=1e-6)


@torch.no_grad()
def test_cache_truncates_like_memories():
    model = random_model(max_memory_length=8)
    ids = torch.randint(0, 96, (2, 20))
    pos = torch.arange(20).expand(2, 20)
    cache, mems = model.new_kv_cache(), []
    for t in range(20):
        mask = torch.ones(1, 1, 1, 1) if t == 0 else 0
        a, *_ = model(ids[:, t : t + 1], pos[:, t : t + 1], mask, kv_cache=cache)
        b, *mems = model(ids[:, t : t + 1], pos[:, t : t + 1], mask, None, None, 0, *mems)
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
        assert cache.length == min(8, t + 1) and mems[0].size(1) == min(8, t + 1)


@pytest.mark.parametrize(
    "mask_arg,q,mem", [(0, 1, 9), (0, 5, 0), (0, 5, 7), (3, 6, 0), (2, 4, 5), ("tensor", 6, 0), ("random", 6, 3)]
)
def test_sdpa_path_equals_the_original_formula(mask_arg, q, mem):
    torch.manual_seed(0)
    k_len = q + mem
    qt = torch.randn(2, 3, q, 8, dtype=torch.float64)
    kt, vt = torch.randn(2, 3, k_len, 8, dtype=torch.float64), torch.randn(2, 3, k_len, 8, dtype=torch.float64)
    if mask_arg == "tensor":
        mask_arg = torch.ones(1, 1, q, q, dtype=torch.float64).tril_()
    elif mask_arg == "random":
        mask_arg = (torch.rand(1, 1, q, k_len) > 0.3).double()
        mask_arg[..., 0] = 1
    mask = build_attention_mask(mask_arg, q, mem)
    fast = dense_attention(qt, kt, vt, mask)
    slow = explicit_attention(qt, kt, vt, mask.dense(qt.device, qt.dtype))
    torch.testing.assert_close(fast, slow, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("mask_arg,mem", [(0, 9), (0, 0), (3, 6), ("random", 12)])
def test_one_query_attention_equals_the_original_formula(dtype, tol, mask_arg, mem):
    """A decoding step (one query) takes the plain-products path in float32 and bfloat16."""
    torch.manual_seed(0)
    qt, kt, vt = torch.randn(2, 3, 1, 8), torch.randn(2, 3, 1 + mem, 8), torch.randn(2, 3, 1 + mem, 8)
    if mask_arg == "random":
        mask_arg = (torch.rand(1, 1, 1, 1 + mem) > 0.3).float()
        mask_arg[..., 0] = 1
    mask = build_attention_mask(mask_arg, 1, mem)
    fast = dense_attention(qt.to(dtype), kt.to(dtype), vt.to(dtype), mask)
    slow = explicit_attention(qt.double(), kt.double(), vt.double(), mask.dense(qt.device, torch.float64))
    assert fast.dtype == dtype
    torch.testing.assert_close(fast.double(), slow, atol=tol, rtol=tol)


def test_sep_mask_layout():
    mask = build_attention_mask(2, 4, 3).dense(torch.device("cpu"))[0, 0]
    expected = torch.tensor(
        [[1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1, 1]],
        dtype=torch.float32,
    )
    assert torch.equal(mask, expected)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@torch.no_grad()
def test_half_precision_forward_runs_and_stays_close(dtype):
    model = random_model(dtype=torch.float32)
    ids = torch.randint(0, 96, (2, 16))
    pos = torch.arange(16).expand(2, 16)
    mask = torch.ones(1, 1, 16, 16).tril_()
    ref, *_ = model(ids, pos, mask)
    half, *_ = model.to(dtype)(ids, pos, mask.to(dtype))
    assert half.dtype == dtype and torch.isfinite(half).all()
    assert (half.float() - ref).abs().max() < 0.25 * ref.abs().max()


@pytest.mark.parametrize("rows", [1, 3, 16, 17])
def test_decode_linear_equals_f_linear(rows):
    """The batched-GEMM kernel for a few rows on CPU computes the same linear map."""
    from arch.mpu.layers import linear

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        torch.manual_seed(0)
        w, b = torch.randn(96, 40, dtype=torch.float64), torch.randn(96, dtype=torch.float64)
        x = torch.randn(rows, 1, 40, dtype=torch.float64)
        with torch.no_grad():
            torch.testing.assert_close(linear(x, w, b), torch.nn.functional.linear(x, w, b))
            torch.testing.assert_close(linear(x, w[8:40]), torch.nn.functional.linear(x, w[8:40]))
    finally:
        torch.set_num_threads(threads)
