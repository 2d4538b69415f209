"""``model_config.json``: what a checkpoint folder records beside its weights.

Training writes the model-shape flags, the tokenizer paths (relative to the
folder) and how positions run after [ROI2]; a release export may add
generation defaults per task.  Generation reads them back so a checkpoint runs
without its shape flags.  Every value is type-checked on reading and writing, so
a hand-edited file fails with one line naming the file and key instead of deep
inside torch.

    {"num_layers": 8, "hidden_size": 256, ..., "img_tokenizer_path": "../../vqvae/shapes_vqvae.pt",
     "roi2_position_restart": false, "guidance_scale": {"text2image": 0.8}, "caption_rerank": true}
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

from .checkpoint import CheckpointError, write_text_atomic

MODEL_CONFIG_FILENAME = "model_config.json"

# keys named after the command-line flags they record (arguments.py dests); a flag the
# user does not give takes the file's value
FLAG_KEYS = (
    "num_layers",
    "hidden_size",
    "num_attention_heads",
    "max_position_embeddings",
    "max_position_embeddings_finetune",
    "make_vocab_size_divisible_by",
    "img_size",
    "img_tokenizer_path",
    "txt_tokenizer_path",
    "query_window",
    "key_window_times",
    "num_pivot",
    "sr_text_length",
)
PATH_KEYS = ("img_tokenizer_path", "txt_tokenizer_path")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_path(value: Any) -> bool:
    return value is None or isinstance(value, str)


def _task_map(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: isinstance(value, dict) and all(isinstance(k, str) and check(v) for k, v in value.items())


# key -> (test, what the test wants, for the error message); keys not listed are kept unchecked
SCHEMA: Dict[str, Tuple[Callable[[Any], bool], str]] = {
    **{key: (_is_int, "an integer") for key in FLAG_KEYS if key not in PATH_KEYS},
    **{key: (_is_path, "a path string or null") for key in PATH_KEYS},
    "roi2_position_restart": (lambda v: isinstance(v, bool), "true or false"),
    "caption_rerank": (lambda v: isinstance(v, bool), "true or false"),
    "caption_rerank_weight": (_is_number, "a number"),
    "post_select": (lambda v: _is_int(v) and v >= 0, "a whole number >= 0"),
    "top_k": (lambda v: _is_int(v) and v >= 0, "a whole number >= 0"),
    "guidance_scale": (_task_map(_is_number), 'an object of task -> number, e.g. {"text2image": 0.8}'),
    "guidance_top_k": (
        _task_map(lambda v: _is_int(v) and v >= 0),
        'an object of task -> whole number >= 0, e.g. {"text2image": 2}',
    ),
}


def model_config_path(folder: str) -> str:
    """Where the folder's model_config.json lives."""
    return os.path.join(folder, MODEL_CONFIG_FILENAME)


def validate_model_config(config: Any, source: str) -> Dict[str, Any]:
    """``config`` itself when every known key has its type, else a one-line CheckpointError
    naming ``source`` and the first bad key."""
    if not isinstance(config, dict):
        raise CheckpointError(f"{source}: expected a JSON object, got {type(config).__name__}")
    for key, (check, wanted) in SCHEMA.items():
        if key in config and not check(config[key]):
            raise CheckpointError(f"{source}: {key} must be {wanted}, not {json.dumps(config[key])}")
    return config


def read_model_config(folder: str) -> Optional[Dict[str, Any]]:
    """The folder's model_config.json, type-checked; None when the folder has none.

    Paths are returned as stored (relative ones are relative to ``folder``: see resolve_path).
    """
    path = model_config_path(folder)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            config = json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: unreadable model config ({exc})") from None
    return validate_model_config(config, path)


def resolve_path(folder: str, value: Optional[str]) -> Optional[str]:
    """A tokenizer path read from ``folder``'s model_config.json, usable from the working directory."""
    if value and not os.path.isabs(value):
        return os.path.normpath(os.path.join(folder, value))
    return value


def write_model_config(folder: str, config: Mapping[str, Any]) -> str:
    """Type-check ``config`` and write it as the folder's model_config.json (atomically);
    returns the file's path."""
    path = model_config_path(folder)
    validate_model_config(dict(config), path)
    write_text_atomic(path, json.dumps(dict(config), indent=1) + "\n")
    return path


def copy_model_config(src: str, dst: str) -> None:
    """SRC's model_config.json into DST, relative tokenizer paths rewritten to name the same files."""
    config = read_model_config(src)
    if config is None:
        return
    for key in PATH_KEYS:
        value = config.get(key)
        if value and not os.path.isabs(value):
            config[key] = os.path.relpath(resolve_path(src, value), dst)
    write_model_config(dst, config)
