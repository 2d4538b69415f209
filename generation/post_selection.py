"""Post-selection: rank images by the caption model's likelihood of the text."""

from __future__ import annotations

from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F


@torch.no_grad()
def inverse_prompt_score(model, seq: torch.Tensor, roi1_id: int, num_image_tokens: int) -> torch.Tensor:
    """log p(text | image) for rows ``[BASE] [BOI1] codes [EOI1] [ROI1] text``.

    The [ROI1] position is found in each row (the original hard-coded 1027, the
    position for 32x32 codes). Image ids are excluded from the normalisation, as
    in the original; higher is better.
    """
    seq = torch.as_tensor(seq)
    is_roi1 = seq == roi1_id
    if not bool(is_roi1.any(dim=1).all()):
        raise ValueError("every row must contain [ROI1] before the text to score")
    start = is_roi1.float().argmax(dim=1)  # first [ROI1] of each row
    return _sum_log_probs_after(model, seq, start, num_image_tokens, None)  # every id but the image ones


@torch.no_grad()
def image_given_text_score(model, rows, boi_id: int, num_image_tokens: int) -> torch.Tensor:
    """log p(image codes | text) for rows ``[ROI1] text [size] [BOI1] codes`` (new).

    The text->image direction scores a caption by how well it predicts the image: the
    reverse of ``inverse_prompt_score``, used to rank sampled captions (``--caption-rerank``).
    Rows may differ in length (captions do); each is scored from its first [BOI1] to its
    end, image ids only in the normalisation. Rows of one length share a forward pass.
    """

    def score(seq: torch.Tensor) -> torch.Tensor:
        if not bool((seq[:, :-1] == boi_id).any(dim=1).all()):
            raise ValueError("every row must contain [BOI1] followed by the image codes to score")
        start = (seq == boi_id).float().argmax(dim=1)  # first [BOI1]: codes follow it
        return _sum_log_probs_after(model, seq, start, 0, num_image_tokens)

    return _score_by_length(model, rows, score)


@torch.no_grad()
def caption_given_image_score(model, rows, roi1_id: int, num_image_tokens: int) -> torch.Tensor:
    """``inverse_prompt_score`` (log p(text | image)) of rows that may differ in length,
    as the sampled captions ``--caption-rerank-weight`` weighs do (new)."""
    return _score_by_length(model, rows, lambda seq: inverse_prompt_score(model, seq, roi1_id, num_image_tokens))


def _score_by_length(model, rows, score: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``score`` of each row, rows of one length stacked into one batch."""
    rows = [list(map(int, r)) for r in rows]
    scores = torch.zeros(len(rows))
    by_length: Dict[int, List[int]] = {}
    for i, r in enumerate(rows):
        by_length.setdefault(len(r), []).append(i)
    device = next(model.parameters()).device
    for index in by_length.values():
        scores[index] = score(torch.tensor([rows[i] for i in index], device=device)).float().cpu()
    return scores


def _sum_log_probs_after(model, seq: torch.Tensor, start: torch.Tensor, lo: int, hi: Optional[int]) -> torch.Tensor:
    """Per row, the summed log-probability of every token after position ``start`` given
    what precedes it, normalised over the ids [lo, hi) (hi None: to the vocabulary's end)."""
    n, length = seq.shape
    mask = torch.ones(1, 1, length, length, device=seq.device).tril_()
    pos = torch.arange(length, device=seq.device).expand(n, -1)
    logits, *_ = model(seq, pos, mask)
    log_probs = F.log_softmax(logits[..., lo:hi].float(), dim=-1)
    targets = (seq[:, 1:, None] - lo).clamp(0, log_probs.size(-1) - 1)  # unscored positions may lie outside
    next_lp = log_probs[:, :-1].gather(2, targets).squeeze(2)  # [n, L-1]
    scored = torch.arange(length - 1, device=seq.device)[None, :] >= start[:, None]
    return torch.where(scored, next_lp, torch.zeros_like(next_lp)).sum(dim=1)
