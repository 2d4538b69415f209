"""``python -m torch.distributed.run`` (torchrun) for the training scripts and model-parallel
generation, without the launcher's own traceback when a process fails or the job is stopped.

The processes already said what went wrong in one line; torchrun would add a Python
traceback of its own and a framed report. Here that becomes one line naming the rank and
its exit code, and the exit code is the failed process's (128 + N for a signal).
SIGTERM / SIGINT are passed on to the processes by torchrun itself, which waits for them
(training saves its checkpoint).
"""

from __future__ import annotations

import logging
import sys


def main(argv: list) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    kind = "generation" if any(a.endswith("generate_samples.py") for a in argv) else "training"
    # its "failed (exitcode: N)" / "Sending process closing signal" log lines say what the line below says
    logging.getLogger("torch.distributed.elastic.multiprocessing.api").setLevel(logging.CRITICAL)
    try:
        torchrun(argv)
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        code = failure.exitcode if failure.exitcode > 0 else 128 - failure.exitcode
        print(f"torchrun: {kind} process of rank {rank} exited with code {failure.exitcode}", file=sys.stderr)
        return code if code < 256 else 1
    except SignalException as exc:
        print(f"torchrun: ended by {exc.sigval.name} once the {kind} processes had stopped", file=sys.stderr)
        return 128 + int(exc.sigval)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
