"""The training loop shared by every back end, after the original pretrain_gpt2.py's train() and train_step().

One iteration = one micro-batch: forward, loss reduced over the data-parallel
ranks (a NaN/inf loss skips the step on every rank), backward, clipped optimizer
step, lr-scheduler step when the optimizer step was applied.

Before each step all ranks agree (one small all-reduce) whether to stop: a SIGTERM /
SIGINT arrived (training.signals) or a batch held a row that cannot be used
(data_utils.datasets.DataError). Either way every rank saves the checkpoint of the
last completed iteration, then the run ends with one line (TrainingStopped).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterator, List, Optional, Tuple

import torch

from arch import mpu
from data_utils.datasets import DataError, data_error_line, uses_roi2_positions

from .distributed import all_reduce_mean, any_rank, first_message, lost_peer_reason
from .loss import Batch, forward_step, get_batch
from .signals import StopOnSignal, signal_name


class TrainingStopped(Exception):
    """The loop stopped before --train-iters after saving what it could: the message is the
    run's last line, ``exit_code`` the process's (1 for bad data, 128 + signal number for a
    signal). Raised on every rank with the same message."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class PeerLost(TrainingStopped):
    """A collective failed because another rank is gone (a node or process of the job stopped):
    no rank can save, so each survivor says what is kept on disk. Exit code 1."""


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

    def __init__(
        self,
        args,
        backend,
        scheduler,
        tokenizer,
        logger,
        save_fn: Callable[[int, int, int], None],
        stop: Optional[StopOnSignal] = None,
    ):
        self.args = args
        self.stop = stop
        self.backend = backend
        self.scheduler = scheduler
        self.logger = logger
        self.save_fn = save_fn
        self.tokenizer = tokenizer
        self.num_image_tokens = tokenizer.num_image_tokens
        self.roi2_id = tokenizer["[ROI2]"] if uses_roi2_positions(args) else None
        self.dp_group = mpu.get_data_parallel_group()
        self.dp_world = mpu.get_data_parallel_world_size()
        self.last_saved = 0  # the iteration of the last checkpoint on disk, for PeerLost's message

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
        """Mean loss over up to ``max_iters`` batches from the start of ``loader``, dense attention.

        A row that cannot be used raises DataError on every rank (the flag travels with the loss)."""
        self.backend.eval()
        total, n = 0.0, 0
        it = iter(loader)
        for _ in range(max_iters):
            error = None
            try:
                data = next(it)
            except StopIteration:
                break
            except DataError as exc:
                data, error = None, data_error_line(exc)
            loss = torch.zeros((), device=self.backend.device)
            if data is not None:
                batch = self.make_batch(data)
                with self.backend.autocast():
                    out, _ = forward_step(self.backend.model, batch, self.args.txt_loss_scale, 0)
                loss = out.loss.detach().float()
            reduced = all_reduce_mean(
                torch.stack([loss.float(), torch.tensor(float(error is not None), device=loss.device)]), self.dp_group
            )
            if float(reduced[1]) > 0:
                self.backend.train()
                raise DataError(first_message(error) or "a validation row on another rank cannot be used")
            total += float(reduced[0])
            n += 1
        self.backend.train()
        return total / max(n, 1)

    def next_batch(self, stream: BatchStream, iteration: int) -> Tuple[Optional[dict], Optional[str]]:
        """(batch, None), or (None, one-line message) when the batch holds a row that cannot be used."""
        try:
            if self.args.new_dataset_path and iteration % 100 == 0:
                self.poll_new_data(stream)
            return next(stream), None
        except DataError as exc:
            return None, data_error_line(exc)

    def stop_requested(self, data_error: Optional[str]) -> Tuple[int, Optional[str]]:
        """(signal number or 0, data error message or None), the same on every rank."""
        signum = self.stop.signum if self.stop is not None else 0
        signum, bad = any_rank([signum, data_error is not None], self.backend.device)
        if bad:
            data_error = first_message(data_error) or "a training row on another rank cannot be used"
        return signum, (data_error if bad else None)

    def save_before_stop(self, state: TrainState, data_position: int, last_saved: int) -> str:
        """Save the last completed iteration (unless it is saved already); returns what is kept."""
        args = self.args
        if not args.save:
            return f"no --save given: the {state.iteration} iterations are not saved"
        if state.iteration == last_saved:
            if state.iteration == 0:
                return "nothing to save before the first step"
            return f"the checkpoint of iteration {state.iteration} is in {args.save}"
        self.save_fn(state.iteration, data_position, state.skipped_steps)
        return f"checkpoint of iteration {state.iteration} saved in {args.save} (resume: --load {args.save})"

    def train(self, stream: BatchStream, state: TrainState, valid_loader=None) -> bool:
        """Run to --train-iters; False when --exit-interval stopped it early; TrainingStopped
        (after a checkpoint) for a signal or a row that cannot be used; PeerLost when another
        rank is gone."""
        self.last_saved = state.iteration
        try:
            return self._train(stream, state, valid_loader)
        except Exception as exc:
            reason = lost_peer_reason(exc)
            if reason is None:
                raise
            args = self.args
            if args.save and self.last_saved:
                kept = f"the checkpoint of iteration {self.last_saved} is in {args.save} (resume: --load {args.save})"
            else:
                kept = "no checkpoint of this run was saved"
            raise PeerLost(
                f"error: lost the connection to another training process after iteration {state.iteration} "
                f"({reason}): a node or process of the job stopped; {kept}",
                1,
            ) from None

    def _train(self, stream: BatchStream, state: TrainState, valid_loader) -> bool:
        args = self.args
        self.backend.train()
        last_saved = state.iteration
        while state.iteration < args.train_iters:
            data, data_error = self.next_batch(stream, state.iteration)
            signum, data_error = self.stop_requested(data_error)
            if data_error or signum:
                # a batch taken but not trained on is not counted, so a resume takes it again
                position = stream.position - (1 if data is not None else 0)
                kept = self.save_before_stop(state, position, last_saved)
                if data_error:
                    raise TrainingStopped(f"error: {data_error}; stopped at iteration {state.iteration}: {kept}", 1)
                raise TrainingStopped(
                    f"pretrain_gpt2.py: stopped by {signal_name(signum)} at iteration {state.iteration}: {kept}",
                    128 + signum,
                )
            lr = self.backend.optimizer.param_groups[0]["lr"]
            loss, img_loss, txt_loss, tokens, skipped = self.train_step(data)
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
                last_saved = self.last_saved = state.iteration
            if valid_loader is not None and args.eval_interval and state.iteration % args.eval_interval == 0:
                try:
                    self.logger.validation(state.iteration, self.evaluate(valid_loader, args.eval_iters))
                except DataError as exc:
                    kept = self.save_before_stop(state, stream.position, last_saved)
                    raise TrainingStopped(
                        f"error: {data_error_line(exc)}; stopped at iteration {state.iteration}: {kept}", 1
                    ) from None
            if args.exit_interval and state.iteration % args.exit_interval == 0:
                self.logger.print(f" exiting at iteration {state.iteration} (--exit-interval)")
                return False
        if args.save and state.iteration != 0 and state.iteration != last_saved:
            self.save_fn(state.iteration, stream.position, state.skipped_steps)
        return True
