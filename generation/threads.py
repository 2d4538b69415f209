"""How many CPU threads a decoding step runs on, chosen by timing steps.

A decoding step is a few dozen small matrix-vector products; with several threads
each one ends in a barrier where every thread waits for the slowest.  Beside another
busy process one of them is often descheduled, and every step waits for it: on two
cores the demo model's text2image went from 0.27 s per image on one thread to 2.77 s on
two.  On an idle machine more threads are faster for large models.  So the sampler
times a few steps on each candidate count, keeps the fastest, and times again every
``period`` steps, as the load of the machine changes.  An explicit ``--threads`` or
``OMP_NUM_THREADS`` fixes the count instead (generation.generator decides).
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Callable, Dict, List, Optional, Tuple, TypeVar

import torch

T = TypeVar("T")


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask, e.g. a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class StepThreads:
    """Runs decoding steps on the thread count that times fastest.

    Probing runs ``probe_steps`` steps on each candidate (every core and one, alternating,
    after one untimed warm-up step); the median decides; after ``period`` steps on the
    winner it probes again.
    """

    def __init__(
        self, max_threads: int, probe_steps: int = 3, period: int = 128, clock: Callable[[], float] = time.perf_counter
    ):
        self.clock = clock
        self.candidates: List[int] = sorted({max(1, max_threads), 1}, reverse=True)
        self.probe_steps = probe_steps
        self.period = period
        self._times: Dict[int, List[float]] = {n: [] for n in self.candidates}
        self._chosen: Optional[int] = None
        self._warm = False
        self._left = 0  # steps still to run on the chosen count before probing again
        self.history: List[int] = []  # the count chosen after each probe (for the bench and tests)

    def _next_count(self) -> Tuple[int, bool]:
        """(thread count of the next step, whether that step is a timed probe)."""
        if self._chosen is not None and self._left > 0:
            self._left -= 1
            return self._chosen, False
        if not self._warm:  # the first step pays for allocations and waking threads: not timed
            self._warm = True
            return self.candidates[0], False
        fewest = min(self.candidates, key=lambda n: len(self._times[n]))  # alternate: same conditions
        if len(self._times[fewest]) < self.probe_steps:
            return fewest, True
        medians = {n: statistics.median(times) for n, times in self._times.items()}
        self._chosen = min(self.candidates, key=lambda n: (medians[n], n))
        self.history.append(self._chosen)
        self._times = {n: [] for n in self.candidates}
        self._left = self.period - 1
        return self._chosen, False

    def run(self, step: Callable[[], T]) -> T:
        """``step()`` on the thread count of this step; a probe's time feeds the next choice."""
        if len(self.candidates) == 1:
            return step()
        n, probe = self._next_count()
        previous = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            start = self.clock()
            result = step()
            if probe:
                self._times[n].append(self.clock() - start)
        finally:
            torch.set_num_threads(previous)
        return result


def decoding_threads(device: str, threads: int) -> Optional[StepThreads]:
    """The StepThreads a run on ``device`` samples with, None when the count is fixed:
    ``threads`` > 0 (``--threads``, set here), ``OMP_NUM_THREADS`` (torch applied it), or
    a GPU (its kernels do not wait on CPU threads)."""
    if threads > 0:
        torch.set_num_threads(threads)
        return None
    if not device.startswith("cpu") or os.environ.get("OMP_NUM_THREADS"):
        return None
    return StepThreads(min(torch.get_num_threads(), usable_cores()))
