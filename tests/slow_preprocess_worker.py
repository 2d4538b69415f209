"""Run preprocess_entry.py with a pause after every batch of rows, so a test can kill it mid-run.

    python tests/slow_preprocess_worker.py SECONDS [preprocess_entry.py arguments...]

Used by tests/test_preprocess.py, which SIGKILLs this process after its first commits and
checks that a rerun resumes without losing or duplicating rows.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import preprocess_entry  # noqa: E402
from preprocess import pipeline  # noqa: E402


def slowed(delay: float) -> None:
    """Make every ``_Writer.write_batch`` (encode, append, maybe commit) sleep ``delay`` s after."""
    write_batch = pipeline._Writer.write_batch

    def write_batch_then_sleep(self, batch):
        written = write_batch(self, batch)
        time.sleep(delay)
        return written

    pipeline._Writer.write_batch = write_batch_then_sleep


if __name__ == "__main__":
    slowed(float(sys.argv[1]))
    sys.exit(preprocess_entry.main(sys.argv[2:]))
