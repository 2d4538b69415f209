"""Batches and the loss of the original pretrain_gpt2.py's get_batch / forward_step, in one place.

tokens = text[:, :-1], labels = text[:, 1:], loss_mask = mask[:, 1:].  Image
positions are those whose INPUT token is an image code (the original's rule: the
prediction of the first code after [BOI1] counts as text); text positions are the
others with loss_mask > 0, weighted by --txt-loss-scale.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from arch import mpu


def causal_mask(seq_len: int, device, dtype=torch.float32) -> torch.Tensor:
    """[1, 1, s, s] lower-triangular ones (padding sits at the end, so no pad mask)."""
    return torch.ones(1, 1, seq_len, seq_len, device=device, dtype=dtype).tril_()


def finetune_position_ids(tokens: torch.Tensor, roi2_id: int, max_position_embeddings: int) -> torch.Tensor:
    """Positions restarting at 0 AT each row's first [ROI2], clamped to the table size."""
    b, s = tokens.shape
    is_roi2 = tokens == roi2_id
    if not bool(is_roi2.any(dim=1).all()):
        row = int((~is_roi2.any(dim=1)).nonzero()[0])
        raise ValueError(
            f"--finetune/--roi2-positions with a longer --max-position-embeddings-finetune needs a [ROI2] "
            f"token in every sample; batch row {row} has none"
        )
    sep = is_roi2.int().argmax(dim=1, keepdim=True)
    positions = torch.arange(s, device=tokens.device).expand(b, s)
    positions = torch.where(positions >= sep, positions - sep, positions)
    return positions.clamp(max=max_position_embeddings - 1)


@dataclass
class Batch:
    tokens: torch.Tensor
    labels: torch.Tensor
    loss_mask: torch.Tensor  # float, before --txt-loss-scale
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    img_indices_bool: torch.Tensor
    txt_indices_bool: torch.Tensor


def get_batch(
    text: torch.Tensor,
    raw_loss_mask: torch.Tensor,
    num_image_tokens: int,
    device="cpu",
    mask_dtype=torch.float32,
    roi2_id: Optional[int] = None,
    max_position_embeddings: Optional[int] = None,
) -> Batch:
    """Shifted tokens/labels, causal mask and positions; ``roi2_id`` turns on finetune positions."""
    text = text.to(device=device, dtype=torch.long)
    raw_loss_mask = raw_loss_mask.to(device)
    tokens, labels = text[:, :-1].contiguous(), text[:, 1:].contiguous()
    loss_mask = raw_loss_mask[:, 1:].float().contiguous()
    s = tokens.size(1)
    if roi2_id is not None:
        position_ids = finetune_position_ids(tokens, roi2_id, max_position_embeddings)
    else:
        position_ids = torch.arange(s, device=device).unsqueeze(0).expand_as(tokens)
    img = tokens < num_image_tokens
    txt = (~img) & (loss_mask > 0)
    return Batch(tokens, labels, loss_mask, causal_mask(s, device, mask_dtype), position_ids, img, txt)


@dataclass
class LossOutput:
    loss: torch.Tensor  # the scalar to back-propagate
    img_loss: torch.Tensor  # mean per-token loss at image positions (detached)
    txt_loss: torch.Tensor  # mean per-token loss at text positions, unscaled (detached)
    per_token: torch.Tensor


def compute_loss(logits: torch.Tensor, batch: Batch, txt_loss_scale: float = 1.0) -> LossOutput:
    """loss = sum(ce * mask) / sum(mask), text positions weighted by txt_loss_scale."""
    losses = mpu.vocab_parallel_cross_entropy(logits.float().contiguous(), batch.labels)
    mask = torch.where(batch.txt_indices_bool, batch.loss_mask * txt_loss_scale, batch.loss_mask)
    weighted = losses * mask
    loss = weighted.sum() / mask.sum().clamp(min=1e-12)
    with torch.no_grad():
        img, txt = batch.img_indices_bool, batch.txt_indices_bool
        # guarded counts: a batch without text (or image) positions logs 0, not NaN
        img_loss = weighted[img].sum() / img.sum().clamp(min=1)
        txt_loss = weighted[txt].sum() / txt.sum().clamp(min=1) / txt_loss_scale
    return LossOutput(loss, img_loss.detach(), txt_loss.detach(), losses)


def forward_step(model, batch: Batch, txt_loss_scale: float, is_sparse: int = 0) -> Tuple[LossOutput, int]:
    """Run the model on a batch; returns the loss and the number of tokens seen."""
    logits, *_ = model(
        batch.tokens,
        batch.position_ids,
        batch.attention_mask,
        batch.txt_indices_bool,
        batch.img_indices_bool,
        is_sparse,
    )
    return compute_loss(logits, batch, txt_loss_scale), batch.tokens.numel()
