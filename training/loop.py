"""The training loop shared by every back end, after the original pretrain_gpt2.py's train() and train_step().

One iteration = one micro-batch: forward, loss reduced over the data-parallel
ranks (a NaN/inf loss skips the step on every rank), backward, clipped optimizer
step, lr-scheduler step when the optimizer step was applied.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterator, List, Optional

import torch

from arch import mpu
from data_utils.datasets import uses_roi2_positions

from .distributed import all_reduce_mean
from .loss import Batch, forward_step, get_batch


class BatchStream:
    """Endless batches from a loader; ``position`` counts the batches taken (for resume)."""

    def __init__(self, loader, position: int = 0):
        self.loader = loader
        self.position = position
        self._it: Optional[Iterator] = None

    def _new_iterator(self) -> Iterator:
        # DataLoader draws a worker base seed from the global torch RNG; keep that RNG
        # untouched so a resumed run draws the same dropout masks as an uninterrupted one
        with torch.random.fork_rng(devices=[]):
            return iter(self.loader)

    def __next__(self):
        if self._it is None:
            self._it = self._new_iterator()
        try:
            item = next(self._it)
        except StopIteration:  # a new pass starts from the beginning
            self._it = self._new_iterator()
            item = next(self._it)
        self.position += 1
        return item


@dataclass
class TrainState:
    iteration: int = 0
    skipped_steps: int = 0
    losses: List[float] = field(default_factory=list)


class Trainer:
    """Holds what a step needs: back end, scheduler, batch settings, logger, save hook."""

    def __init__(self, args, backend, scheduler, tokenizer, logger, save_fn: Callable[[int, int, int], None]):
        self.args = args
        self.backend = backend
        self.scheduler = scheduler
        self.logger = logger
        self.save_fn = save_fn
        self.tokenizer = tokenizer
        self.num_image_tokens = tokenizer.num_image_tokens
        self.roi2_id = tokenizer["[ROI2]"] if uses_roi2_positions(args) else None
        self.dp_group = mpu.get_data_parallel_group()
        self.dp_world = mpu.get_data_parallel_world_size()

    def make_batch(self, data: dict) -> Batch:
        return get_batch(
            data["text"],
            data["loss_mask"],
            self.num_image_tokens,
            self.backend.device,
            self.backend.compute_dtype,
            self.roi2_id,
            self.args.max_position_embeddings,
        )

    def train_step(self, data: dict):
        """(loss, img_loss, txt_loss, tokens, skipped) for one micro-batch."""
        batch = self.make_batch(data)
        with self.backend.autocast():
            out, tokens = forward_step(self.backend.model, batch, self.args.txt_loss_scale, self.args.is_sparse)
        reduced = all_reduce_mean(
            torch.stack([out.loss.detach().float(), out.img_loss.float(), out.txt_loss.float()]), self.dp_group
        )
        loss, img_loss, txt_loss = (float(x) for x in reduced.cpu())
        if not math.isfinite(img_loss + txt_loss) or not math.isfinite(loss):
            return loss, img_loss, txt_loss, tokens * self.dp_world, True
        self.backend.backward(out.loss)
        applied = self.backend.step()
        if applied:
            self.scheduler.step()
        return loss, img_loss, txt_loss, tokens * self.dp_world, not applied

    def poll_new_data(self, stream: BatchStream) -> None:
        """--new-dataset-path: new *lmdb / *bin entries join --train-data; loaders are rebuilt."""
        from data_utils.configure_data import detect_new_datasets

        loaders = detect_new_datasets(self.args, self.tokenizer)
        if loaders is not None and loaders[0] is not None:
            self.logger.print(f" new training data found; now training on {self.args.train_data}")
            stream.loader = loaders[0]
            stream.loader.batch_sampler.gradient_accumulation_steps = 1  # positions count micro-batches
            stream._it = None

    @torch.no_grad()
    def evaluate(self, loader, max_iters: int) -> float:
        """Mean loss over up to ``max_iters`` batches from the start of ``loader``, dense attention."""
        self.backend.eval()
        total, n = 0.0, 0
        for i, data in enumerate(loader):
            if i >= max_iters:
                break
            batch = self.make_batch(data)
            with self.backend.autocast():
                out, _ = forward_step(self.backend.model, batch, self.args.txt_loss_scale, 0)
            total += float(all_reduce_mean(out.loss.detach().float().view(1), self.dp_group))
            n += 1
        self.backend.train()
        return total / max(n, 1)

    def train(self, stream: BatchStream, state: TrainState, valid_loader=None) -> bool:
        """Run to --train-iters; False when --exit-interval stopped it early."""
        args = self.args
        self.backend.train()
        last_saved = state.iteration
        while state.iteration < args.train_iters:
            if args.new_dataset_path and state.iteration % 100 == 0:
                self.poll_new_data(stream)
            lr = self.backend.optimizer.param_groups[0]["lr"]
            loss, img_loss, txt_loss, tokens, skipped = self.train_step(next(stream))
            state.iteration += 1
            state.skipped_steps += int(skipped)
            state.losses.append(loss)
            self.logger.step(
                state.iteration,
                lr,
                loss,
                img_loss,
                txt_loss,
                tokens,
                skipped,
                state.skipped_steps,
                self.backend.loss_scale,
            )
            if args.save and args.save_interval and state.iteration % args.save_interval == 0:
                self.save_fn(state.iteration, stream.position, state.skipped_steps)
                last_saved = state.iteration
            if valid_loader is not None and args.eval_interval and state.iteration % args.eval_interval == 0:
                self.logger.validation(state.iteration, self.evaluate(valid_loader, args.eval_iters))
            if args.exit_interval and state.iteration % args.exit_interval == 0:
                self.logger.print(f" exiting at iteration {state.iteration} (--exit-interval)")
                return False
        if args.save and state.iteration != 0 and state.iteration != last_saved:
            self.save_fn(state.iteration, stream.position, state.skipped_steps)
        return True
