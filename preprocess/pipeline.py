"""The preprocessing run: captions + images -> LMDB rows, multi-process and resumable.

Worker processes decode, convert and resize images (images.prepare_chunk); the main
process tokenizes captions, encodes images with the VQ-VAE in batches, and writes rows
in input order. Every commit first makes the journal durable, then commits the LMDB
rows and ``length`` in one transaction, so a killed run resumes without redoing or
duplicating rows (journal module). Bad inputs are skipped and reported, never fatal;
setup problems raise SetupError with one line for the user.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import multiprocessing as mp
import os
import random
import shutil
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from common.fileio import probe_writable
from data_utils.lmdb_writer import LMDBWriter
from data_utils.sp_tokenizer import SentencePieceTokenizer, TextTokenizerError, resolve_txt_tokenizer_path
from data_utils.unified_tokenizer import SIZE_TOKENS, UnifiedTokenizer

from .images import Prepared, prepare_chunk
from .journal import Journal, report_path_for
from .records import Record, read_captions
from .rows import code_dtype, low_level_sr_row, sr_layout, sr_positions, sr_row, text_code_row, tokenized_row

TASKS = ("text2image", "super-resolution")
OUTPUT_FORMATS = ("Tokenized", "TextCode")
CHUNK = 4  # images per worker task


class SetupError(Exception):
    """A problem with the inputs or options that stops the run before any work."""


@dataclass
class PreprocessConfig:
    captions: str
    output: str
    img_tokenizer_path: str
    images: Optional[str] = None  # default: the captions file's folder
    captions_format: str = "auto"
    task: str = "text2image"
    output_format: str = "Tokenized"
    txt_tokenizer_path: Optional[str] = None
    img_size: int = 256
    min_size: Optional[int] = None  # default: img_size // 4
    max_text_tokens: int = 0  # 0: no limit
    sr_windows_per_image: int = 0  # 0: every window
    sr_text_length: int = 0  # super-resolution captions padded to this (0: not padded)
    sr_low_level: bool = False  # super-resolution: also a whole-image low-level row per image
    num_workers: int = 2
    batch_size: int = 32
    commit_every: int = 1000
    device: str = "cpu"
    seed: int = 1234
    overwrite: bool = False
    progress: bool = True


@dataclass
class RunSummary:
    records: int = 0  # inputs in the captions file (incl. bad lines)
    already_done: int = 0  # inputs written by earlier runs
    written_inputs: int = 0  # inputs turned into rows by this run
    written_rows: int = 0
    skipped: int = 0
    converted: int = 0
    total_rows: int = 0  # rows in the LMDB at the end
    seconds: float = 0.0
    output: str = ""
    report: str = ""
    skip_reasons: Dict[str, int] = field(default_factory=dict)


@dataclass
class _Setup:
    model: torch.nn.Module
    tok: Optional[UnifiedTokenizer]
    grid: int
    sizes: Tuple[int, ...]
    min_size: int
    settings: dict


def _sha1_file(path: str) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def _check_options(cfg: PreprocessConfig) -> None:
    if cfg.task not in TASKS:
        raise SetupError(f"unknown --task {cfg.task!r}; choose one of {', '.join(TASKS)}")
    if cfg.output_format not in OUTPUT_FORMATS:
        raise SetupError(f"unknown --output-format {cfg.output_format!r}; choose one of {', '.join(OUTPUT_FORMATS)}")
    if cfg.task == "super-resolution" and cfg.output_format != "Tokenized":
        raise SetupError("super-resolution rows hold two images: use --output-format Tokenized")
    for name in ("img_size", "batch_size", "commit_every"):
        if getattr(cfg, name) <= 0:
            raise SetupError(f"--{name.replace('_', '-')} must be positive, got {getattr(cfg, name)}")
    for name in ("num_workers", "max_text_tokens", "sr_windows_per_image", "sr_text_length"):
        if getattr(cfg, name) < 0:
            raise SetupError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(cfg, name)}")
    if not os.path.isfile(cfg.captions):
        raise SetupError(f"captions file not found: {cfg.captions}")
    images = cfg.images or os.path.dirname(os.path.abspath(cfg.captions))
    if not os.path.isdir(images):
        raise SetupError(f"image folder not found: {images}")
    if os.path.exists(cfg.output) and not os.path.isdir(cfg.output):
        raise SetupError(f"--output {cfg.output} exists and is not a folder (an LMDB dataset is a folder)")


def _load_text_tokenizer(cfg: PreprocessConfig, required: bool) -> Optional[SentencePieceTokenizer]:
    try:
        return SentencePieceTokenizer(resolve_txt_tokenizer_path(cfg.txt_tokenizer_path))
    except TextTokenizerError as exc:
        if required or cfg.txt_tokenizer_path or cfg.max_text_tokens:
            raise SetupError(" ".join(str(exc).split())) from None
        return None


def _setup(cfg: PreprocessConfig) -> _Setup:
    import vqvae

    try:
        model = vqvae.load_model(cfg.img_tokenizer_path, device=cfg.device)
    except (ValueError, RuntimeError, OSError) as exc:
        raise SetupError(" ".join(str(exc).split())) from None
    factor = int(getattr(model, "downsample", 8))
    if cfg.img_size % factor:
        raise SetupError(f"--img-size {cfg.img_size} is not a multiple of the VQ-VAE's downsampling factor {factor}")
    grid = cfg.img_size // factor
    if grid not in SIZE_TOKENS:
        raise SetupError(
            f"--img-size {cfg.img_size} gives a {grid}x{grid} code grid; CogView rows "
            f"need 8, 16, 32 or 64 (--img-size {', '.join(str(g * factor) for g in SIZE_TOKENS)})"
        )
    sr = cfg.task == "super-resolution"
    if sr:
        try:
            sr_layout(grid)
        except ValueError as exc:
            raise SetupError(str(exc)) from None
    n_embed = int(model.quantize_t.embed.shape[-1])
    sp = _load_text_tokenizer(cfg, required=cfg.output_format == "Tokenized")
    tok = UnifiedTokenizer(img_tokenizer_num_tokens=n_embed, txt_tokenizer_path=sp) if sp else None
    codebook = hashlib.sha1(model.quantize_t.embed.detach().float().cpu().numpy().tobytes()).hexdigest()[:16]
    settings = dict(
        task=cfg.task,
        output_format=cfg.output_format,
        img_size=cfg.img_size,
        grid=grid,
        n_embed=n_embed,
        vqvae_codebook=codebook,
        txt_tokenizer=_sha1_file(sp.path) if sp and cfg.output_format == "Tokenized" else None,
    )
    if sr:
        settings.update(sr_windows_per_image=cfg.sr_windows_per_image, seed=cfg.seed)
        if cfg.sr_text_length:  # recorded only when set, so earlier unpadded runs still resume
            settings.update(sr_text_length=cfg.sr_text_length)
        if cfg.sr_low_level:  # half of an 8..64 grid is a whole grid: no size to refuse
            settings.update(sr_low_level=True)
    elif cfg.sr_low_level:
        raise SetupError("--sr-low-level adds rows to --task super-resolution only")
    sizes = (cfg.img_size, 2 * cfg.img_size) if sr else (cfg.img_size,)
    if sr and cfg.sr_low_level:
        sizes += (cfg.img_size // 2,)
    min_size = cfg.min_size if cfg.min_size is not None else max(1, cfg.img_size // 4)
    return _Setup(model, tok, grid, sizes, min_size, settings)


def _prepare_output(cfg: PreprocessConfig, report: str) -> None:
    _check_writable(cfg.output, os.path.dirname(os.path.abspath(cfg.output)))  # the report goes beside the LMDB
    if cfg.overwrite:
        if os.path.isdir(cfg.output):
            shutil.rmtree(cfg.output)
        if os.path.exists(report):
            os.remove(report)
    if os.path.isdir(cfg.output) and os.path.exists(os.path.join(cfg.output, "data.mdb")):
        if not Journal(cfg.output, report).exists():
            raise SetupError(
                f"--output {cfg.output} already holds an LMDB that preprocess_entry.py "
                "did not write; choose another --output or pass --overwrite"
            )
    if os.path.isdir(cfg.output):
        _check_writable(cfg.output, cfg.output)


def _check_writable(output: str, folder: str) -> None:
    """Write, fsync and remove a probe file, so a read-only or full disk stops the run before
    any image is encoded."""
    try:
        probe_writable(folder)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise SetupError(f"--output {output}: no space left on the disk of {folder}") from None
        raise SetupError(
            f"--output {output}: cannot write in {folder} ({exc.strerror or exc}); choose a writable --output"
        ) from None


def _ordered(results: Iterable, max_in_flight: int) -> Iterator:
    """Results of async tasks in submission order, at most ``max_in_flight`` pending."""
    pending: deque = deque()
    for res in results:
        pending.append(res)
        if len(pending) >= max_in_flight:
            yield from pending.popleft().get()
    while pending:
        yield from pending.popleft().get()


def _prepared_images(
    records: Sequence[Record], sizes: Sequence[int], min_size: int, pool, workers: int
) -> Iterator[Tuple[int, Prepared]]:
    chunks = [
        ([(i, r.full_path) for i, r in enumerate(records[k : k + CHUNK], k)], tuple(sizes), min_size)
        for k in range(0, len(records), CHUNK)
    ]
    if pool is None:
        for chunk in chunks:
            yield from prepare_chunk(chunk)
        return
    yield from _ordered((pool.apply_async(prepare_chunk, (c,)) for c in chunks), max_in_flight=4 * workers)


def encode_batch(model: torch.nn.Module, arrays: Sequence[np.ndarray], device: str) -> np.ndarray:
    """uint8 [S, S, 3] images -> VQ-VAE codes [b, g*g] (int64)."""
    from vqvae import img2code, normalize

    x = torch.from_numpy(np.stack(arrays)).to(device).permute(0, 3, 1, 2).float().div_(255.0)
    return img2code(model, normalize(x)).cpu().numpy()


class _Writer:
    """Rows -> LMDB + journal, committing every ``commit_every`` rows (journal first)."""

    def __init__(self, cfg: PreprocessConfig, setup: _Setup, journal: Journal, writer: LMDBWriter):
        self.cfg, self.setup, self.journal, self.writer = cfg, setup, journal, writer
        self.committed = writer.count
        self.dtype = code_dtype(setup.settings["n_embed"])
        self.layout = sr_layout(setup.grid) if cfg.task == "super-resolution" else None

    def windows(self, record: Record) -> List[Tuple[int, int]]:
        positions = sr_positions(self.layout)
        k = self.cfg.sr_windows_per_image
        if k and k < len(positions):  # a fixed per-input choice, so a rerun picks the same
            positions = sorted(random.Random(f"{self.cfg.seed}:{record.key}").sample(positions, k))
        return positions

    def write_batch(self, batch: List[Tuple[Record, List[np.ndarray], Optional[np.ndarray]]]) -> int:
        codes = [
            encode_batch(self.setup.model, [b[1][s] for b in batch], self.cfg.device)
            for s in range(len(self.setup.sizes))
        ]
        n = 0
        for k, (record, _, text_ids) in enumerate(batch):
            if self.layout is not None:
                for i, j in self.windows(record):
                    row = sr_row(
                        self.setup.tok, text_ids, codes[0][k], codes[1][k], (i, j), self.layout, self.cfg.sr_text_length
                    )
                    self.journal.add_row(self.writer.append(row), f"{record.key}#{i},{j}")
                    n += 1
                if self.cfg.sr_low_level:  # the whole image at half size -> full size
                    row = low_level_sr_row(self.setup.tok, text_ids, codes[2][k], codes[0][k], self.cfg.sr_text_length)
                    self.journal.add_row(self.writer.append(row), f"{record.key}#low-level")
                    n += 1
                continue
            if self.cfg.output_format == "TextCode":
                row = text_code_row(record.caption, codes[0][k], self.dtype)
            else:
                row = tokenized_row(self.setup.tok, text_ids, codes[0][k])
            self.journal.add_row(self.writer.append(row), record.key)
            n += 1
        if self.writer.count - self.committed >= self.cfg.commit_every:
            self.commit()
        return n

    def commit(self) -> None:
        self.journal.flush()
        self.writer.commit()
        self.committed = self.writer.count

    def abandon(self) -> None:
        """After an error: keep only committed rows (a rerun redoes the rest)."""
        self.writer.set_length(self.committed)


def _text_ids(
    tok: Optional[UnifiedTokenizer], record: Record, max_tokens: int, sr_text_length: int = 0
) -> Tuple[Optional[np.ndarray], Optional[str]]:
    if tok is None:
        return None, None
    ids = tok.EncodeAsIds(record.caption)
    if not ids:
        return None, "caption has no text tokens"
    if max_tokens and len(ids) > max_tokens:
        return None, f"caption too long ({len(ids)} tokens > --max-text-tokens {max_tokens})"
    if sr_text_length and len(ids) > sr_text_length:
        return None, f"caption too long ({len(ids)} tokens > --sr-text-length {sr_text_length})"
    return np.asarray(ids, dtype=np.int32), None  # compact: held for every pending input


def _pool(num_workers: int):
    if num_workers <= 0:
        return None
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    return mp.get_context(method).Pool(num_workers)


def run(cfg: PreprocessConfig) -> RunSummary:
    """Preprocess ``cfg.captions``; resumes an interrupted run on the same ``cfg.output``."""
    start = time.time()
    _check_options(cfg)
    setup = _setup(cfg)
    images = cfg.images or os.path.dirname(os.path.abspath(cfg.captions))
    try:
        records, bad_lines = read_captions(cfg.captions, images, cfg.captions_format)
    except (ValueError, OSError) as exc:
        raise SetupError(" ".join(str(exc).split())) from None
    if not records and not bad_lines:
        raise SetupError(f"captions file {cfg.captions} holds no entries")
    report = report_path_for(cfg.output)
    _prepare_output(cfg, report)
    journal = Journal(cfg.output, report)
    if journal.exists():
        diff = journal.differences(setup.settings)
        if diff:
            raise SetupError(
                f"--output {cfg.output} was made with other settings ({'; '.join(diff)}); "
                "choose another --output or pass --overwrite"
            )
    summary = RunSummary(records=len(records) + len(bad_lines), output=cfg.output, report=report)

    def skip(line: int, path: str, reason: str) -> None:
        journal.add_skip(line, path, reason)
        summary.skipped += 1
        head = reason.split(" (")[0]
        summary.skip_reasons[head] = summary.skip_reasons.get(head, 0) + 1

    pool = _pool(cfg.num_workers)  # before the LMDB is open: forked workers never see it
    try:
        writer = LMDBWriter(cfg.output, commit_every=1 << 62)
    except BaseException:
        if pool is not None:
            pool.terminate()
        raise
    rows = _Writer(cfg, setup, journal, writer)
    ok = False
    try:
        committed = journal.committed_prefix(writer.count)
        if committed < writer.count:
            writer.set_length(committed)
        rows.committed = committed
        done = journal.start(setup.settings, committed)
        for b in bad_lines:
            skip(b.line, b.path, b.reason)
        todo, texts = [], []
        for r in records:
            if r.key in done:
                summary.already_done += 1
                continue
            ids, problem = _text_ids(
                setup.tok, r, cfg.max_text_tokens, cfg.sr_text_length if cfg.task == "super-resolution" else 0
            )
            if problem:
                skip(r.line, r.path, problem)
            else:
                todo.append(r)
                texts.append(ids)
        from tqdm import tqdm

        batch: List = []
        with tqdm(
            total=len(todo),
            unit="img",
            desc="preprocess",
            disable=not cfg.progress,
            file=sys.stderr,
            dynamic_ncols=True,
        ) as bar:
            for i, (arrays, info) in _prepared_images(todo, setup.sizes, setup.min_size, pool, cfg.num_workers):
                record = todo[i]
                if arrays is None:
                    skip(record.line, record.path, info)
                else:
                    if info:
                        journal.add_note(record.key, record.line, record.path, info)
                        summary.converted += 1
                    batch.append((record, arrays, texts[i]))
                if len(batch) >= cfg.batch_size:
                    summary.written_rows += rows.write_batch(batch)
                    summary.written_inputs += len(batch)
                    batch = []
                bar.update(1)
            if batch:
                summary.written_rows += rows.write_batch(batch)
                summary.written_inputs += len(batch)
        rows.commit()
        ok = True
    finally:
        # after a failure (a full disk, Ctrl-C) the committed rows stay and the first error is
        # the one reported: closing may fail the same way
        if not ok:
            rows.abandon()
        if pool is not None:
            (pool.close if ok else pool.terminate)()
            pool.join()
        for close in (journal.close, writer.close):
            if ok:
                close()
            else:
                with contextlib.suppress(Exception):
                    close()
    summary.total_rows = writer.count
    summary.seconds = time.time() - start
    return summary
