"""Pretrain (or finetune) the CogView GPT: ``python pretrain_gpt2.py <flags of the original>``.

The loss and batch construction live in ``training.loss`` (compute_loss, get_batch).
One loop, three back ends: a single process (CPU or GPU), torch DDP when launched
with torchrun / several processes, and DeepSpeed with ``--deepspeed
--deepspeed_config <json>``.  See docs/training.md for commands.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from typing import List, Optional

import torch.distributed as dist

from arch import CheckpointError, mpu
from arguments import get_args
from learning_rates import get_learning_rate_scheduler
from training.backends import make_backend
from training.checkpointing import (
    CheckpointSaveError,
    checkpoint_bytes,
    load_training_checkpoint,
    save_training_checkpoint,
)
from training.distributed import (
    any_rank,
    end_distributed,
    first_message,
    init_distributed,
    set_random_seed,
    setup_device,
)
from training.logging import TrainLogger
from training.loop import BatchStream, PeerLost, Trainer, TrainingStopped, TrainState
from training.model import get_model, init_position_table
from training.preflight import (
    check_free_space,
    check_training_args,
    check_writable,
    claim_run_folder,
    remove_if_empty,
    remove_interrupted_saves,
    save_location_error,
)
from training.signals import StopOnSignal, signal_name

__all__ = ["get_model", "init_position_table", "run", "main"]


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def set_experiment_name(args) -> bool:
    """basename of --load, else name + %m-%d-%H-%M; --save gets it appended.

    Rank 0 claims the run folder (a ``-1``, ``-2``... suffix when the folder exists and is
    not the --load folder being resumed) and every rank takes its choice, so two runs never
    write into one folder. Returns True on the rank that created the folder.
    """
    created, error = False, None
    if args.load:
        name = os.path.basename(os.path.normpath(args.load))
    else:
        name = args.experiment_name + time.strftime("-%m-%d-%H-%M")
    if _rank() == 0 and args.save:
        try:
            name, created = claim_run_folder(args.save, name, args.load)
        except OSError as exc:
            error = save_location_error(args.save, os.path.join(args.save, name), exc)
    if dist.is_initialized():
        holder = [name, error]
        dist.broadcast_object_list(holder, src=0)
        name, error = holder
    if error:
        raise ValueError(error)
    args.experiment_name = name
    if args.save:
        args.save = os.path.join(args.save, name)
    return created


def check_save_location(args, save_root: str) -> None:
    """Every rank writes and removes a probe file in the run folder (agreed: one failing rank
    stops them all); rank 0 then removes what an interrupted save left there."""
    error = first_message(check_writable(save_root, args.save, _rank()))
    if error:
        raise ValueError(error)
    if _rank() == 0:
        removed = remove_interrupted_saves(args.save)
        if removed:
            print(f" removed {len(removed)} temporary file(s) of an interrupted save in {args.save}", flush=True)


def build_data(args):
    """Tokenizer, (train, valid, test) loaders and the padded vocabulary size."""
    from data_utils.configure_data import make_loaders
    from data_utils.unified_tokenizer import get_tokenizer, set_tokenizer

    if not args.train_data:
        raise ValueError("no --train-data given: pass LMDB folders or .bin files to train on")
    for path in list(args.train_data) + list(args.valid_data or []):
        if not os.path.exists(path):
            raise ValueError(f"--train-data/--valid-data {path}: no such file or folder")
    set_tokenizer(None)  # build from these flags, not a tokenizer left by an earlier caller
    tokenizer = get_tokenizer(args)
    loaders = make_loaders(args, tokenizer)
    args.vocab_size = tokenizer.padded_vocab_size(args.make_vocab_size_divisible_by, args.model_parallel_size)
    return tokenizer, loaders


@dataclass
class TrainResult:
    trainer: Trainer
    state: TrainState
    finished: bool


def run(argv: Optional[List[str]] = None) -> TrainResult:
    """Parse flags, set up, train; leaves torch.distributed initialised (the caller ends it)."""
    args = get_args(argv)
    check_training_args(args)
    if args.is_sparse == 2:
        raise ValueError("--is-sparse 2 is sparse inference; train with 0 (dense) or 1 (sparse)")
    if args.load and not os.path.isdir(args.load):  # before the run folder, which may be the --load folder
        raise CheckpointError(f"--load {args.load}: no such checkpoint folder")
    device = setup_device(args)
    init_distributed(args, device)
    save_root = args.save
    created = set_experiment_name(args)
    try:
        if args.save:
            check_save_location(args, save_root)
        return _train(args, device, save_root)
    except BaseException:
        if created:  # a run that stops before its first checkpoint leaves no empty folder
            remove_if_empty(args.save)
        raise


def _train(args, device, save_root: Optional[str]) -> TrainResult:
    set_random_seed(args.seed)
    tokenizer, (train_loader, valid_loader, test_loader) = build_data(args)
    model = get_model(args)
    if args.magnify_position_init:  # before the back end copies the weights; a resumed run loads its own
        init_position_table(model, tokenizer, args)
    backend = make_backend(model, args, device)
    if args.save:
        error = first_message(check_free_space(save_root, args.save, checkpoint_bytes(backend.module, args)))
        if error:
            raise ValueError(error)
    scheduler = get_learning_rate_scheduler(backend.optimizer, args)
    state, position = TrainState(), 0
    if args.load:
        state.iteration, position, state.skipped_steps = load_training_checkpoint(args.load, backend, scheduler, args)
    if state.iteration >= args.train_iters and valid_loader is None and test_loader is None:
        where = f"the checkpoint is at iteration {state.iteration}" if args.load else "nothing to train"
        raise ValueError(
            f"--train-iters {args.train_iters}: {where} and there is no validation or test data to evaluate; "
            "give the total number of iterations to train"
        )
    if not args.resume_dataloader:
        position = 0
    # BatchStream positions count micro-batches, so the sampler must skip that many batches
    if train_loader is not None:
        train_loader.batch_sampler.gradient_accumulation_steps = 1
        train_loader.batch_sampler.start_iter = position
    rank0 = _rank() == 0
    logger = TrainLogger(args, rank0, state.iteration)
    params = sum(p.numel() for p in backend.module.parameters())
    logger.print(
        f" experiment {args.experiment_name}: {params} parameters per model-parallel rank, "
        f"back end {backend.name}, device {device}, dtype {str(backend.dtype).replace('torch.', '')}, "
        f"world size {args.world_size}, model-parallel size {mpu.get_model_parallel_world_size()}, "
        f"starting at iteration {state.iteration}"
    )
    if args.save:
        logger.print(f" checkpoints go to {args.save}")

    def save(iteration: int, data_position: int, skipped: int) -> None:
        save_training_checkpoint(args.save, iteration, backend, scheduler, args, data_position, skipped)
        logger.print(f" saved checkpoint at iteration {iteration} to {args.save}")

    try:
        with StopOnSignal(announce=rank0) as stop:
            trainer = Trainer(args, backend, scheduler, tokenizer, logger, save, stop)
            finished = True
            if args.do_train:
                finished = trainer.train(BatchStream(train_loader, position), state, valid_loader)
        signum = any_rank([stop.signum], device)[0]  # after the last step: every rank skips the evaluation
        if signum:
            kept = f"the checkpoint of iteration {state.iteration} is in {args.save}" if args.save else "no --save"
            raise TrainingStopped(
                f"pretrain_gpt2.py: stopped by {signal_name(signum)} after the last iteration "
                f"{state.iteration}, before the final evaluation: {kept}",
                128 + signum,
            )
        if finished:
            if valid_loader is not None:
                logger.validation(state.iteration, trainer.evaluate(valid_loader, args.eval_iters))
            if test_loader is not None:
                logger.validation(state.iteration, trainer.evaluate(test_loader, args.eval_iters), prefix="test")
    finally:
        logger.close()
    return TrainResult(trainer, state, finished)


def main(argv: Optional[List[str]] = None) -> int:
    """Command-line entry: every error (bad flags, data or checkpoint, a failed save, a stop by
    a signal) is one line on stderr and a non-zero exit code."""
    every_rank_here = False  # a finished run or an agreed stop: every rank ends at the same point
    try:
        run(argv)
        every_rank_here = True
    except TrainingStopped as exc:  # raised by every rank with the same words: rank 0 says them,
        every_rank_here = not isinstance(exc, PeerLost)
        if _rank() == 0 or isinstance(exc, PeerLost):  # or every survivor of a lost rank
            print(exc, file=sys.stderr, flush=True)
        return exc.exit_code
    except CheckpointSaveError as exc:
        if _rank() == 0:
            print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    except (CheckpointError, ValueError, FileNotFoundError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("pretrain_gpt2.py: interrupted; the last checkpoint saved is kept", file=sys.stderr, flush=True)
        return 130
    finally:
        end_distributed(every_rank_here)
    return 0


if __name__ == "__main__":
    sys.exit(main())
