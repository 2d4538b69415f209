"""Attention kernels: dense (SDPA or the original's explicit form), the paper's
PB-relax variant, and CogView's sparse pivot + window attention.

All take q [b, n, sq, d] and k, v [b, n, sk, d] (the last sq keys belong to
the queries) and return the context [b, n, sq, d].
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from .masks import MASK_VALUE, AttentionMask


def dense_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: AttentionMask,
    dropout_p: float = 0.0,
    pb_relax_alpha: Optional[float] = None,
) -> torch.Tensor:
    """Softmax attention; SDPA unless the PB-relax form is asked for or one query decodes."""
    if pb_relax_alpha is None and q.size(-2) == 1 and dropout_p == 0.0 and q.dtype in ONE_QUERY_DTYPES:
        return one_query_attention(q, k, v, mask)
    if pb_relax_alpha is None:
        attn_mask, is_causal = mask.sdpa_args(q.device, q.dtype)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal)
    return explicit_attention(q, k, v, mask.dense(q.device, q.dtype), dropout_p, pb_relax_alpha)


# float16 keeps SDPA: its product q k^T can overflow where bfloat16's range cannot
ONE_QUERY_DTYPES = (torch.float32, torch.bfloat16)


def one_query_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: AttentionMask) -> torch.Tensor:
    """A decoding step's attention as two products and a float32 softmax.

    SDPA's fused CPU kernel splits one query's keys between threads, so in float32 its
    sum order, and the last bit of the logits, follow the thread count; the sampler
    changes that count between steps (generation/threads.py), and a seed must still
    give one image.  Plain products are the same on any count, at about the same speed.
    """
    attn_mask, _ = mask.sdpa_args(q.device, q.dtype)  # causal over one query and one key sees it
    scores = torch.matmul(q * (1.0 / math.sqrt(q.size(-1))), k.transpose(-1, -2))
    if attn_mask is not None:
        scores = scores + attn_mask
    return torch.matmul(torch.softmax(scores, dim=-1, dtype=torch.float32).to(v.dtype), v)


def explicit_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask01: torch.Tensor,
    dropout_p: float = 0.0,
    pb_relax_alpha: Optional[float] = None,
) -> torch.Tensor:
    """The original's formula: scores*mask - 10000*(1-mask), softmax, dropout.

    With ``pb_relax_alpha`` the scores are computed as in the paper's PB-relax:
    (Q / (alpha*sqrt(d))) K^T, minus its (detached) row max, times alpha: the
    same softmax in exact arithmetic, but no fp16/bf16 overflow in the product.
    """
    d = q.size(-1)
    if pb_relax_alpha is None:
        scores = torch.matmul(q / math.sqrt(d), k.transpose(-1, -2))
    else:
        scores = torch.matmul(q / (pb_relax_alpha * math.sqrt(d)), k.transpose(-1, -2))
        scores = (scores - scores.detach().amax(dim=-1, keepdim=True)) * pb_relax_alpha
    scores = scores * mask01 + MASK_VALUE * (1.0 - mask01)
    probs = F.dropout(torch.softmax(scores, dim=-1), p=dropout_p, training=dropout_p > 0)
    return torch.matmul(probs, v)


def _gather_keys(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x [b, n, s, d] gathered at index [b, m] along s -> [b, n, m, d]."""
    b, n, _, d = x.shape
    return x.gather(2, index[:, None, :, None].expand(b, n, index.size(1), d))


def sample_training_pivots(
    txt_indices_bool: torch.Tensor, img_indices_bool: torch.Tensor, num_pivot: int
) -> torch.Tensor:
    """Pivot positions [b, num_pivot] per row: every text position plus random image ones.

    Text positions beyond ``num_pivot`` are dropped from the end; image
    positions are drawn without replacement from the default torch RNG.
    """
    b, s = txt_indices_bool.shape
    if num_pivot > s:
        raise ValueError(f"--num-pivot {num_pivot} is larger than the sequence ({s})")
    noise = torch.rand(b, s, device=txt_indices_bool.device)
    # text first (key 2 + position order), then random image positions, then the rest
    order = torch.arange(s, 0, -1, device=noise.device, dtype=noise.dtype) / (s + 1)
    key = torch.where(txt_indices_bool, 2.0 + order, torch.where(img_indices_bool, noise, noise - 2.0))
    return key.topk(num_pivot, dim=1).indices.sort(dim=1).values


def sparse_attention_train(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pivot_idx: torch.Tensor,
    query_window: int,
    key_window_times: int,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """is_sparse=1: each block of ``query_window`` queries sees its own and the
    previous key_window_times-1 blocks causally, plus the pivots strictly before
    that window, each pivot scored with + log(s // num_pivot)."""
    b, n, s, d = q.shape
    w, t = query_window, key_window_times
    if s % w != 0:
        raise ValueError(f"sparse training needs the sequence length ({s}) divisible by --query-window ({w})")
    nb, n_piv = s // w, pivot_idx.size(1)
    q = q / math.sqrt(d)
    # pivot part
    k_piv, v_piv = _gather_keys(k, pivot_idx), _gather_keys(v, pivot_idx)
    query_block = torch.arange(s, device=q.device) // w
    pivot_mask = ((pivot_idx // w)[:, None, :] <= query_block[None, :, None] - t).to(q.dtype)
    pivot_mask = pivot_mask[:, None]  # [b, 1, s, n_piv]
    scores_piv = torch.matmul(q, k_piv.transpose(-1, -2))
    scores_piv = scores_piv * pivot_mask + MASK_VALUE * (1.0 - pivot_mask) + math.log(s // n_piv)
    # window part: keys padded in front by (t-1)w, chunks of t*w keys per block
    pad = torch.zeros(b, n, (t - 1) * w, d, dtype=k.dtype, device=k.device)
    k_win = torch.cat([pad, k], dim=2).unfold(2, t * w, w).transpose(-1, -2)  # [b,n,nb,tw,d]
    v_win = torch.cat([pad, v], dim=2).unfold(2, t * w, w).transpose(-1, -2)
    q_blocks = q.view(b, n, nb, w, d)
    win_mask = torch.ones(w, t * w, device=q.device, dtype=q.dtype).tril_(diagonal=w * (t - 1))
    scores_win = torch.matmul(q_blocks, k_win.transpose(-1, -2))
    scores_win = scores_win * win_mask + MASK_VALUE * (1.0 - win_mask)
    slot = torch.arange(t * w, device=q.device)
    padded = slot[None, :] < ((t - 1 - torch.arange(nb, device=q.device)) * w)[:, None]  # [nb, tw]
    scores_win = scores_win + MASK_VALUE * padded[:, None, :].to(q.dtype)
    scores = torch.cat([scores_piv.view(b, n, nb, w, n_piv), scores_win], dim=-1)
    probs = F.dropout(torch.softmax(scores, dim=-1), p=dropout_p, training=dropout_p > 0)
    probs_piv, probs_win = probs.split([n_piv, t * w], dim=-1)
    context = torch.matmul(probs_piv.reshape(b, n, s, n_piv), v_piv)
    context = context + torch.matmul(probs_win, v_win).view(b, n, s, d)
    return context


def sample_inference_pivots(txt_indices_bool: torch.Tensor, boundary: int, num_pivot: int, max_sequence_length: int):
    """Pivots before ``boundary`` for is_sparse=2: text positions + random image ones.

    Returns (index [b, m], valid [b, m]); m = most text tokens in a row +
    int((boundary - that) * num_pivot / max_sequence_length).
    """
    b = txt_indices_bool.size(0)
    txt = txt_indices_bool[:, :boundary]
    n_txt = int(txt.sum(dim=1).max().item()) if boundary > 0 else 0
    m = min(boundary, n_txt + int((boundary - n_txt) * num_pivot / max_sequence_length))
    if m <= 0:
        empty = torch.zeros(b, 0, dtype=torch.long, device=txt.device)
        return empty, empty.bool()
    noise = torch.rand(b, boundary, device=txt.device)
    key = torch.where(txt, 2.0 + noise, noise)
    index = key.topk(m, dim=1).indices.sort(dim=1).values
    return index, torch.ones_like(index, dtype=torch.bool)


def sparse_attention_inference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    txt_indices_bool: torch.Tensor,
    query_window: int,
    key_window_times: int,
    num_pivot: int,
    max_sequence_length: int,
) -> torch.Tensor:
    """is_sparse=2: the last query_window*key_window_times keys plus pivots before them.

    ``txt_indices_bool`` covers all sk key positions.  Every key is also masked
    causally against its query's absolute position, which the original does
    only for the last q x q block (the same thing whenever sq <= the window).
    """
    b, n, sq, d = q.shape
    sk = k.size(2)
    boundary = max(0, sk - key_window_times * query_window)
    pivots, _ = sample_inference_pivots(txt_indices_bool.to(q.device), boundary, num_pivot, max_sequence_length)
    window = torch.arange(boundary, sk, device=q.device).expand(b, -1)
    index = torch.cat([pivots, window], dim=1)  # [b, m]
    keys, values = _gather_keys(k, index), _gather_keys(v, index)
    query_pos = torch.arange(sk - sq, sk, device=q.device)
    mask = (index[:, None, :] <= query_pos[None, :, None]).to(q.dtype)[:, None]  # [b,1,sq,m]
    scores = torch.matmul(q / math.sqrt(d), keys.transpose(-1, -2))
    scores = scores * mask + MASK_VALUE * (1.0 - mask)
    return torch.matmul(torch.softmax(scores, dim=-1), values)
