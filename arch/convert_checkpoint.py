"""Convert a checkpoint of the original layout to safetensors, the inference format.

    python -m arch.convert_checkpoint SRC DST [--dtype bfloat16] [--trust-checkpoint]

SRC: a GPT checkpoint folder (any model-parallel size: the ranks are merged) or any
``.pt`` file holding a state dict (a VQ-VAE too).  DST: a folder, which receives
``model.safetensors`` and SRC's ``model_config.json`` (tokenizer paths rewritten to
stay valid from DST), or a file name ending in ``.safetensors``.  A stored ``config``
dict (VQ-VAE checkpoints) goes into the file's metadata.

safetensors files hold tensors and a JSON header only: loading one runs no pickle, so
``--trust-checkpoint`` is never needed for it, and it is memory-mapped (arch/lean_load.py).
The original layout stays the training format (optimizer and RNG states live there).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Dict, Optional, Tuple

from common.dtypes import DTYPES
from common.fileio import save_safetensors_atomic

from .checkpoint import (
    CheckpointError,
    StateDict,
    extract_module_state,
    file_kind,
    merge_model_parallel_states,
    model_states_filename,
    resolve_checkpoint_file,
    torch_load_checkpoint,
)
from .lean_load import SAFETENSORS_FILENAME, SAFETENSORS_SUFFIX
from .model_config import copy_model_config, read_model_config

CONFIG_METADATA_KEY = "config"  # safetensors metadata entry holding a stored config dict as JSON


def _load_file(file: str, trust: bool) -> Tuple[StateDict, Optional[dict]]:
    """(state dict, stored ``config`` dict or None) of one checkpoint file, memory-mapped."""
    obj = torch_load_checkpoint(file, trust, mmap=file_kind(file) == "zip")
    config = obj.get("config") if isinstance(obj, dict) and isinstance(obj.get("config"), dict) else None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    return extract_module_state(obj, file), config


def read_source(src: str, trust: bool = False) -> Tuple[StateDict, Optional[dict], Optional[str]]:
    """(whole-model state, stored config, folder of its model_config.json or None) of SRC."""
    file = resolve_checkpoint_file(src)
    folder = os.path.dirname(file)
    ranks = []
    while os.path.isfile(os.path.join(folder, model_states_filename(len(ranks)))):
        ranks.append(os.path.join(folder, model_states_filename(len(ranks))))
    if len(ranks) > 1 and os.path.basename(file) == model_states_filename(0):
        state = merge_model_parallel_states([_load_file(f, trust)[0] for f in ranks])
        config = None
    else:
        state, config = _load_file(file, trust)
    config_folder = None
    for candidate in (src, folder, os.path.dirname(folder)):
        if os.path.isdir(candidate) and read_model_config(candidate) is not None:
            config_folder = candidate
            break
    return state, config, config_folder


def convert_checkpoint(src: str, dst: str, dtype: Optional[str] = None, trust: bool = False) -> str:
    """Write SRC as safetensors at DST (see module docstring); returns the file written."""
    state, config, config_folder = read_source(src, trust)
    if dtype is not None:
        state = {k: v.to(DTYPES[dtype]) if v.is_floating_point() else v for k, v in state.items()}
    state = {k: v.contiguous() for k, v in state.items()}
    metadata: Dict[str, str] = {"format": "pt"}
    if config is not None:
        metadata[CONFIG_METADATA_KEY] = json.dumps(config)
    if dst.endswith(SAFETENSORS_SUFFIX):
        os.makedirs(os.path.dirname(dst) or ".", exist_ok=True)
        file = dst
    else:
        os.makedirs(dst, exist_ok=True)
        file = os.path.join(dst, SAFETENSORS_FILENAME)
    save_safetensors_atomic(state, file, metadata)
    if config_folder is not None and not dst.endswith(SAFETENSORS_SUFFIX):
        copy_model_config(config_folder, dst)
    return file


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", help="checkpoint folder or .pt file to read")
    parser.add_argument(
        "dst", help="folder to write model.safetensors (+ model_config.json) to, or a .safetensors file"
    )
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="cast floating tensors (default: keep)")
    parser.add_argument(
        "--trust-checkpoint", action="store_true", help="allow full unpickling of SRC (trusted files only)"
    )
    args = parser.parse_args(argv)
    try:
        file = convert_checkpoint(args.src, args.dst, args.dtype, args.trust_checkpoint)
    except (CheckpointError, ValueError, OSError) as exc:
        print(f"convert_checkpoint: error: {exc}", file=sys.stderr)
        return 1
    size = os.path.getsize(file)
    flag = "--load" if not args.dst.endswith(SAFETENSORS_SUFFIX) else "--load or --img-tokenizer-path"
    print(f"wrote {file} ({size / 2**30:.2f} GiB); use it as {flag} {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
