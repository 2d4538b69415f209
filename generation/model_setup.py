"""Build the tokenizer and the GPT for generation from the command line.

A checkpoint folder may hold ``model_config.json`` (written by our training):
its model-shape values fill every flag the user did not give, so the shipped
models run without NLAYERS/NHIDDEN/... on the command line.
"""
from __future__ import annotations

import json
import os
from typing import Iterable, Optional, Set

import torch

from arch import CheckpointError, GPT2Model, model_kwargs_from_args
from arch.checkpoint import load_model_weights

MODEL_CONFIG_FILENAME = "model_config.json"
CONFIG_KEYS = ("num_layers", "hidden_size", "num_attention_heads", "max_position_embeddings",
               "max_position_embeddings_finetune", "make_vocab_size_divisible_by", "img_size",
               "img_tokenizer_path", "txt_tokenizer_path", "query_window", "key_window_times", "num_pivot",
               "sr_text_length")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def explicit_dests(argv: Optional[Iterable[str]]) -> Set[str]:
    """Argument destinations given on the command line (not left at their defaults)."""
    import argparse

    from arguments import get_parser

    parser = get_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS  # unset flags then leave no attribute at all
    parsed, _ = parser.parse_known_args(list(argv) if argv is not None else None)
    return set(vars(parsed))


def apply_checkpoint_config(args, argv: Optional[Iterable[str]] = None) -> Optional[str]:
    """Fill unset model flags from ``<load>/model_config.json``; returns its path if used.

    Relative tokenizer paths in the file are relative to the file's folder.
    """
    if not args.load:
        return None
    path = os.path.join(args.load, MODEL_CONFIG_FILENAME)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            config = json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: unreadable model config ({exc})") from None
    given = explicit_dests(argv)
    for key in CONFIG_KEYS:
        if key in config and key not in given:
            value = config[key]
            if key.endswith("_path") and value and not os.path.isabs(value):
                value = os.path.normpath(os.path.join(args.load, value))
            setattr(args, key, value)
    # --guidance-scale per task as measured for this checkpoint, e.g. {"image2text": 0.5}
    guidance = config.get("guidance_scale")
    if isinstance(guidance, dict) and "guidance_scale" not in given:
        args.task_guidance_scale = {str(k): float(v) for k, v in guidance.items()}
    # --guidance-top-k per task, e.g. {"text2image": 2}
    guidance_top_k = config.get("guidance_top_k")
    if isinstance(guidance_top_k, dict) and "guidance_top_k" not in given:
        args.task_guidance_top_k = {str(k): int(v) for k, v in guidance_top_k.items()}
    if "caption_rerank" in config and "caption_rerank" not in given:
        args.caption_rerank = bool(config["caption_rerank"])
    if "caption_rerank_weight" in config and "caption_rerank_weight" not in given:
        args.caption_rerank_weight = float(config["caption_rerank_weight"])
    if "roi2_position_restart" in config and "roi2_position_restart" not in given:
        args.roi2_position_restart = bool(config["roi2_position_restart"])
    return path


def write_model_config(folder: str, args) -> str:
    """Record the model-shape flags and tokenizer paths next to a checkpoint (atomically).

    Tokenizer paths are stored relative to ``folder`` when they lie inside the
    same tree, else absolute, so the folder can be moved with its tokenizers.
    """
    from arch.checkpoint import write_text_atomic

    config = {}
    for key in CONFIG_KEYS:
        value = getattr(args, key, None)
        if key.endswith("_path") and value:
            value = os.path.relpath(os.path.abspath(value), os.path.abspath(folder))
        config[key] = value
    # how training numbered positions after [ROI2], so generation does the same
    from data_utils.datasets import uses_roi2_positions
    config["roi2_position_restart"] = uses_roi2_positions(args)
    path = os.path.join(folder, MODEL_CONFIG_FILENAME)
    write_text_atomic(path, json.dumps(config, indent=1) + "\n")
    return path


def load_generation_model(args, vocab_size: int) -> GPT2Model:
    """The GPT in eval mode on args.device in args.dtype, weights from --load (strict).

    Built on the meta device first, so a 4B-parameter model is not randomly
    initialised just to be overwritten.
    """
    if not args.load:
        raise CheckpointError("no checkpoint: pass --load (e.g. pretrained/cogview/cogview-base)")
    kwargs = model_kwargs_from_args(args, vocab_size)
    kwargs["max_memory_length"] = max(kwargs["max_memory_length"], 0)
    with torch.device("meta"):
        model = GPT2Model(**kwargs)
    model = model.to_empty(device=args.device).to(DTYPES[args.dtype])
    load_model_weights(model, args.load, trust=getattr(args, "trust_checkpoint", False))
    return model.eval()
