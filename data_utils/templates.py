"""Token-sequence layouts for training rows and the generation query templates.

Each template takes an optional ``tokenizer``; without it the process-wide one
(unified_tokenizer.get_tokenizer) is used, as in the original.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch

from .unified_tokenizer import CodeLike, UnifiedTokenizer, get_tokenizer

TextLike = Union[str, Sequence[int], np.ndarray]

# generate_samples.py's query templates, formatted with str.format (text first, then paths)
TASK_TEMPLATES: Dict[str, str] = {
    "text2image": "[ROI1] {} [BASE] [BOI1] [MASK]*1024",
    "image2text": "[BASE] [BOI1] [Image]{} [EOI1] [ROI1] [MASK]*20",
    "low-level super-resolution": "[ROI1] {} [BASE] [BOI1] [Image]{} [EOI1] [ROI2] [POS0] [BASE] [BOI2] [MASK]*1024",
    "super-resolution": "[ROI1] {} [BASE] [BOI1] [Image]{}",
    "post-selection": "[BASE] [BOI1] [Image]{} [EOI1] [ROI1] {}",
}


def _tok(tokenizer: Optional[UnifiedTokenizer]) -> UnifiedTokenizer:
    return tokenizer if tokenizer is not None else get_tokenizer()


def concat_codes(*codes: CodeLike) -> CodeLike:
    """Join lists, numpy arrays or tensors; the result is a tensor if any part is one,
    else a numpy array if any part is one, else a list."""
    tensors = [c for c in codes if isinstance(c, torch.Tensor)]
    if tensors:
        device = tensors[-1].device
        return torch.cat(
            [torch.as_tensor(np.asarray(c) if isinstance(c, list) else c, device=device).reshape(-1) for c in codes]
        )
    if any(isinstance(c, np.ndarray) for c in codes):
        return np.concatenate([np.array(c).reshape(-1) for c in codes], axis=0)
    ret: List[int] = []
    for c in codes:
        ret = ret + list(c)
    return ret


def TextCodeTemplate(text: TextLike, code: CodeLike, tokenizer: Optional[UnifiedTokenizer] = None) -> CodeLike:
    """[ROI1] text + [size] [BOI1] code [EOI1]; ``text`` is a string or unified ids."""
    tok = _tok(tokenizer)
    if isinstance(text, str):
        text_ids = [tok["[ROI1]"]] + tok(text)
    else:
        text_ids = np.concatenate((np.array([tok["[ROI1]"]]), np.asarray(text).reshape(-1)), axis=0)
    return concat_codes(text_ids, tok.wrap_code(code))


def Code2CodeTemplate(
    text: TextLike, code0: CodeLike, code1: CodeLike, tokenizer: Optional[UnifiedTokenizer] = None
) -> CodeLike:
    """parse_query(text) + wrap_code(code0, 1) + wrap_code(code1, 2) (super-resolution rows)."""
    tok = _tok(tokenizer)
    text_ids = tok.parse_query(text) if isinstance(text, str) else text
    return concat_codes(text_ids, tok.wrap_code(code0), tok.wrap_code(code1, idx=2))


def PureTextTemplate(text: str, tokenizer: Optional[UnifiedTokenizer] = None) -> List[int]:
    """text ids + [SEP] (pure-text rows)."""
    tok = _tok(tokenizer)
    return tok(text) + [tok["[SEP]"]]
