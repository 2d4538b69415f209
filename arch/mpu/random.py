"""Model-parallel RNG and RNG-exact activation checkpointing.

Attention dropout acts on split heads, so it must differ between
model-parallel ranks, while every other dropout acts on replicated tensors and
must agree.  As in Megatron, a tracker holds a second RNG state (seeded with
seed + 2718 + model-parallel rank) that ``fork()`` swaps in; the checkpoint
function saves and restores the default CPU/CUDA states *and* the tracker
state, so the recomputed forward draws the same dropout masks.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Dict, Iterator, Optional

import torch

from .initialize import get_model_parallel_rank

_MODEL_PARALLEL_RNG = "model-parallel-rng"


def _get_state(device: torch.device) -> torch.Tensor:
    if device.type == "cuda":
        return torch.cuda.get_rng_state(device)
    return torch.get_rng_state()


def _set_state(state: torch.Tensor, device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    else:
        torch.set_rng_state(state)


class RNGStatesTracker:
    """Named RNG states, one per (name, device type), swapped in by ``fork``."""

    def __init__(self) -> None:
        self.states: Dict[str, Dict[str, torch.Tensor]] = {}

    def reset(self) -> None:
        self.states = {}

    def add(self, name: str, seed: int) -> None:
        saved = torch.get_rng_state()
        torch.manual_seed(seed)
        self.states[name] = {"cpu": torch.get_rng_state()}
        torch.set_rng_state(saved)
        if torch.cuda.is_available():
            saved_cuda = torch.cuda.get_rng_state()
            torch.cuda.manual_seed(seed)
            self.states[name]["cuda"] = torch.cuda.get_rng_state()
            torch.cuda.set_rng_state(saved_cuda)

    def get_states(self) -> Dict[str, Dict[str, torch.Tensor]]:
        return {k: {d: s.clone() for d, s in v.items()} for k, v in self.states.items()}

    def set_states(self, states: Dict[str, Dict[str, torch.Tensor]]) -> None:
        self.states = {k: {d: s.clone() for d, s in v.items()} for k, v in states.items()}

    @contextlib.contextmanager
    def fork(self, device: torch.device, name: str = _MODEL_PARALLEL_RNG) -> Iterator[None]:
        """Run the block with the named state; untracked names run unchanged."""
        kind = "cuda" if device.type == "cuda" else "cpu"
        if name not in self.states or kind not in self.states[name]:
            yield
            return
        saved = _get_state(device)
        _set_state(self.states[name][kind], device)
        try:
            yield
        finally:
            self.states[name][kind] = _get_state(device)
            _set_state(saved, device)


_TRACKER = RNGStatesTracker()


def get_rng_tracker() -> RNGStatesTracker:
    return _TRACKER


def model_parallel_manual_seed(seed: int) -> None:
    """Seed the default RNGs with ``seed`` and the tracker with seed + 2718 + mp rank."""
    torch.manual_seed(seed)
    _TRACKER.reset()
    _TRACKER.add(_MODEL_PARALLEL_RNG, seed + 2718 + get_model_parallel_rank())


class _CheckpointFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, run_function: Callable, device: torch.device, *args: Any):
        ctx.run_function = run_function
        ctx.device = device
        ctx.cpu_state = torch.get_rng_state()
        ctx.cuda_state = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
        ctx.tracker_states = _TRACKER.get_states()
        ctx.tensor_flags = [torch.is_tensor(a) for a in args]
        tensors = [a for a in args if torch.is_tensor(a)]
        ctx.others = [a for a in args if not torch.is_tensor(a)]
        ctx.save_for_backward(*tensors)
        with torch.no_grad():
            return run_function(*args)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor):
        tensors = iter(ctx.saved_tensors)
        others = iter(ctx.others)
        args = []
        for is_tensor in ctx.tensor_flags:
            if is_tensor:
                t = next(tensors)
                t = t.detach().requires_grad_(t.requires_grad)
                args.append(t)
            else:
                args.append(next(others))
        cpu_now = torch.get_rng_state()
        cuda_now = torch.cuda.get_rng_state(ctx.device) if ctx.cuda_state is not None else None
        tracker_now = _TRACKER.get_states()
        torch.set_rng_state(ctx.cpu_state)
        if ctx.cuda_state is not None:
            torch.cuda.set_rng_state(ctx.cuda_state, ctx.device)
        _TRACKER.set_states(ctx.tracker_states)
        try:
            with torch.enable_grad():
                outputs = ctx.run_function(*args)
        finally:
            torch.set_rng_state(cpu_now)
            if cuda_now is not None:
                torch.cuda.set_rng_state(cuda_now, ctx.device)
            _TRACKER.set_states(tracker_now)
        if torch.is_tensor(outputs):
            outputs = (outputs,)
        pairs = [(o, g) for o, g in zip(outputs, grads) if o.requires_grad and g is not None]
        torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])
        input_grads = [a.grad if torch.is_tensor(a) else None for a in args]
        return (None, None) + tuple(input_grads)


def checkpoint(function: Callable, *args: Any, device: Optional[torch.device] = None):
    """Recompute ``function(*args)`` in backward, with the RNG states of the forward."""
    if device is None:
        first = next((a for a in args if torch.is_tensor(a)), None)
        device = first.device if first is not None else torch.device("cpu")
    return _CheckpointFunction.apply(function, device, *args)
