"""Training datasets: LMDB rows (ours or the original's pickles) and compact .bin files.

Each dataset yields {'text': int64 [ml], 'loss_mask': int64 [ml]}: the row's token ids
padded with [PAD] (or cut) to ml, and 1 on the real tokens. Datasets hold no open file
handles in their pickled state, so they can be handed to DataLoader workers.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, Dict, List, Optional, Union

import numpy as np
from torch.utils.data import Dataset

from .lmdb_readers import reader_env
from .row_format import decode_row, is_encoded_row
from .safe_pickle import safe_loads
from .templates import TextCodeTemplate
from .unified_tokenizer import UnifiedTokenizer

logger = logging.getLogger(__name__)

DATASET_TYPES = ("TokenizedDataset", "TextCodeDataset", "CompactBinaryDataset")
CHECK_ROWS = 16  # rows read at start-up from each data file (first, last, evenly spaced)
REBUILD_FIX = "rebuild the file (preprocess_entry.py --overwrite) or leave it out of the data flags"
COMPACT_TEXT_LENGTH = 64
COMPACT_CODE_LENGTH = 1024


def load_row(data: bytes, source: str) -> Any:
    """Our pickle-free rows by their magic bytes, else an original row via safe_loads."""
    if is_encoded_row(data):
        return decode_row(data)
    return safe_loads(data, source=source)


class LMDBDataset(Dataset):
    """Rows "0".."length-1" of an LMDB folder, passed through ``process_fn``."""

    def __init__(self, path: str, process_fn: Optional[Callable[[Any], Any]] = None):
        self.path = str(path)
        self.process_fn = process_fn
        if not os.path.exists(self.path):
            raise FileNotFoundError(f"LMDB dataset not found: {self.path}")
        with reader_env(self.path).begin(write=False) as txn:
            raw = txn.get(b"length")
        if raw is None:
            raise ValueError(
                f"{self.path} has no 'length' key: not a CogView LMDB dataset (or its writer never committed)"
            )
        self.length = int(raw.decode("ascii"))

    def __len__(self) -> int:
        return self.length

    def raw_row(self, idx: int) -> Any:
        if not -self.length <= idx < self.length:
            raise IndexError(f"row {idx} out of range for {self.path} (length {self.length})")
        key = str(idx % self.length)
        with reader_env(self.path).begin(write=False) as txn:
            data = txn.get(key.encode("ascii"))
        if data is None:
            raise KeyError(f"{self.path}: row key {key!r} is missing (length says {self.length})")
        return load_row(data, source=f"LMDB {self.path} row key {key!r}")

    def __getitem__(self, idx: int) -> Any:
        row = self.raw_row(int(idx))
        return self.process_fn(row) if self.process_fn is not None else row


class BinaryDataset(Dataset):
    """Fixed-length rows of a raw binary file, memory-mapped (or preloaded)."""

    def __init__(
        self,
        path: str,
        process_fn: Optional[Callable[[np.ndarray], Any]] = None,
        length_per_sample: int = COMPACT_TEXT_LENGTH + COMPACT_CODE_LENGTH,
        dtype: Union[str, np.dtype] = "int32",
        preload: bool = False,
    ):
        self.path = str(path)
        self.process_fn = process_fn
        self.length_per_sample = int(length_per_sample)
        self.dtype = np.dtype(dtype)
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"binary dataset not found: {self.path}")
        nbytes = os.path.getsize(self.path)
        row_bytes = self.dtype.itemsize * self.length_per_sample
        self.length = nbytes // row_bytes
        if nbytes % row_bytes:
            logger.warning(
                "%s: %d trailing bytes do not fill a row of %d x %s; ignored",
                self.path,
                nbytes % row_bytes,
                self.length_per_sample,
                self.dtype,
            )
        if self.length == 0:
            raise ValueError(f"{self.path} holds no complete row of {self.length_per_sample} x {self.dtype}")
        self._bin = None
        self._pid = None
        if preload:
            self._bin = np.fromfile(self.path, dtype=self.dtype, count=self.length * self.length_per_sample).reshape(
                self.length, self.length_per_sample
            )
        self.preload = preload

    def _rows(self) -> np.ndarray:
        if self._bin is None or (not self.preload and self._pid != os.getpid()):
            self._bin = np.memmap(self.path, dtype=self.dtype, mode="r", shape=(self.length, self.length_per_sample))
            self._pid = os.getpid()
        return self._bin

    def __getstate__(self) -> Dict[str, Any]:
        state = dict(self.__dict__)
        if not self.preload:
            state["_bin"] = state["_pid"] = None
        return state

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Any:
        row = np.array(self._rows()[index])
        return self.process_fn(row) if self.process_fn is not None else row


def uses_roi2_positions(args) -> bool:
    """--finetune (or --roi2-positions) with a finetune length above the position table."""
    # readers of preprocessed rows pass a namespace holding max_position_embeddings alone
    # (tests/test_preprocess.py): the finetune flags then count as not given
    finetune_ml = getattr(args, "max_position_embeddings_finetune", -1)
    wanted = getattr(args, "finetune", False) or getattr(args, "roi2_positions", False)
    return bool(wanted and finetune_ml is not None and finetune_ml > int(args.max_position_embeddings))


def sequence_length(args) -> int:
    """ml: max_position_embeddings, or the finetune length under the [ROI2] position rule."""
    if uses_roi2_positions(args):
        return int(args.max_position_embeddings_finetune)
    return int(args.max_position_embeddings)


class RowProcessor:
    """Turns a stored row into the padded {'text', 'loss_mask'} training sample."""

    def __init__(self, dataset_type: str, tokenizer: UnifiedTokenizer, ml: int, source: str = ""):
        if dataset_type not in DATASET_TYPES:
            raise ValueError(f"unknown --dataset-type {dataset_type!r}; choose one of {', '.join(DATASET_TYPES)}")
        self.dataset_type = dataset_type
        self.tokenizer = tokenizer
        self.ml = int(ml)
        self.pad_id = tokenizer["[PAD]"]
        self.source = source
        self._warned = False

    def __call__(self, row: Any) -> Dict[str, np.ndarray]:
        if self.dataset_type == "TokenizedDataset":
            ids = np.asarray(row).reshape(-1)
        elif self.dataset_type == "TextCodeDataset":
            if not (isinstance(row, (tuple, list)) and len(row) == 2):
                raise ValueError(
                    f"{self.source}: a TextCodeDataset row must be (text, codes), got {type(row).__name__} "
                    "(is --dataset-type the file's?)"
                )
            ids = TextCodeTemplate(row[0], np.asarray(row[1]).reshape(-1), tokenizer=self.tokenizer)
        else:  # CompactBinaryDataset: 64 text ids (-1 padded), then 1024 codes
            row = np.asarray(row)
            text = row[:COMPACT_TEXT_LENGTH].astype(np.int64)
            code = row[COMPACT_TEXT_LENGTH:].astype(np.int64)
            ids = TextCodeTemplate(text[text > -1], code, tokenizer=self.tokenizer)
        return self.pad(np.asarray(ids, dtype=np.int64))

    def pad(self, ids: np.ndarray) -> Dict[str, np.ndarray]:
        n = len(ids)
        if n > self.ml:
            if not self._warned:
                logger.warning(
                    "%s: a sample of %d tokens is longer than %d and was "
                    "truncated (further truncations are not reported)",
                    self.source or "dataset",
                    n,
                    self.ml,
                )
                self._warned = True
            ids, n = ids[: self.ml], self.ml
        text = np.full(self.ml, self.pad_id, dtype=np.int64)
        text[:n] = ids
        loss_mask = np.zeros(self.ml, dtype=np.int64)
        loss_mask[:n] = 1
        return {"text": text, "loss_mask": loss_mask}


def get_dataset_by_type(dataset_type: str, path: str, tokenizer: UnifiedTokenizer, args) -> Dataset:
    """The dataset for one --train-data path, yielding padded training samples."""
    process_fn = RowProcessor(dataset_type, tokenizer, sequence_length(args), source=str(path))
    if dataset_type == "CompactBinaryDataset":
        return BinaryDataset(path, process_fn)
    return LMDBDataset(path, process_fn)


# ------------------------------------------------------------------------- checked rows


class DataError(ValueError):
    """A data file or row that training cannot use; the message names the file, the row
    and the fix, so a bad file is one line instead of a traceback after hours of work."""


def data_error_line(exc: BaseException) -> str:
    """The one-line message of a DataError, also when a DataLoader worker re-raised it
    with the worker's traceback folded into the message."""
    text = str(exc).strip()
    if "Traceback" in text:
        last = text.splitlines()[-1]
        text = last.split("DataError: ", 1)[-1]
    return " ".join(text.split())


def sample_rows(n: int, k: int = CHECK_ROWS) -> List[int]:
    """The rows read at start-up: ``k`` evenly spaced rows, the first and the last included."""
    if n <= 0:
        return []
    return sorted({int(i) for i in np.linspace(0, n - 1, min(n, k))})


def _describe(exc: BaseException, path: str) -> str:
    text = (str(exc).splitlines() or [""])[0]
    for prefix in (f"LMDB {path} ", f"{path}: ", path):
        text = text.replace(prefix, "")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class CheckedDataset(Dataset):
    """The samples of one data file, each checked on the way out: a row that cannot be read,
    or whose ids fall outside the vocabulary (data made with other tokenizers), raises
    DataError naming the file, the row and the fix; torch would otherwise fail later with
    an anonymous ``IndexError: index out of range in self`` inside the embedding."""

    def __init__(self, dataset: Dataset, path: str, tokenizer: UnifiedTokenizer):
        self.dataset = dataset
        self.path = str(path)
        self.vocab = len(tokenizer)
        self.vocab_parts = (
            f"{tokenizer.num_image_tokens} image + {tokenizer.num_text_tokens} text + "
            f"{tokenizer.num_command_tokens} command tokens"
        )

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, idx: int) -> Dict[str, np.ndarray]:
        idx = int(idx)
        try:
            sample = self.dataset[idx]
        except IndexError:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever a broken row raises, name its place
            raise DataError(
                f"{self.path} row {idx}: cannot be read ({_describe(exc, self.path)}); {REBUILD_FIX}"
            ) from None
        ids = sample["text"]
        low, high = int(ids.min()), int(ids.max())
        if low < 0 or high >= self.vocab:
            bad = low if low < 0 else high
            raise DataError(
                f"{self.path} row {idx}: token id {bad} is outside the vocabulary of {self.vocab} "
                f"({self.vocab_parts}): the data was made with other tokenizers; pass the "
                "--img-tokenizer-num-tokens / --img-tokenizer-path and --txt-tokenizer-path it was "
                "made with, or rebuild it with these"
            )
        return sample

    def check(self) -> None:
        """Start-up check (cheap): rows present, ``length`` backed by stored rows, and a
        sample of rows that reads and fits the vocabulary."""
        n = len(self)
        if n == 0:
            report = os.path.normpath(self.path) + ".report.tsv"
            why = (
                f"preprocessing skipped every input (see {report})"
                if os.path.exists(report)
                else "its writer stored none"
            )
            raise DataError(f"{self.path}: the dataset holds no rows ({why}); rebuild it or leave it out")
        if isinstance(self.dataset, LMDBDataset):
            try:
                entries = int(reader_env(self.path).stat()["entries"])
            except Exception as exc:  # noqa: BLE001 - a damaged LMDB: report it in one line
                raise DataError(f"{self.path}: cannot be read ({_describe(exc, self.path)}); {REBUILD_FIX}") from None
            if entries < n + 1:  # the rows plus the length key
                raise DataError(
                    f"{self.path}: its 'length' key says {n} rows but it stores only {max(entries - 1, 0)}; "
                    f"{REBUILD_FIX}"
                )
        for idx in sample_rows(n):
            self[idx]
