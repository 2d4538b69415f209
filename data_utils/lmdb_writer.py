"""Write CogView LMDB datasets (keys "0".."n-1" and "length") without pickle.

Rows are stored with row_format.encode_row. The ``length`` key is written after the
rows in every commit and counts only the contiguous prefix 0..n-1 written, so an
interrupted run leaves a readable dataset and a rerun can resume from ``count``.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Iterable, Set

import lmdb

from .lmdb_readers import close_reader, forget_env, share_env
from .row_format import encode_row

LENGTH_KEY = b"length"
DEFAULT_MAP_SIZE = 1 << 40  # virtual address space only; the file grows as needed


class LMDBWriter:
    """Append/put rows into an LMDB folder; commit (and write ``length``) periodically.

    with LMDBWriter(path) as w:          # resumes after the rows already stored
        for row in rows[w.count:]:
            w.append(row)

    Rows are buffered and written in one transaction per commit (every ``commit_every``
    rows, on commit() and on close); a full map is grown automatically.
    """

    def __init__(self, path: str, map_size: int = DEFAULT_MAP_SIZE, commit_every: int = 1000):
        self.path = str(path)
        os.makedirs(self.path, exist_ok=True)
        close_reader(self.path)  # py-lmdb allows one environment per folder and process
        self.env = lmdb.open(self.path, map_size=int(map_size), subdir=True, readonly=False, meminit=False)
        share_env(self.path, self.env)
        self.commit_every = max(1, int(commit_every))
        self._pending: Dict[int, bytes] = {}
        self._written_beyond: Set[int] = set()
        with self.env.begin() as txn:
            raw = txn.get(LENGTH_KEY)
        self._count = int(raw.decode("ascii")) if raw is not None else 0

    @property
    def count(self) -> int:
        """Rows 0..count-1 are stored (or pending): the next append index and the length
        the next commit writes."""
        return self._count

    def existing_keys(self) -> Set[int]:
        """Indices of every stored or pending row, contiguous or not."""
        keys = set(self._pending)
        with self.env.begin() as txn:
            for key in txn.cursor().iternext(keys=True, values=False):
                if key != LENGTH_KEY and key.isdigit():
                    keys.add(int(key))
        return keys

    # ---- writing ----------------------------------------------------------------------
    def put(self, index: int, row: Any) -> None:
        """Store ``row`` at key str(index), overwriting; rows may arrive out of order."""
        index = int(index)
        if index < 0:
            raise ValueError(f"row index must be >= 0, got {index}")
        self._pending[index] = encode_row(row)
        if index == self._count:
            self._count += 1
            while self._count in self._written_beyond:
                self._written_beyond.discard(self._count)
                self._count += 1
        elif index > self._count:
            self._written_beyond.add(index)
        if len(self._pending) >= self.commit_every:
            self.commit()

    def append(self, row: Any) -> int:
        """Store ``row`` at index ``count``; returns that index."""
        index = self._count
        self.put(index, row)
        return index

    def extend(self, rows: Iterable[Any]) -> None:
        for row in rows:
            self.append(row)

    def set_length(self, n: int) -> None:
        """Declare the dataset length (at most ``count``): later rows are ignored by readers
        and the next append goes to index n."""
        n = int(n)
        if not 0 <= n <= self._count:
            raise ValueError(f"length {n} must be within [0, {self._count}] (rows 0..n-1 must exist in {self.path})")
        self._count = n
        self._written_beyond = {i for i in self._written_beyond if i < n}

    def commit(self) -> None:
        """Write pending rows, then ``length``, in one transaction (grows a full map)."""
        while True:
            txn = self.env.begin(write=True)
            try:
                for index, data in sorted(self._pending.items()):
                    txn.put(str(index).encode("ascii"), data)
                txn.put(LENGTH_KEY, str(self._count).encode("ascii"))
            except lmdb.MapFullError:
                txn.abort()
                self.env.set_mapsize(self.env.info()["map_size"] * 2)
                continue
            except BaseException:
                txn.abort()
                raise
            txn.commit()
            break
        self._pending.clear()

    def close(self) -> None:
        self.commit()
        forget_env(self.path)
        self.env.close()

    def __enter__(self) -> "LMDBWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # commit even on error: finished rows stay readable and a rerun resumes from count
        self.close()


def write_rows(path: str, rows: Iterable[Any], map_size: int = DEFAULT_MAP_SIZE) -> int:
    """Append ``rows`` to the LMDB at ``path``; returns the final length."""
    with LMDBWriter(path, map_size=map_size) as writer:
        writer.extend(rows)
        return writer.count
