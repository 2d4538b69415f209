"""Build the GPT for generation from a GenerationConfig.

The checkpoint folder's ``model_config.json`` has already filled the model shape
into the config (generation/config.py), so the shipped models run without
NLAYERS/NHIDDEN/... on the command line.
"""

from __future__ import annotations

import torch

from arch import CheckpointError, GPT2Model
from arch.checkpoint import load_model_weights
from common.dtypes import DTYPES

from .config import GenerationConfig


def load_generation_model(config: GenerationConfig, vocab_size: int) -> GPT2Model:
    """The GPT (this process's slice of it under model parallelism) in eval mode on
    config.device in config.dtype, weights from config.load's mp_rank_XX file (strict).

    Built on the meta device first, so a 4B-parameter model is not randomly
    initialised just to be overwritten.
    """
    if not config.load:
        raise CheckpointError("no checkpoint: pass --load (e.g. pretrained/cogview/cogview-base)")
    with torch.device("meta"):
        model = GPT2Model.from_config(config.gpt2_config(vocab_size))
    model = model.to_empty(device=config.device).to(DTYPES[config.dtype])
    load_model_weights(model, config.load, trust=config.trust_checkpoint, mp_rank=config.model_parallel_rank)
    return model.eval()
