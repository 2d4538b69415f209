"""Reading and writing checkpoints in the original layouts.

Layouts read by ``load_checkpoint_state``:
  * DeepSpeed / CogView: ``<dir>/latest_checkpointed_iteration.txt`` (or DeepSpeed's
    ``latest``) naming ``<iter>``, then ``<dir>/<iter>/mp_rank_XX_model_states.pt`` with
    the model under ``module``; ``release`` is the folder ``release`` (utils.py) or ``0``
    (how generate_samples.py reads it);
  * a folder that directly holds ``mp_rank_XX_model_states.pt``;
  * a single ``.pt`` file: a dict with ``module`` (or ``model``) or a bare state dict.

Files are read with ``weights_only=True``.  Real DeepSpeed files also pickle
numpy/python RNG states, which that refuses; those need ``trust=True``
(``--trust-checkpoint``), an explicit choice because unpickling runs code.
Saving is atomic (common.fileio: temporary file, fsync, rename), and the tracker file is
written last, so a crash leaves the previous checkpoint in force.
"""

from __future__ import annotations

import os
import pickle
import re
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from common.fileio import remove_stale_temps, torch_save_atomic, write_text_atomic

from .mpu.layers import strided_rows
from .quantize import is_scale_key

TRACKER_FILENAME = "latest_checkpointed_iteration.txt"
DEEPSPEED_TAG_FILENAME = "latest"

StateDict = Dict[str, torch.Tensor]


class CheckpointError(Exception):
    """A checkpoint that cannot be used; the message names the file and the fix."""


def model_states_filename(mp_rank: int = 0) -> str:
    return f"mp_rank_{mp_rank:02d}_model_states.pt"


def read_tracker(directory: str) -> Tuple[Optional[str], bool]:
    """(tag, release) from the tracker (or DeepSpeed ``latest``) file; (None, False) if none."""
    for name in (TRACKER_FILENAME, DEEPSPEED_TAG_FILENAME):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            with open(path) as f:
                text = f.read().strip()
            if text == "release":
                return text, True
            if not text.isdigit():
                raise CheckpointError(f"{path}: expected an iteration number or 'release', got {text[:40]!r}")
            return text, False
    return None, False


def resolve_checkpoint_file(path: str, mp_rank: int = 0) -> str:
    """The model-states file that ``path`` (file or folder) stands for."""
    if os.path.isfile(path):
        return path
    if not os.path.isdir(path):
        raise CheckpointError(f"{path}: no such checkpoint file or folder (check --load)")
    name = model_states_filename(mp_rank)
    direct = os.path.join(path, name)
    if os.path.isfile(direct):
        return direct
    tag, release = read_tracker(path)
    if tag is None:
        what = "it is empty" if not os.listdir(path) else f"no {TRACKER_FILENAME}, 'latest' or {name}"
        raise CheckpointError(
            f"{path}: the folder holds no checkpoint ({what}): not a CogView checkpoint folder; "
            "point --load at the folder training saved to"
        )
    candidates = [tag, "0"] if release else [tag]
    for folder in candidates:
        file = os.path.join(path, folder, name)
        if os.path.isfile(file):
            return file
    raise CheckpointError(f"{path}: the tracker names '{tag}' but {os.path.join(path, tag, name)} is missing")


ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default format
PICKLE_PROTOCOL = 0x80  # first byte of a protocol-2+ pickle (torch's legacy format)
# globals a real checkpoint pickles (DeepSpeed's numpy / python RNG states, argparse args...)
EXPECTED_GLOBAL_MODULES = ("numpy", "torch", "collections", "_codecs", "argparse", "deepspeed")
_REFUSED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def file_kind(file: str) -> str:
    """ "zip", "pickle", "empty" or "other", from the first bytes: what torch.load could read."""
    with open(file, "rb") as f:
        head = f.read(4)
    if not head:
        return "empty"
    if head.startswith(ZIP_MAGIC):
        return "zip"
    return "pickle" if head[0] == PICKLE_PROTOCOL else "other"


def refused_global(message: str) -> Optional[str]:
    """The global (``module.name``) torch's safe loader refused, as its error message names it."""
    match = _REFUSED_GLOBAL.search(message)
    return match.group(1) if match else None


def _not_a_checkpoint(file: str, kind: str, exc: BaseException) -> CheckpointError:
    if kind == "empty":
        return CheckpointError(f"{file}: empty file (0 bytes), not a checkpoint; was it copied completely?")
    if kind == "other":
        return CheckpointError(
            f"{file}: not a checkpoint (not a zip/pickle file torch can read); "
            "point --load at a checkpoint folder or .pt file"
        )
    detail = " ".join(str(exc).split())[:200]
    return CheckpointError(
        f"{file}: not a readable checkpoint (truncated or corrupt?) "
        f"[{type(exc).__name__}{': ' + detail if detail else ''}]; "
        "point --load at a checkpoint folder or .pt file"
    )


def torch_load_checkpoint(file: str, trust: bool, mmap: bool = False):
    """torch.load with weights_only=True; ``trust`` allows full unpickling of a file the safe
    loader refuses for its pickled globals (never of one that is not a checkpoint at all).
    ``mmap`` maps the tensors' bytes instead of reading them (zip files only)."""
    try:
        kind = file_kind(file)
    except OSError as exc:
        raise CheckpointError(f"{file}: cannot read it ({exc.strerror or exc})") from None
    if kind in ("empty", "other"):
        raise _not_a_checkpoint(file, kind, ValueError())
    try:
        return torch.load(file, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        name = refused_global(str(exc))
        if name is None:  # the safe loader stopped on the file's structure, not on a global
            raise _not_a_checkpoint(file, kind, exc) from None
        if not trust:
            if name.split(".")[0] in EXPECTED_GLOBAL_MODULES:
                raise CheckpointError(
                    f"{file}: a checkpoint with pickled Python objects beyond tensors (the safe loader "
                    f"refused the global {name}, as in DeepSpeed's RNG states); if you trust this file, "
                    "add --trust-checkpoint (load_checkpoint_state(..., trust=True))"
                ) from None
            raise CheckpointError(
                f"{file}: a checkpoint with pickled Python objects that call {name}, refused by the safe "
                f"loader; model checkpoints have no use for {name}: do not pass --trust-checkpoint unless "
                "you know who made this file and why"
            ) from None
        first_error = exc
    except Exception as exc:  # noqa: BLE001 - whatever a broken file raises, report it in one line
        raise _not_a_checkpoint(file, kind, exc) from None
    try:
        return torch.load(file, map_location="cpu", weights_only=False, mmap=mmap)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file here
        raise CheckpointError(
            f"{file}: cannot be loaded ({exc}); safe loader said: {str(first_error).splitlines()[0]}"
        ) from None


def extract_module_state(obj, source: str) -> StateDict:
    """The model's state dict inside a loaded checkpoint object, ``module.`` prefixes removed."""
    if isinstance(obj, dict) and isinstance(obj.get("module"), dict):
        obj = obj["module"]
    elif isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not obj or not all(torch.is_tensor(v) for v in obj.values()):
        raise CheckpointError(f"{source}: no model state found (expected a 'module' entry or a state dict of tensors)")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return dict(obj)


def load_checkpoint_state(
    path: str, dtype: Optional[torch.dtype] = None, trust: bool = False, mp_rank: int = 0
) -> StateDict:
    """Load the model state dict of a checkpoint folder or file (see module docstring).

    Floating tensors are cast to ``dtype`` when given (released files are fp16).
    Raises CheckpointError with a one-line message naming the file.
    """
    file = resolve_checkpoint_file(path, mp_rank)
    state = extract_module_state(torch_load_checkpoint(file, trust), file)
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    return state


def load_full_checkpoint(path: str, trust: bool = False, mp_rank: int = 0) -> dict:
    """The whole checkpoint dict (module, optimizer, scheduler, RNG, iteration...).

    Zip files are memory-mapped: the tensors are copied once, into the model and optimizer,
    instead of being read into memory first."""
    file = resolve_checkpoint_file(path, mp_rank)
    obj = torch_load_checkpoint(file, trust, mmap=file_kind(file) == "zip")
    if not isinstance(obj, dict):
        raise CheckpointError(f"{file}: expected a checkpoint dict")
    return obj


def check_state_dict(model: nn.Module, state: StateDict, source: str) -> None:
    """Raise CheckpointError naming the first missing, unexpected or mis-shaped key.

    The per-row scales of an int8-quantised model are derived, never in a checkpoint."""
    expected = {k: v for k, v in model.state_dict().items() if not is_scale_key(k)}
    if state and not set(state) & set(expected):
        raise CheckpointError(
            f"{source}: holds no CogView GPT weights (none of its {len(state)} keys, e.g. {next(iter(state))}, "
            "is a key of the model): --load takes a GPT checkpoint (a VQ-VAE goes to --img-tokenizer-path)"
        )
    for key, value in expected.items():
        if key not in state:
            raise CheckpointError(
                f"{source}: key {key} {tuple(value.shape)} is missing from the "
                "checkpoint; do --num-layers/--hidden-size match it?"
            )
        if tuple(state[key].shape) != tuple(value.shape):
            raise CheckpointError(
                f"{source}: {key} has shape {tuple(state[key].shape)} in the "
                f"checkpoint but {tuple(value.shape)} in the model built from the "
                "flags (--num-layers, --hidden-size, --max-position-embeddings, "
                "vocabulary)"
            )
    for key, value in state.items():
        if key not in expected:
            raise CheckpointError(
                f"{source}: unexpected key {key} {tuple(value.shape)} in the checkpoint; do --num-layers etc. match it?"
            )


def save_checkpoint(
    save_dir: str,
    iteration,
    module_state: StateDict,
    extra: Optional[dict] = None,
    mp_rank: int = 0,
    write_tracker: bool = True,
) -> str:
    """Write ``<save_dir>/<iteration>/mp_rank_XX_model_states.pt`` then the tracker file.

    ``extra`` entries (optimizer, lr_scheduler, RNG states...) go beside ``module``.
    Returns the model-states file path.
    """
    tag = str(iteration)
    folder = os.path.join(save_dir, tag)
    os.makedirs(folder, exist_ok=True)
    payload = {"iteration": 0 if tag == "release" else int(tag), "module": module_state}
    payload.update(extra or {})
    name = model_states_filename(mp_rank)
    remove_stale_temps(folder, name)  # left by a writer killed mid-save; this rank owns the name
    file = os.path.join(folder, name)
    torch_save_atomic(payload, file)
    if write_tracker:
        remove_stale_temps(save_dir, TRACKER_FILENAME)
        write_text_atomic(os.path.join(save_dir, TRACKER_FILENAME), tag)
    return file


# ---------------------------------------------------------------- model parallel split / merge


def split_rule(key: str) -> Tuple[Optional[int], int]:
    """(dim to split or None if replicated, stride) for a GPT2Model key."""
    if key == "word_embeddings.weight":
        return 0, 1
    if key.endswith("attention.query_key_value.weight") or key.endswith("attention.query_key_value.bias"):
        return 0, 3
    if key.endswith("attention.dense.weight") or key.endswith("mlp.dense_4h_to_h.weight"):
        return 1, 1
    if key.endswith("mlp.dense_h_to_4h.weight") or key.endswith("mlp.dense_h_to_4h.bias"):
        return 0, 1
    return None, 1


def split_model_parallel_state(state: StateDict, model_parallel_size: int) -> List[StateDict]:
    """Cut a full state dict into the per-rank states of the original mpu layout."""
    parts: List[StateDict] = [dict() for _ in range(model_parallel_size)]
    for key, value in state.items():
        dim, stride = split_rule(key)
        for rank in range(model_parallel_size):
            if dim is None:
                parts[rank][key] = value.clone()
            elif dim == 0:
                parts[rank][key] = strided_rows(value, rank, model_parallel_size, stride).clone()
            else:
                parts[rank][key] = strided_rows(value.t(), rank, model_parallel_size, stride).t().contiguous()
    return parts


def merge_model_parallel_states(states: List[StateDict]) -> StateDict:
    """Inverse of ``split_model_parallel_state`` (qkv de-interleaved per Q/K/V)."""
    world = len(states)
    merged: StateDict = {}
    for key in states[0]:
        dim, stride = split_rule(key)
        if dim is None or world == 1:
            merged[key] = states[0][key].clone()
            continue
        slices = [s[key] if dim == 0 else s[key].t() for s in states]
        pieces = [torch.chunk(sl, stride, dim=0) for sl in slices]
        full = torch.cat([pieces[rank][i] for i in range(stride) for rank in range(world)], dim=0)
        merged[key] = full if dim == 0 else full.t().contiguous()
    return merged
