"""Build the GPT for generation from a GenerationConfig.

The checkpoint folder's ``model_config.json`` has already filled the model shape
into the config (generation/config.py), so the shipped models run without
NLAYERS/NHIDDEN/... on the command line.  The weights are loaded lean
(arch/lean_load.py): allocated once, in their final dtype (or int8), on their device.
"""

from __future__ import annotations

from typing import Optional

from arch import CheckpointError, GPT2Model
from arch.lean_load import build_meta_model, load_model_weights, model_bytes
from common.dtypes import DTYPES

from .config import GenerationConfig

GIB = 2**30


def check_weights_fit(config: GenerationConfig, weights: int, free: Optional[int]) -> None:
    """ValueError naming what the weights need and the smaller formats when ``free`` bytes
    (None: unknown) cannot hold them: better than the kernel killing the run mid-load."""
    if free is None or weights <= 0.9 * free:
        return
    options = []
    if config.dtype == "float32":
        options.append(f"--bf16 ({weights / 2 / GIB:.1f} GiB)")
    if config.quantize == "none":
        options.append("--quantize int8 (about half of --bf16)")
    hint = "use " + " or ".join(options) if options else "free memory or use a machine with more"
    raise ValueError(
        f"the weights of {config.load} need {weights / GIB:.1f} GiB in {config.dtype}"
        f"{' with int8 linear layers' if config.quantize == 'int8' else ''} and {free / GIB:.1f} GiB is free "
        f"on {config.device}: {hint}"
    )


def load_generation_model(config: GenerationConfig, vocab_size: int, free: Optional[int] = None) -> GPT2Model:
    """The GPT (this process's slice of it under model parallelism) in eval mode on
    config.device in config.dtype (linear layers int8 with ``--quantize int8``), weights
    from config.load (its mp_rank_XX file, or this slice of a safetensors file), strictly.
    ``free``: bytes the device can still allocate, checked against the weights before
    anything is allocated."""
    if not config.load:
        raise CheckpointError("no checkpoint: pass --load (e.g. pretrained/cogview/cogview-base)")
    model = build_meta_model(config.gpt2_config(vocab_size), DTYPES[config.dtype], config.quantize)
    check_weights_fit(config, model_bytes(model), free)
    model = model.to_empty(device=config.device)
    load_model_weights(model, config.load, trust=config.trust_checkpoint, mp_rank=config.model_parallel_rank)
    return model.eval()
