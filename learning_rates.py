"""AnnealingLR: the original's learning-rate curve, without two of its quirks.

The curve is the original's (``learning_rates.py`` of CogView/Megatron): linear
warm-up over ``warmup_iter`` steps, then linear, cosine, exponential (= constant)
or constant.  Two values are changed on purpose:

* the original's first optimizer step runs at lr 0 (warm-up starts at n = 0);
  here step 0 uses the lr of step 1, so no step is wasted;
* the original's linear decay goes negative past ``end_iter + warmup_iter``;
  here it stops at 0.

Everywhere else the values equal the original's (checked against
``../shared/fixtures/original/misc/lr_schedule.json``).
"""

from __future__ import annotations

import math
from typing import Optional

DECAY_STYLES = ("linear", "cosine", "exponential", "constant")


class AnnealingLR:
    """Sets ``lr`` of every optimizer param group; ``step()`` after each optimizer step."""

    DECAY_STYLES = DECAY_STYLES

    def __init__(
        self,
        optimizer,
        start_lr: float,
        warmup_iter: float,
        num_iters: int,
        decay_style: Optional[str] = None,
        last_iter: int = -1,
        decay_ratio: float = 0.5,
    ):
        if decay_style is not None and decay_style.lower() not in DECAY_STYLES:
            raise ValueError(f"unknown lr decay style {decay_style!r}; choose one of {', '.join(DECAY_STYLES)}")
        if decay_ratio <= 0:
            raise ValueError(f"--lr-decay-ratio must be > 0, got {decay_ratio}")
        self.optimizer = optimizer
        self.start_lr = float(start_lr)
        self.warmup_iter = warmup_iter
        self.num_iters = last_iter + 1
        self.end_iter = max(1, int(num_iters))
        self.decay_style = decay_style.lower() if decay_style is not None else None
        self.decay_ratio = 1 / decay_ratio  # stored inverted, as the original does
        self.step(self.num_iters)

    def get_lr(self) -> float:
        """lr for the optimizer step that follows ``num_iters`` completed steps."""
        n = self.num_iters
        if self.warmup_iter > 0 and n <= self.warmup_iter:
            # the original gives start*n/warmup, i.e. 0 at n = 0; use step 1's value there
            return self.start_lr * min(1.0, max(n, 1) / self.warmup_iter)
        if self.decay_style == "linear":
            remaining = self.end_iter - (n - self.warmup_iter)
            return max(0.0, self.start_lr * remaining / self.end_iter)
        if self.decay_style == "cosine":
            ratio = min(1.0, (n - self.warmup_iter) / self.end_iter)
            d = self.decay_ratio
            return self.start_lr / d * ((math.cos(math.pi * ratio) + 1) * (d - 1) / 2 + 1)
        return self.start_lr  # exponential (never implemented by the original) and constant

    def step(self, step_num: Optional[int] = None) -> None:
        if step_num is None:
            step_num = self.num_iters + 1
        self.num_iters = step_num
        new_lr = self.get_lr()
        for group in self.optimizer.param_groups:
            group["lr"] = new_lr

    def state_dict(self) -> dict:
        return {
            "warmup_iter": self.warmup_iter,
            "num_iters": self.num_iters,
            "decay_style": self.decay_style,
            "end_iter": self.end_iter,
            "decay_ratio": self.decay_ratio,
        }

    def load_state_dict(self, sd: dict) -> None:
        """Restore the position; start_lr and end_iter keep the values of the command line."""
        self.warmup_iter = sd["warmup_iter"]
        self.num_iters = int(sd["num_iters"])
        self.decay_style = sd["decay_style"]
        self.decay_ratio = sd["decay_ratio"]
        self.step(self.num_iters)


def get_learning_rate_scheduler(optimizer, args) -> AnnealingLR:
    """AnnealingLR from --lr, --warmup, --lr-decay-iters/--train-iters, --lr-decay-style."""
    num_iters = args.lr_decay_iters if args.lr_decay_iters is not None else args.train_iters
    num_iters = max(1, num_iters)
    return AnnealingLR(
        optimizer,
        start_lr=args.lr,
        warmup_iter=args.warmup * num_iters,
        num_iters=num_iters,
        decay_style=args.lr_decay_style,
        last_iter=-1,
        decay_ratio=args.lr_decay_ratio,
    )
