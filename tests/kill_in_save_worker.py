"""Train with pretrain_gpt2, but SIGKILL this process half-way through writing the
checkpoint number $KILL_AT_SAVE (1-based): the bytes written so far stay on disk.

Used by tests/test_training_resume.py to check that a kill during a save leaves the
previous checkpoint in force.
"""

from __future__ import annotations

import io
import os
import signal
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pretrain_gpt2  # noqa: E402

_real_save = torch.save
_saves = {"n": 0}


def dying_save(obj, f, *args, **kwargs):
    if isinstance(f, (str, os.PathLike)) and str(f).endswith(".pt"):
        _saves["n"] += 1
        if _saves["n"] == int(os.environ["KILL_AT_SAVE"]):
            buffer = io.BytesIO()
            _real_save(obj, buffer, *args, **kwargs)
            with open(f, "wb") as out:  # half of the file, flushed, then killed
                out.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
                out.flush()
                os.fsync(out.fileno())
            os.kill(os.getpid(), signal.SIGKILL)
    return _real_save(obj, f, *args, **kwargs)


if __name__ == "__main__":
    torch.save = dying_save
    sys.exit(pretrain_gpt2.main(sys.argv[1:]))
