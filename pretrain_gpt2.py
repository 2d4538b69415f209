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
from training.checkpointing import load_training_checkpoint, save_training_checkpoint
from training.distributed import init_distributed, set_random_seed, setup_device
from training.logging import TrainLogger
from training.loop import BatchStream, Trainer, TrainState
from training.model import get_model, init_position_table

__all__ = ["get_model", "init_position_table", "run", "main"]


def set_experiment_name(args) -> None:
    """basename of --load, else name + %m-%d-%H-%M (agreed by all ranks); --save gets it appended."""
    if args.load:
        name = os.path.basename(os.path.normpath(args.load))
    else:
        name = args.experiment_name + time.strftime("-%m-%d-%H-%M")
    if dist.is_initialized():
        holder = [name]
        dist.broadcast_object_list(holder, src=0)
        name = holder[0]
    args.experiment_name = name
    if args.save:
        args.save = os.path.join(args.save, name)


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
    if args.is_sparse == 2:
        raise ValueError("--is-sparse 2 is sparse inference; train with 0 (dense) or 1 (sparse)")
    device = setup_device(args)
    init_distributed(args, device)
    set_experiment_name(args)
    set_random_seed(args.seed)
    tokenizer, (train_loader, valid_loader, test_loader) = build_data(args)
    model = get_model(args)
    if args.magnify_position_init:  # before the back end copies the weights; a resumed run loads its own
        init_position_table(model, tokenizer, args)
    backend = make_backend(model, args, device)
    scheduler = get_learning_rate_scheduler(backend.optimizer, args)
    state, position = TrainState(), 0
    if args.load:
        state.iteration, position, state.skipped_steps = load_training_checkpoint(args.load, backend, scheduler, args)
    if not args.resume_dataloader:
        position = 0
    # BatchStream positions count micro-batches, so the sampler must skip that many batches
    if train_loader is not None:
        train_loader.batch_sampler.gradient_accumulation_steps = 1
        train_loader.batch_sampler.start_iter = position
    rank0 = not dist.is_initialized() or dist.get_rank() == 0
    logger = TrainLogger(args, rank0, state.iteration)
    params = sum(p.numel() for p in backend.module.parameters())
    logger.print(
        f" experiment {args.experiment_name}: {params} parameters per model-parallel rank, "
        f"back end {backend.name}, device {device}, dtype {str(backend.dtype).replace('torch.', '')}, "
        f"world size {args.world_size}, model-parallel size {mpu.get_model_parallel_world_size()}, "
        f"starting at iteration {state.iteration}"
    )

    def save(iteration: int, data_position: int, skipped: int) -> None:
        save_training_checkpoint(args.save, iteration, backend, scheduler, args, data_position, skipped)
        logger.print(f" saved checkpoint at iteration {iteration} to {args.save}")

    trainer = Trainer(args, backend, scheduler, tokenizer, logger, save)
    finished = trainer.train(BatchStream(train_loader, position), state, valid_loader) if args.do_train else True
    if finished:
        if valid_loader is not None:
            logger.validation(state.iteration, trainer.evaluate(valid_loader, args.eval_iters))
        if test_loader is not None:
            logger.validation(state.iteration, trainer.evaluate(test_loader, args.eval_iters), prefix="test")
    logger.close()
    return TrainResult(trainer, state, finished)


def main(argv: Optional[List[str]] = None) -> int:
    """Command-line entry: errors (missing data, bad checkpoint) are one line and exit code 1."""
    try:
        run(argv)
    except (CheckpointError, ValueError, FileNotFoundError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
