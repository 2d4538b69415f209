"""Training logs: one line per --log-interval on stdout, TensorBoard scalars, a tqdm bar.

Only global rank 0 logs.  The bar appears when stdout is a terminal, so batch jobs
and tests get plain lines.
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import Optional


class TrainLogger:
    """Accumulates per-step values and reports their means every ``log_interval`` steps."""

    def __init__(self, args, enabled: bool, start_iteration: int):
        self.args = args
        self.enabled = enabled
        self.interval = max(1, int(args.log_interval))
        self.writer = None
        self.bar = None
        self._reset()
        self.last_time = time.time()
        if not enabled:
            return
        if args.summary_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            log_dir = os.path.join(args.summary_dir, "runs", args.experiment_name)
            self.writer = SummaryWriter(log_dir=log_dir, purge_step=start_iteration + 1)
        if sys.stdout.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=args.train_iters, initial=start_iteration, dynamic_ncols=True)

    def _reset(self) -> None:
        self.sums = {"loss": 0.0, "img_loss": 0.0, "txt_loss": 0.0}
        self.count = 0
        self.tokens = 0
        self.skipped = 0

    def print(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def step(
        self,
        iteration: int,
        lr: float,
        loss: float,
        img_loss: float,
        txt_loss: float,
        tokens: int,
        skipped: bool,
        total_skipped: int,
        loss_scale: Optional[float],
    ) -> None:
        if not self.enabled:
            return
        if not skipped:
            self.sums["loss"] += loss
            self.sums["img_loss"] += img_loss
            self.sums["txt_loss"] += txt_loss
            self.count += 1
        self.skipped += int(skipped)
        self.tokens += tokens
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
        if iteration % self.interval:
            return
        elapsed = max(time.time() - self.last_time, 1e-9)
        n = max(self.count, 1)
        means = {k: v / n for k, v in self.sums.items()} if self.count else {k: math.nan for k in self.sums}
        tokens_per_s = self.tokens / elapsed
        line = (
            f" iteration {iteration:8d}/{self.args.train_iters:8d} | elapsed time per iteration (ms): "
            f"{elapsed * 1000 / self.interval:.1f} | learning rate {lr:.6e} | lm loss {means['loss']:.8e} | "
            f"img loss {means['img_loss']:.6e} | txt loss {means['txt_loss']:.6e} | "
            f"tokens/s {tokens_per_s:.1f} | skipped {self.skipped} (total {total_skipped})"
        )
        if loss_scale is not None:
            line += f" | loss scale {loss_scale:.1f}"
        self.print(line)
        if self.writer is not None:
            for key, value in (
                ("lr", lr),
                ("train_loss", means["loss"]),
                ("img_loss", means["img_loss"]),
                ("txt_loss", means["txt_loss"]),
                ("tokens_per_s", tokens_per_s),
                ("skipped_steps", total_skipped),
                ("elapsed_time", elapsed),
            ):
                self.writer.add_scalar(f"Train/{key}", value, iteration)
            if loss_scale is not None:
                self.writer.add_scalar("Train/loss_scale", loss_scale, iteration)
        self._reset()
        self.last_time = time.time()

    def validation(self, iteration: int, loss: float, prefix: str = "validation") -> None:
        if not self.enabled:
            return
        ppl = math.exp(min(20.0, loss))
        self.print(f" {prefix} loss at iteration {iteration} | lm loss {loss:.6e} | lm ppl {ppl:.6e}")
        if self.writer is not None and prefix == "validation":
            self.writer.add_scalar("Train/valid_loss", loss, iteration)
            self.writer.add_scalar("Train/valid_ppl", ppl, iteration)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()
