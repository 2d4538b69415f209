"""Training checkpoints in the layout the original's generate_samples.py loads.

``<save>/<iter>/mp_rank_XX_model_states.pt`` holds ``module`` (the bare GPT2Model
state dict) beside the optimizer, lr scheduler, RNG and data-position state and
the model-shape flags; ``<save>/latest_checkpointed_iteration.txt`` is written
last (after a barrier), so a crash mid-save leaves the previous checkpoint in
force.  RNG states are stored as tensors, so the files load with
``torch.load(weights_only=True)``.  With DeepSpeed the engine writes the files
(plus its ZeRO shards) and our state goes in its ``client_state``.

A save that fails (a full disk, a folder that turned read-only) raises
CheckpointSaveError on every rank with one line saying which checkpoint is kept;
the atomic writes leave the previous files and tracker as they were.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import shutil
from typing import Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist

from arch import mpu
from arch.checkpoint import (
    TRACKER_FILENAME,
    CheckpointError,
    check_state_dict,
    load_full_checkpoint,
    read_tracker,
    resolve_checkpoint_file,
    save_checkpoint,
)
from arch.model_config import FLAG_KEYS, MODEL_CONFIG_FILENAME, PATH_KEYS, write_model_config
from common.fileio import remove_stale_temps, write_text_atomic

from .distributed import first_message

# flags that fix the shapes of the model's tensors (and how the files are split)
MODEL_SHAPE_FLAGS = (
    "num_layers",
    "hidden_size",
    "num_attention_heads",
    "vocab_size",
    "max_position_embeddings",
    "model_parallel_size",
)


def _print0(message: str) -> None:
    if not dist.is_initialized() or dist.get_rank() == 0:
        print(message, flush=True)


def model_shape_args(args) -> dict:
    """The MODEL_SHAPE_FLAGS values, stored in each checkpoint to name a mismatch on loading."""
    return {name: int(getattr(args, name)) for name in MODEL_SHAPE_FLAGS}  # declared flags, looked up by name


def model_config_from_args(folder: str, args) -> dict:
    """What model_config.json records for a checkpoint saved in ``folder``: the flags
    generation needs to rebuild the model and its tokenizers, and how positions run after
    [ROI2].  Tokenizer paths are stored relative to ``folder``, so the folder can be moved
    together with its tokenizers."""
    from data_utils.datasets import uses_roi2_positions

    flags = vars(args)
    config = {key: flags[key] for key in FLAG_KEYS}
    # the multiple the vocabulary was padded to (times P under model parallelism), so that
    # generation builds the same rows at any --model-parallel-size
    config["make_vocab_size_divisible_by"] = int(args.make_vocab_size_divisible_by) * int(args.model_parallel_size)
    for key in PATH_KEYS:
        if config[key]:
            config[key] = os.path.relpath(os.path.abspath(config[key]), os.path.abspath(folder))
    config["roi2_position_restart"] = uses_roi2_positions(args)
    return config


def check_model_shape_args(stored: Optional[dict], args, source: str) -> None:
    """One-line CheckpointError naming the first flag that differs from the checkpoint's."""
    if not stored:
        return
    for name in (n for n in MODEL_SHAPE_FLAGS if n in stored):  # other keys are not flags
        value, current = stored[name], getattr(args, name)  # a declared flag, looked up by name
        if int(current) != int(value):
            flag = "--" + name.replace("_", "-")
            hint = {
                "vocab_size": " (the padded tokenizer size: check --img-tokenizer-num-tokens, "
                "--txt-tokenizer-path, --make-vocab-size-divisible-by)",
                "model_parallel_size": " (re-split the checkpoint with arch/change_mp.py)",
            }.get(name, "")
            raise CheckpointError(
                f"{source}: {flag} is {int(value)} in the checkpoint but {int(current)} on the command line{hint}"
            )


# ------------------------------------------------------------------------------ RNG state


def get_rng_state() -> dict:
    """python, numpy, torch (CPU, CUDA) and tracker RNG states, all as tensors."""
    version, internal, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "random_rng_state": {
            "version": torch.tensor(version),
            "state": torch.tensor(internal, dtype=torch.int64),
            "gauss": torch.tensor([] if gauss is None else [gauss], dtype=torch.float64),
        },
        "np_rng_state": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": torch.tensor(pos),
            "has_gauss": torch.tensor(has_gauss),
            "cached_gaussian": torch.tensor(cached, dtype=torch.float64),
        },
        "torch_rng_state": torch.get_rng_state(),
        "rng_tracker_states": mpu.get_rng_tracker().get_states(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda_rng_state"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    py = state["random_rng_state"]
    gauss = py["gauss"].tolist()
    random.setstate((int(py["version"]), tuple(int(x) for x in py["state"].tolist()), gauss[0] if gauss else None))
    npst = state["np_rng_state"]
    np.random.set_state(
        (
            "MT19937",
            npst["keys"].numpy().astype(np.uint32),
            int(npst["pos"]),
            int(npst["has_gauss"]),
            float(npst["cached_gaussian"]),
        )
    )
    torch.set_rng_state(state["torch_rng_state"])
    if "cuda_rng_state" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda_rng_state"])
    mpu.get_rng_tracker().set_states(state["rng_tracker_states"])


# --------------------------------------------------------------------------------- saving


class CheckpointSaveError(Exception):
    """A checkpoint that could not be written; the previous one stays in force."""


NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def checkpoint_bytes(module, args) -> int:
    """About how many bytes one checkpoint of this model-parallel rank takes: the weights,
    plus AdamW's two fp32 moments unless --no-save-optim."""
    weights = sum(p.numel() * p.element_size() for p in module.parameters())
    moments = 0 if args.no_save_optim else sum(p.numel() * 8 for p in module.parameters())
    return weights + moments


def _failure_reason(exc: BaseException, save_dir: str, needed: int) -> str:
    """Why a write failed, in a few words. torch.save reports a failed write as a
    RuntimeError without errno, so then the free space of the disk decides."""
    if isinstance(exc, OSError) and exc.errno in NO_SPACE_ERRNOS:
        return f"no space left on {save_dir}"
    if isinstance(exc, OSError):
        return f"cannot write in {save_dir} ({exc.strerror or exc})"
    try:
        free = shutil.disk_usage(save_dir).free
    except OSError:
        free = None
    if free is not None and free < needed:
        return f"no space left on {save_dir} ({free // 1024} KiB free, about {needed // 1024} KiB needed)"
    detail = (str(exc).splitlines() or [""])[0]
    return f"writing to {save_dir} failed ({type(exc).__name__}: {detail})"


def _kept(save_dir: str) -> str:
    try:
        tag, _ = read_tracker(save_dir)
    except Exception:  # noqa: BLE001 - an unreadable tracker keeps nothing we can name
        tag = None
    return f"the checkpoint of iteration {tag} is kept" if tag else "no earlier checkpoint exists there"


def training_state(args, data_position: int, skipped_steps: int) -> dict:
    """What a resume needs besides weights, optimizer and scheduler."""
    state = {
        "model_args": model_shape_args(args),
        "data_position": int(data_position),
        "skipped_steps": int(skipped_steps),
    }
    if not args.no_save_rng:
        state.update(get_rng_state())
    return state


def save_training_checkpoint(
    save_dir: str, iteration: int, backend, scheduler, args, data_position: int, skipped_steps: int = 0
) -> None:
    """Every rank calls this; files per model-parallel rank, tracker last by global rank 0.

    Raises CheckpointSaveError on every rank when any rank failed to write: the ranks agree
    (a collective in place of each barrier) so none waits for a rank that gave up.
    """
    state = training_state(args, data_position, skipped_steps)
    failure: Optional[str] = None
    try:
        os.makedirs(save_dir, exist_ok=True)
        _write_model_states(save_dir, iteration, backend, scheduler, args, state)
    except Exception as exc:  # noqa: BLE001 - any failed write: the previous checkpoint stays
        failure = _failure_reason(exc, save_dir, checkpoint_bytes(backend.module, args))
    failure = first_message(failure)
    rank0 = not dist.is_initialized() or dist.get_rank() == 0
    if failure is None and rank0:
        try:
            for name in (MODEL_CONFIG_FILENAME, TRACKER_FILENAME):  # temporaries of a save killed mid-write
                remove_stale_temps(save_dir, name)
            write_model_config(save_dir, model_config_from_args(save_dir, args))  # generation needs no shape flags
            write_text_atomic(os.path.join(save_dir, TRACKER_FILENAME), str(iteration))
        except OSError as exc:
            failure = _failure_reason(exc, save_dir, 1)
    failure = first_message(failure)
    if failure is not None:
        if rank0:
            with contextlib.suppress(OSError):  # the iteration's folder, when the failed save left it empty
                os.rmdir(os.path.join(save_dir, str(iteration)))
        raise CheckpointSaveError(f"checkpoint at iteration {iteration} not saved: {failure}; {_kept(save_dir)}")


def _write_model_states(save_dir: str, iteration: int, backend, scheduler, args, state: dict) -> None:
    if backend.name == "deepspeed":
        state.update(iteration=int(iteration), client_lr_scheduler=scheduler.state_dict())
        backend.engine.save_checkpoint(save_dir, tag=str(iteration), client_state=state, save_latest=False)
        if backend.engine.zero_optimization_stage() == 3:
            # ZeRO-3 files hold partitions only: add the gathered weights in the layout
            # generate_samples.py reads (collective call; rank 0 of each mp group writes)
            module_state = backend.engine._zero3_consolidated_16bit_state_dict()
            if mpu.get_data_parallel_rank() == 0:
                save_checkpoint(
                    save_dir,
                    iteration,
                    {k: v.cpu() for k, v in module_state.items()},
                    extra=state,
                    mp_rank=mpu.get_model_parallel_rank(),
                    write_tracker=False,
                )
    elif mpu.get_data_parallel_rank() == 0:
        state["lr_scheduler"] = scheduler.state_dict()
        if not args.no_save_optim:
            state.update(backend.optimizer_state())
        module_state = {k: v.detach().cpu() for k, v in backend.module.state_dict().items()}
        save_checkpoint(
            save_dir, iteration, module_state, extra=state, mp_rank=mpu.get_model_parallel_rank(), write_tracker=False
        )


# -------------------------------------------------------------------------------- loading

POSITION_TABLE = "transformer.position_embeddings.weight"


def _drop_other_position_table(ckpt: dict, module, source: str) -> bool:
    """--magnify-position-init from weights of another table size: keep every weight but the
    position table, whose rows meant other positions (the model keeps the aligned table the
    flag already set). True when the table was dropped."""
    own = module.state_dict().get(POSITION_TABLE)
    theirs = ckpt["module"].get(POSITION_TABLE)
    if own is None or theirs is None or tuple(theirs.shape) == tuple(own.shape):
        return False
    ckpt["module"] = {k: v for k, v in ckpt["module"].items() if k != POSITION_TABLE}
    if ckpt.get("model_args"):
        ckpt["model_args"] = {k: v for k, v in ckpt["model_args"].items() if k != "max_position_embeddings"}
    _print0(
        f"{source}: position table {tuple(theirs.shape)} not loaded (this model has {tuple(own.shape)}; "
        "--magnify-position-init sets it)"
    )
    return True


def _tracker_tag(folder: str) -> Optional[str]:
    try:
        return read_tracker(folder)[0]
    except (CheckpointError, OSError):
        return None


def check_empty_load_folder(load_dir: str, finetune: bool) -> None:
    """A --load folder without a tracker starts from scratch (the original's rule, which lets a
    job pass the same --load before and after its first checkpoint) only when it holds nothing
    else: the --save root or any other folder by mistake is refused in one line."""
    names = sorted(os.listdir(load_dir))
    runs = [n for n in names if os.path.isdir(os.path.join(load_dir, n)) and _tracker_tag(os.path.join(load_dir, n))]
    if runs:
        raise CheckpointError(
            f"--load {load_dir} holds no checkpoint itself, but its folders {', '.join(runs[:3])}"
            f"{' ...' if len(runs) > 3 else ''} do: pass one of them, e.g. --load {os.path.join(load_dir, runs[-1])}"
        )
    if finetune:
        raise CheckpointError(f"--load {load_dir}: no checkpoint ({TRACKER_FILENAME}) to take --finetune weights from")
    other = [n for n in names if not (n.startswith(".") or n.isdigit() or n in ("release", MODEL_CONFIG_FILENAME))]
    if other:
        raise CheckpointError(
            f"--load {load_dir} holds no checkpoint ({TRACKER_FILENAME}) but other files "
            f"({', '.join(other[:3])}{' ...' if len(other) > 3 else ''}): point --load at a run folder, "
            "or at an empty folder to start from scratch"
        )


def load_training_checkpoint(load_dir: str, backend, scheduler, args) -> Tuple[int, int, int]:
    """Restore what the flags ask for; returns (iteration, data_position, skipped_steps).

    A folder without tracker file starts from scratch (with a warning), as the original.
    """
    tag, release = read_tracker(load_dir) if os.path.isdir(load_dir) else (None, False)
    if tag is None:
        if os.path.isdir(load_dir):
            check_empty_load_folder(load_dir, args.finetune)
            _print0(f"WARNING: no {TRACKER_FILENAME} in {load_dir}; training starts from scratch")
            return 0, 0, 0
        raise CheckpointError(f"--load {load_dir}: no such checkpoint folder")
    mp_rank = mpu.get_model_parallel_rank()
    file = resolve_checkpoint_file(load_dir, mp_rank)
    ckpt = load_full_checkpoint(load_dir, trust=args.trust_checkpoint, mp_rank=mp_rank)
    weights_only = release or args.finetune
    new_table = weights_only and args.magnify_position_init and _drop_other_position_table(ckpt, backend.module, file)
    check_model_shape_args(ckpt.get("model_args"), args, file)
    if backend.name == "deepspeed":
        if new_table:
            raise CheckpointError(
                f"{file}: its position table has another size; with DeepSpeed, start from a "
                "checkpoint of this --max-position-embeddings (or train on the torch back end)"
            )
        if backend.engine.zero_optimization_stage() != 3:  # ZeRO-3 modules hold partitions
            check_state_dict(backend.module, ckpt["module"], file)
        backend.engine.load_checkpoint(
            load_dir,
            tag=tag,
            load_optimizer_states=not (weights_only or args.no_load_optim),
            load_lr_scheduler_states=False,
            load_module_only=weights_only,
        )
        sched_state = ckpt.get("client_lr_scheduler")
    else:
        state = {k: v for k, v in ckpt["module"].items()}
        param = next(backend.module.parameters())
        if new_table:  # dropped above: keep the model's own, set by --magnify-position-init
            state[POSITION_TABLE] = backend.module.state_dict()[POSITION_TABLE]
        check_state_dict(backend.module, state, file)
        backend.module.load_state_dict(
            {k: v.to(param.dtype) if v.is_floating_point() else v for k, v in state.items()}, strict=True
        )
        if not (weights_only or args.no_load_optim) and "optimizer" in ckpt:
            backend.load_optimizer_state(ckpt)
        sched_state = ckpt.get("lr_scheduler")
    if weights_only:
        _print0(f"loaded the weights of {file} (weights only: optimizer and iteration start afresh)")
        return 0, 0, 0
    if sched_state is not None and not args.no_load_optim:
        scheduler.load_state_dict(sched_state)
    if not args.no_load_rng and "torch_rng_state" in ckpt:
        set_rng_state(ckpt)
    iteration = int(ckpt.get("iteration", ckpt.get("total_iters", 0)))
    _print0(f"resuming from {file} at iteration {iteration}")
    return iteration, int(ckpt.get("data_position", iteration)), int(ckpt.get("skipped_steps", 0))
