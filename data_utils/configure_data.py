"""Build the train/valid/test DataLoaders from --train-data / --split, as the original's configure_data.py does.

Data order is a fixed pseudo-random mapping (RandomMappingDataset), not a shuffle, so
a run is reproducible and can resume mid-epoch by skipping batches.
"""

from __future__ import annotations

import logging
import math
import os
import random
import signal
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, SequentialSampler

from .datasets import CheckedDataset, DataError, get_dataset_by_type
from .samplers import DistributedBatchSampler

logger = logging.getLogger(__name__)

RANDOM_MAPPING_SCALE = 200


class SplitDataset(Dataset):
    """The contiguous index range [start, end) of another dataset."""

    def __init__(self, ds: Dataset, split_range: Tuple[int, int]):
        self.wrapped_data = ds
        self.split_range = (int(split_range[0]), int(split_range[1]))

    def __len__(self) -> int:
        return self.split_range[1] - self.split_range[0]

    def __getitem__(self, index: int):
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} outside split of length {len(self)}")
        return self.wrapped_data[index + self.split_range[0]]


class RandomMappingDataset(Dataset):
    """``scale`` x longer view whose item i is a fixed pseudo-random underlying item.

    The mapping (seeded from i through random.Random and numpy's RandomState) is the
    original's, so the same data gives the same order.
    """

    def __init__(self, ds: Dataset, scale: int = RANDOM_MAPPING_SCALE):
        self.wrapped_data = ds
        self.scale = int(scale)

    def __len__(self) -> int:
        return len(self.wrapped_data) * self.scale

    @staticmethod
    def map_index(index: int, total: int) -> int:
        rng = random.Random(index)
        seed = [rng.randint(0, 2**32 - 1) for _ in range(16)]
        return int(np.random.RandomState(seed=seed).randint(total))

    def __getitem__(self, index: int):
        return self.wrapped_data[self.map_index(int(index), len(self.wrapped_data))]


def get_split(args) -> List[float]:
    """--split ("949,50,1", "8/2" or "0.9") -> three proportions summing to 1."""
    text = str(args.split)
    sep = "," if "," in text else ("/" if "/" in text else None)
    try:
        splits = [float(s) for s in (text.split(sep) if sep else [text])]
    except ValueError:
        raise ValueError(f"--split {text!r}: expected numbers separated by ',' or '/', e.g. 949,50,1") from None
    if len(splits) > 3:
        raise ValueError(f"--split {text!r}: at most three proportions (train, valid, test), e.g. 949,50,1")
    if any(not math.isfinite(s) for s in splits):
        raise ValueError(f"--split {text!r}: proportions must be finite numbers, e.g. 949,50,1")
    if any(s < 0 for s in splits):
        raise ValueError(f"--split {text!r}: proportions must be >= 0")
    total = sum(splits)
    if total < 1.0:
        splits.append(1.0 - total)
    splits = (splits + [0.0, 0.0])[:3]
    if args.valid_data is not None:
        splits[1] = 0.0
    if args.test_data is not None:
        splits[2] = 0.0
    final = sum(splits)
    if final <= 0:
        raise ValueError(f"--split {text!r} leaves no data for training")
    return [s / final for s in splits]


def should_split(split: Sequence[float]) -> bool:
    """True unless all the weight is on one part."""
    return max(split) / sum(split) != 1.0


def split_ds(ds: Dataset, split: Sequence[float]) -> List[Optional[SplitDataset]]:
    """Contiguous ranges in proportion to ``split`` (None for a zero part).

    Fractional remainders carry over to the next part; a non-zero part gets at least
    one item (the original's rule, so the ranges match it).
    """
    split = np.array(split, dtype=np.float64)
    if split.sum() == 0:
        raise ValueError("split proportions cannot sum to 0")
    split = split / split.sum()
    ds_len = len(ds)
    start, residual = 0, 0.0
    out: List[Optional[SplitDataset]] = [None] * len(split)
    for i, fraction in enumerate(split):
        if fraction == 0:
            continue
        proportion = ds_len * fraction
        residual += proportion % 1
        size = int(int(proportion) + residual)
        out[i] = SplitDataset(ds, (start, start + max(size, 1)))
        start += size
        residual %= 1
    return out


def checked_dataset(dataset_type: str, path: str, args, tokenizer) -> CheckedDataset:
    """The dataset of one data file, checked at start-up (rows present, a sample of rows
    readable and inside the vocabulary) so a bad file stops the run before any step."""
    ds = CheckedDataset(get_dataset_by_type(dataset_type, path, tokenizer, args), path, tokenizer)
    ds.check()
    return ds


def make_dataset(dataset_type: str, paths: Sequence[str], split: Optional[Sequence[float]], args, tokenizer):
    """Concatenate the paths (t2i x4, i2t x2), map them pseudo-randomly, then split."""
    if isinstance(paths, str):
        paths = [paths]
    parts = []
    for path in paths:
        ds = checked_dataset(dataset_type, path, args, tokenizer)
        repeat = 4 if "t2i" in path else (2 if "i2t" in path else 1)
        if repeat > 1:
            logger.info("enlarging %s %d times", path, repeat)
        parts.extend([ds] * repeat)
    ds = RandomMappingDataset(ConcatDataset(parts))
    split = [1.0] if split is None else split
    return split_ds(ds, split) if should_split(split) else ds


def _data_parallel() -> Tuple[int, int]:
    """(rank, world size) of this process's data-parallel group."""
    try:
        from arch import mpu

        return mpu.get_data_parallel_rank(), mpu.get_data_parallel_world_size()
    except ImportError:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1


def make_data_loader(
    dataset: Dataset, batch_size: int, args, rank: int = 0, world_size: int = 1, start_iter: int = 0
) -> DataLoader:
    """Sequential batches of ``batch_size`` (global), this rank's slice of each."""
    sampler = DistributedBatchSampler(
        SequentialSampler(dataset),
        batch_size,
        drop_last=world_size > 1,
        rank=rank,
        world_size=world_size,
        start_iter=start_iter,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
    )
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=args.num_workers,
        pin_memory=torch.cuda.is_available(),
        worker_init_fn=ignore_stop_signals if args.num_workers > 0 else None,
    )


def ignore_stop_signals(_worker_id: int) -> None:
    """DataLoader workers leave SIGINT / SIGTERM to the training process: Ctrl-C reaches the
    whole process group, and a worker that died of it would break the batch the training
    process still needs to finish its step and save a checkpoint."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def make_loaders(
    args, tokenizer=None, rank: Optional[int] = None, world_size: Optional[int] = None
) -> Tuple[Optional[DataLoader], Optional[DataLoader], Optional[DataLoader]]:
    """(train, valid, test) loaders; sets args.do_train / do_valid / do_test.

    rank / world_size default to the data-parallel group. Batch sizes are per rank.
    """
    if tokenizer is None:
        from .unified_tokenizer import get_tokenizer

        tokenizer = get_tokenizer(args)
    if rank is None or world_size is None:
        rank, world_size = _data_parallel()
    batch_size = args.batch_size * world_size
    eval_batch_size = batch_size
    if args.eval_batch_size is not None:
        eval_batch_size = args.eval_batch_size * world_size
    eval_batch_size = eval_batch_size or batch_size
    split = get_split(args)

    train = valid = test = None
    if args.train_data is not None:
        train = make_dataset(args.dataset_type, args.train_data, split, args, tokenizer)
        if should_split(split):
            train, valid, test = train
    if valid is None and args.valid_data:
        valid = make_dataset(args.dataset_type, args.valid_data, None, args, tokenizer)
    if test is None and args.test_data:
        test = make_dataset(args.dataset_type, args.test_data, None, args, tokenizer)

    args.do_train = train is not None and args.batch_size > 0
    args.do_valid = valid is not None
    args.do_test = test is not None
    loader = lambda ds, bs: make_data_loader(ds, bs, args, rank, world_size)  # noqa: E731
    return (
        loader(train, batch_size) if args.do_train else None,
        loader(valid, eval_batch_size) if valid is not None else None,
        loader(test, eval_batch_size) if test is not None else None,
    )


def resume_loader(loader: DataLoader, iteration: int) -> None:
    """--resume-dataloader: the next pass over ``loader`` starts after ``iteration``
    optimizer iterations (modulo one pass), as an uninterrupted run would."""
    loader.batch_sampler.start_iter = int(iteration)


def detect_new_datasets(args, tokenizer=None):
    """New ``*lmdb`` / ``*bin`` entries in --new-dataset-path: add them to --train-data and
    return fresh loaders, else None."""
    folder = args.new_dataset_path
    if folder is None:
        return None
    if not os.path.isdir(folder):
        logger.warning("--new-dataset-path %s does not exist; skipping detection", folder)
        return None
    current = {os.path.abspath(p) for p in (args.train_data or [])}
    found = [
        os.path.join(folder, name)
        for name in sorted(os.listdir(folder))
        if name.endswith(("lmdb", "bin")) and os.path.abspath(os.path.join(folder, name)) not in current
    ]
    if found and tokenizer is None:
        from .unified_tokenizer import get_tokenizer

        tokenizer = get_tokenizer(args)
    found = [path for path in found if _usable_new_dataset(path, args, tokenizer)]
    if not found:
        return None
    args.train_data = list(args.train_data or []) + found
    return make_loaders(args, tokenizer)


_REPORTED_NEW: set = set()


def _usable_new_dataset(path: str, args, tokenizer) -> bool:
    """A file that appeared in --new-dataset-path joins the training data only when it passes
    the start-up check; one still being written (no ``length`` yet) or broken is left out
    with a warning, once, and looked at again at the next poll."""
    try:
        checked_dataset(args.dataset_type, path, args, tokenizer)
    except (DataError, ValueError, OSError) as exc:
        message = " ".join(str(exc).split())
        if (path, message) not in _REPORTED_NEW:
            _REPORTED_NEW.add((path, message))
            logger.warning("--new-dataset-path: %s left out for now: %s", path, message)
        return False
    return True
