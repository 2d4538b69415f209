"""The GPT as training builds it: no memories, and the aligned super-resolution position table."""

from __future__ import annotations

from dataclasses import replace

import torch

from arch import GPT2Config, GPT2Model


def get_model(args) -> GPT2Model:
    """GPT2Model as the original builds it (positions = --max-position-embeddings).

    Training never feeds memories, so the model is built without them.
    """
    config = replace(GPT2Config.from_args(args, args.vocab_size), max_memory_length=0)
    return GPT2Model.from_config(config)


def init_position_table(model: GPT2Model, tokenizer, args) -> None:
    """--magnify-position-init: aligned rows for the low-res window and high-res block codes
    (arch/magnify_positions.py); the same table for every seed (generator seed 0). Loading a
    checkpoint afterwards replaces it, except a --finetune one whose table has another size."""
    from arch.magnify_positions import init_magnify_positions
    from data_utils.datasets import uses_roi2_positions
    from generation.magnify import sr_window

    if uses_roi2_positions(args):
        raise ValueError(
            "--magnify-position-init needs positions that count on through the row: "
            "drop --roi2-positions/--max-position-embeddings-finetune and give "
            "--max-position-embeddings the whole row length"
        )
    window, _ = sr_window(tokenizer.code_grid_side(args.img_size))
    table = model.transformer.position_embeddings.weight
    init_magnify_positions(table.data, args.sr_text_length, window, generator=torch.Generator().manual_seed(0))
