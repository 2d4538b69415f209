"""One shared read-only LMDB environment per folder and process.

py-lmdb refuses to open the same folder twice in a process, so datasets built twice
on one path (train and valid, rebuilt loaders, t2i repeats) share an environment.
Forked DataLoader workers reuse the inherited one (read-only, lock=False, as the
original did); spawned workers open their own. An open LMDBWriter shares its
environment here, so rows can be read back while a dataset is being written.
"""

from __future__ import annotations

import os
import threading
from typing import Dict, Optional

_ENVS: Dict[str, object] = {}
_LOCK = threading.Lock()


def _key(path: str) -> str:
    return os.path.realpath(path)


def reader_env(path: str):
    """The read-only environment of ``path`` (opened on first use)."""
    import lmdb

    key = _key(path)
    with _LOCK:
        env = _ENVS.get(key)
        if env is None:
            try:
                env = lmdb.open(path, max_readers=32, readonly=True, lock=False, readahead=False, meminit=False)
            except lmdb.Error as exc:
                raise IOError(f"cannot open LMDB dataset {path}: {exc}") from None
            _ENVS[key] = env
        return env


def share_env(path: str, env) -> None:
    """Let readers of ``path`` use ``env`` (an open writer's environment)."""
    with _LOCK:
        _ENVS[_key(path)] = env


def forget_env(path: str) -> None:
    """Drop ``path`` from the cache without closing its environment."""
    with _LOCK:
        _ENVS.pop(_key(path), None)


def close_reader(path: Optional[str] = None) -> None:
    """Close the shared environment of ``path`` (or all of them), e.g. before writing to
    it; datasets reopen it on their next read."""
    with _LOCK:
        keys = list(_ENVS) if path is None else [_key(path)]
        for key in keys:
            env = _ENVS.pop(key, None)
            if env is not None:
                env.close()
