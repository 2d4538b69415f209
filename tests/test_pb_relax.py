"""PB-relax: the LayerNorm rescale and the paper's attention form."""

from __future__ import annotations

import pytest
import torch

from arch import GPT2Model
from arch.attention import explicit_attention
from arch.layernorm import PBRelaxLayerNorm


def test_pb_relax_attention_changes_nothing_in_float64():
    torch.manual_seed(0)
    kw = dict(
        num_layers=2,
        vocab_size=64,
        hidden_size=32,
        num_attention_heads=4,
        embedding_dropout_prob=0.0,
        attention_dropout_prob=0.0,
        output_dropout_prob=0.0,
        max_sequence_length=32,
        max_memory_length=0,
        checkpoint_activations=False,
    )
    plain = GPT2Model(**kw).double().eval()
    relaxed = GPT2Model(pb_relax_attention=True, pb_relax_alpha=32.0, **kw).double().eval()
    relaxed.load_state_dict(plain.state_dict())
    ids = torch.randint(0, 64, (2, 20))
    pos = torch.arange(20).expand(2, 20)
    for mask in (torch.ones(1, 1, 20, 20).tril_(), 7):
        a, *_ = plain(ids, pos, mask)
        b, *_ = relaxed(ids, pos, mask)
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("dtype,magnitude", [(torch.float16, 200.0), (torch.bfloat16, 1e19)])
def test_pb_relax_attention_prevents_overflow(dtype, magnitude):
    torch.manual_seed(0)
    b, n, s, d = 1, 2, 8, 16
    q = (magnitude * (1 + 0.01 * torch.randn(b, n, s, d))).to(dtype)
    k = (magnitude * (1 + 0.01 * torch.randn(b, n, s, d))).to(dtype)
    v = torch.randn(b, n, s, d).to(dtype)
    mask = torch.ones(1, 1, s, s).tril_().to(dtype)
    plain = explicit_attention(q, k, v, mask)
    assert not torch.isfinite(plain).all(), "the test inputs must overflow plain attention"
    relaxed = explicit_attention(q, k, v, mask, pb_relax_alpha=32.0)
    assert torch.isfinite(relaxed).all()
    # a valid attention output: a convex combination of the value rows
    lo = v.double().amin(dim=2, keepdim=True) - 1e-2
    hi = v.double().amax(dim=2, keepdim=True) + 1e-2
    assert bool(((relaxed.double() >= lo) & (relaxed.double() <= hi)).all())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_pb_relax_attention_is_as_accurate_as_plain_where_plain_works(dtype):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, 12, 16) for _ in range(3))
    mask = torch.ones(1, 1, 12, 12).tril_()
    reference = explicit_attention(q.double(), k.double(), v.double(), mask.double())
    plain = explicit_attention(q.to(dtype), k.to(dtype), v.to(dtype), mask.to(dtype)).double()
    relaxed = explicit_attention(q.to(dtype), k.to(dtype), v.to(dtype), mask.to(dtype), pb_relax_alpha=32.0).double()
    plain_err = (plain - reference).abs().max().item()
    assert (relaxed - reference).abs().max().item() <= 4 * plain_err + 1e-3


def test_pb_relax_layernorm_rescales_by_global_max_and_handles_zeros():
    torch.manual_seed(0)
    ln = PBRelaxLayerNorm(8).double()
    x = torch.randn(3, 5, 8, dtype=torch.float64) * 1000
    scale = x.abs().max() / 8
    expected = torch.nn.functional.layer_norm(x / scale, (8,), ln.weight, ln.bias, 1e-5)
    torch.testing.assert_close(ln(x), expected)
    assert torch.isfinite(ln(torch.zeros(2, 3, 8, dtype=torch.float64))).all()
    # fp16 activations beyond the range of x*x do not overflow the variance
    big = (torch.randn(2, 4, 8) * 1e4).clamp(-6e4, 6e4).half()
    assert torch.isfinite(PBRelaxLayerNorm(8).half()(big)).all()
