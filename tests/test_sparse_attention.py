"""Sparse attention equals dense attention under the equivalent explicit mask."""

from __future__ import annotations

import math

import pytest
import torch

from arch import GPT2Model
from arch.attention import (
    explicit_attention,
    sample_training_pivots,
    sparse_attention_inference,
    sparse_attention_train,
)
from arch.masks import MASK_VALUE


def training_equivalent_scores_bias(s, w, t, pivots):
    """Additive bias [b, 1, s, s] that makes dense attention equal sparse training attention."""
    b = pivots.size(0)
    qb = torch.arange(s) // w
    kb = torch.arange(s) // w
    causal = torch.arange(s)[None, :] <= torch.arange(s)[:, None]
    window = causal & (qb[:, None] - kb[None, :] < t)
    is_pivot = torch.zeros(b, s, dtype=torch.bool)
    is_pivot.scatter_(1, pivots, True)
    pivot_visible = is_pivot[:, None, :] & (kb[None, None, :] <= qb[None, :, None] - t)
    visible = window[None] | pivot_visible
    zero = torch.zeros((), dtype=torch.float64)
    bias = torch.where(visible, zero, zero + MASK_VALUE)
    bias = bias + torch.where(pivot_visible, zero + math.log(s // pivots.size(1)), zero)
    return bias[:, None]


def dense_with_bias(q, k, v, bias):
    scores = torch.matmul(q / math.sqrt(q.size(-1)), k.transpose(-1, -2)) + bias
    return torch.matmul(torch.softmax(scores, -1), v)


@pytest.mark.parametrize("w,t", [(4, 2), (8, 3), (4, 1)])
def test_training_kernel_equals_dense_values_and_grads(w, t):
    torch.manual_seed(0)
    b, n, s, d = 2, 3, 32, 8
    q, k, v = (torch.randn(b, n, s, d, dtype=torch.float64, requires_grad=True) for _ in range(3))
    txt = torch.zeros(b, s, dtype=torch.bool)
    txt[:, :5] = True
    pivots = sample_training_pivots(txt, ~txt, num_pivot=8)
    assert bool(txt.gather(1, pivots[:, :5]).all())  # every text position is a pivot
    sparse = sparse_attention_train(q, k, v, pivots, w, t)
    dense = dense_with_bias(q, k, v, training_equivalent_scores_bias(s, w, t, pivots))
    torch.testing.assert_close(sparse, dense, atol=1e-10, rtol=1e-10)
    grad = torch.randn_like(sparse)
    g_sparse = torch.autograd.grad(sparse, (q, k, v), grad)
    g_dense = torch.autograd.grad(dense, (q, k, v), grad)
    for a, bb in zip(g_sparse, g_dense):
        torch.testing.assert_close(a, bb, atol=1e-10, rtol=1e-10)


def test_inference_kernel_equals_dense_over_the_same_keys():
    torch.manual_seed(1)
    b, n, sk, d = 2, 2, 40, 8
    w, t, num_pivot = 4, 2, 16
    k, v = torch.randn(b, n, sk, d, dtype=torch.float64), torch.randn(b, n, sk, d, dtype=torch.float64)
    txt = torch.zeros(b, sk, dtype=torch.bool)
    txt[:, :6] = True
    for sq in (1, 3):
        q = torch.randn(b, n, sq, d, dtype=torch.float64)
        torch.manual_seed(5)
        out = sparse_attention_inference(q, k, v, txt, w, t, num_pivot, max_sequence_length=64)
        # replay the pivot draw to build the equivalent dense mask
        torch.manual_seed(5)
        boundary = sk - w * t
        from arch.attention import sample_inference_pivots

        pivots, _ = sample_inference_pivots(txt, boundary, num_pivot, 64)
        assert bool(txt[:, :boundary].gather(1, pivots[:, :6]).all())
        visible = torch.zeros(b, sq, sk, dtype=torch.bool)
        visible[:, :, boundary:] = True
        visible |= torch.zeros(b, sk, dtype=torch.bool).scatter(1, pivots, True)[:, None, :]
        qpos = torch.arange(sk - sq, sk)
        visible &= torch.arange(sk)[None, None, :] <= qpos[None, :, None]
        dense = explicit_attention(q, k, v, visible[:, None].double())
        torch.testing.assert_close(out, dense, atol=1e-10, rtol=1e-10)


def small_model(**kw):
    torch.manual_seed(0)
    return GPT2Model(
        num_layers=2,
        vocab_size=64,
        hidden_size=32,
        num_attention_heads=4,
        embedding_dropout_prob=0.0,
        attention_dropout_prob=0.0,
        output_dropout_prob=0.0,
        max_sequence_length=64,
        max_memory_length=0,
        checkpoint_activations=True,
        checkpoint_num_layers=1,
        query_window=8,
        key_window_times=2,
        num_pivot=12,
        **kw,
    ).double()


def test_model_sparse_training_equals_dense_with_pivot_mask_values_and_grads():
    """The whole model with is_sparse=1 (checkpointed, pivots per layer) against a
    dense run whose per-layer attention uses the equivalent explicit bias."""
    model = small_model()
    b, s = 2, 32
    ids = torch.randint(0, 64, (b, s))
    pos = torch.arange(s).expand(b, s)
    txt = torch.zeros(b, s, dtype=torch.bool)
    txt[:, :4] = True
    model.train()
    logits, *_ = model(ids, pos, torch.ones(1, 1, s, s).tril_(), txt, ~txt, 1)
    pivots = list(model.transformer.last_pivots)
    assert len(pivots) == 2  # one draw per checkpoint chunk (= per layer)
    grad = torch.randn_like(logits)
    logits.backward(grad)
    sparse_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()

    import arch.transformer as tr

    # forward uses layer 0 then 1; backward recomputes the checkpointed layers 1 then 0
    per_layer = [training_equivalent_scores_bias(s, 8, 2, p) for p in pivots]
    biases = iter(per_layer + per_layer[::-1])
    original = tr.dense_attention
    tr.dense_attention = lambda q, k, v, mask, dropout_p=0.0, alpha=None: dense_with_bias(q, k, v, next(biases))
    try:  # the patch stays during backward: checkpointing recomputes the forward there
        dense_logits, *_ = model(ids, pos, torch.ones(1, 1, s, s).tril_(), txt, ~txt, 0)
        torch.testing.assert_close(logits, dense_logits, atol=1e-9, rtol=1e-9)
        dense_logits.backward(grad)
    finally:
        tr.dense_attention = original
    for n, p in model.named_parameters():
        torch.testing.assert_close(sparse_grads[n], p.grad, atol=1e-9, rtol=1e-9, msg=n)


def test_sparse_training_requires_checkpointing_and_divisible_length():
    model = GPT2Model(2, 64, 32, 4, 0, 0, 0, 64, 0, False, 1, True, 8, 2, 12)
    ids = torch.randint(0, 64, (1, 32))
    txt = torch.zeros(1, 32, dtype=torch.bool)
    with pytest.raises(ValueError, match="checkpoint_activations"):
        model(ids, torch.arange(32)[None], 0, txt, ~txt, 1)
    model = small_model().float()
    with pytest.raises(ValueError, match="divisible"):
        model(ids[:, :30], torch.arange(30)[None], 0, txt[:, :30], ~txt[:, :30], 1)


def test_checkpointed_dropout_training_matches_uncheckpointed():
    """Activation checkpointing recomputes with the same dropout masks (RNG restored)."""
    from arch import mpu

    torch.manual_seed(0)
    kw = dict(
        num_layers=2,
        vocab_size=64,
        hidden_size=32,
        num_attention_heads=4,
        embedding_dropout_prob=0.1,
        attention_dropout_prob=0.1,
        output_dropout_prob=0.1,
        max_sequence_length=64,
        max_memory_length=0,
    )
    ref = GPT2Model(checkpoint_activations=False, **kw).train()
    ckpt = GPT2Model(checkpoint_activations=True, **kw).train()
    ckpt.load_state_dict(ref.state_dict())
    ids = torch.randint(0, 64, (2, 16))
    pos = torch.arange(16).expand(2, 16)
    grads = []
    for model in (ref, ckpt):
        mpu.model_parallel_manual_seed(7)
        logits, *_ = model(ids, pos, torch.ones(1, 1, 16, 16).tril_())
        logits.sum().backward()
        grads.append((logits.detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    for a, b in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(a, b)
