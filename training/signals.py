"""SIGTERM and SIGINT stop training after the step in progress, with a checkpoint.

A scheduler that preempts a job (SLURM, Kubernetes, torchrun passing its own SIGTERM on)
and a user pressing Ctrl-C both mean "stop, but keep what was done": the first signal only
sets a flag, which the loop reads between steps (agreed by all ranks) before it saves and
exits. A second signal of either kind stops at once, for a save that takes too long.
"""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType
from typing import Dict, Optional

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class StopOnSignal:
    """Context manager: while active, SIGTERM / SIGINT set ``signum`` instead of ending the
    process. Outside the main thread (where Python cannot install handlers) it does nothing."""

    def __init__(self, announce: bool = True):
        self.signum = 0
        self.announce = announce
        self._previous: Dict[int, object] = {}

    def __enter__(self) -> "StopOnSignal":
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
        if self.signum:  # the second signal: stop at once, as without this handler
            self.__exit__()
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            os.kill(os.getpid(), signum)
            return
        self.signum = signum
        if self.announce:  # os.write: a handler may interrupt a print in progress
            os.write(
                2,
                f"received {signal_name(signum)}: stopping after the current step and saving a checkpoint "
                "(send it again to stop at once)\n".encode(),
            )
