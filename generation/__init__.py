"""Sampling from CogView: the KV-cache sampler, super-resolution windows and
post-selection scoring."""

from .magnify import magnify, magnify_windows
from .post_selection import caption_given_image_score, image_given_text_score, inverse_prompt_score
from .sampling import Guidance, SamplingConfig, TokenLayout, filling_sequence, generate_in_chunks, top_k_logits

__all__ = [
    "Guidance",
    "SamplingConfig",
    "TokenLayout",
    "filling_sequence",
    "generate_in_chunks",
    "top_k_logits",
    "magnify",
    "magnify_windows",
    "inverse_prompt_score",
    "image_given_text_score",
]
