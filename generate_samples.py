"""CogView inference: text2image, image2text, (low-level) super-resolution,
post-selection and inpainting, from a file of queries or interactively.

    python generate_samples.py --load CKPT --img-tokenizer-path VQVAE \
        --generation-task text2image --input-source input.txt --output-path samples

Every bad input line is reported as ``line N: what is wrong`` on stderr; the
other lines still run and the exit code is 1 if any line failed. Blank lines are
skipped. Settings, the input file and the output folder are checked before the
model is loaded; Ctrl-C ends the run with one line and exit code 130, keeping
every image already written. No existing image is ever replaced: a taken folder
or grid name gets ``-1``, ``-2``... and the report line says where the images went.
"""

from __future__ import annotations

import argparse
import sys
from typing import Iterator, List, Optional, Sequence, Tuple

import torch

from arch import CheckpointError
from arguments import explicit_dests, get_args
from generation.config import GenerationConfig
from generation.distributed import (
    LaunchError,
    agree,
    barrier,
    end,
    first_process,
    launch_error,
    process_device,
    start_model_parallel,
    start_process_group,
)
from generation.generator import Generator, check_input_source, setup
from generation.outputs import OutputError, check_output_folder
from generation.queries import QueryError, split_line

__all__ = ["Generator", "setup", "iterate_lines", "read_input_lines", "load_config", "main"]

PROMPT = "Please input a query (stop to exit) >>> "
INTERRUPTED = 130  # the shell's code for a process ended by SIGINT
# tasks that write files (image2text prints its captions)
WRITING_TASKS = ("text2image", "super-resolution", "low-level super-resolution", "post-selection", "inpainting")


class InputError(ValueError):
    """An --input-source that cannot be read as a text file of queries."""


def read_input_lines(path: str, rank: int = 0, world_size: int = 1) -> List[Tuple[int, str]]:
    """(line number, text) of this rank's non-blank lines of ``path``.

    Each line is decoded on its own with ``surrogateescape``, so a line that is not UTF-8
    fails alone (split_line names it) and the others run; a leading byte-order mark is
    dropped. Raises InputError for a file that cannot be read or is binary.
    """
    check_input_source(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise InputError(f"--input-source {path}: cannot read it ({exc.strerror or exc})") from None
    if b"\0" in data[:65536]:
        raise InputError(
            f"--input-source {path}: a binary file (it holds NUL bytes), not a text file with one query per line"
        )
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    rows = data.split(b"\n")
    if rows and rows[-1] == b"":
        rows.pop()
    lines = []
    for number, row in enumerate(rows, start=1):
        if (number - 1) % world_size != rank:
            continue
        text = row.decode("utf-8", errors="surrogateescape").rstrip("\r")
        if text.strip():
            lines.append((number, text))
    return lines


def iterate_lines(cfg: GenerationConfig) -> Iterator[Tuple[int, str]]:
    """(line number, text) from the input file (this rank's share) or the interactive
    prompt; blank lines are skipped (they are not queries)."""
    if cfg.input_source != "interactive":
        yield from read_input_lines(cfg.input_source, cfg.rank, cfg.world_size)
        return
    try:
        import readline  # noqa: F401  (history and line editing for input())
    except ImportError:
        pass
    if hasattr(sys.stdin, "reconfigure"):
        sys.stdin.reconfigure(errors="surrogateescape")  # a non-UTF-8 line fails alone
    number = 0
    while True:
        try:
            line = input(PROMPT)
        except EOFError:
            print()
            return
        number += 1
        if line.strip() == "stop":
            return
        if line.strip():
            yield number, line


def load_config(args: argparse.Namespace, argv: Optional[Sequence[str]] = None) -> GenerationConfig:
    """The run's settings: the flags given in ``argv`` (default sys.argv[1:]) over the
    checkpoint's model_config.json over the flags' defaults; ``args`` is get_args(argv).
    Raises CheckpointError (one line) for an unreadable or mistyped model_config.json and
    ValueError for a model shape that cannot be built."""
    return GenerationConfig.from_args(args, explicit_dests(argv))


def is_out_of_memory(exc: BaseException) -> bool:
    """torch's GPU and CPU allocators' failures (the CPU one is a plain RuntimeError)."""
    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)):
        return True
    text = str(exc)
    return "out of memory" in text or "can't allocate memory" in text


def _error(message: object) -> None:
    print(f"generate_samples.py: error: {message}", file=sys.stderr, flush=True)


def _start(args: argparse.Namespace, argv: Sequence[str]):
    """(cfg, this model's input lines or None for the prompt, tokenizer, model); tokenizer and
    model are None when there is nothing to do. Raises the start-up errors (one line each)."""
    cfg = load_config(args, argv)
    if cfg.model_parallel_size > 1:
        if cfg.input_source == "interactive":
            raise LaunchError(
                f"--input-source interactive reads the keyboard in one process; with --model-parallel-size "
                f"{cfg.model_parallel_size} give a file of queries (INPUT_SOURCE=FILE for the scripts)"
            )
        start_model_parallel(cfg.model_parallel_size)
    lines: Optional[List[Tuple[int, str]]] = None
    if cfg.input_source != "interactive":
        lines = read_input_lines(cfg.input_source, cfg.data_parallel_rank, cfg.data_parallel_size)
        if not lines:
            return cfg, lines, None, None
    if cfg.task in WRITING_TASKS and cfg.reports:
        check_output_folder(cfg.output_path)
    tokenizer, model = setup(cfg)
    return cfg, lines, tokenizer, model


def main(argv: Optional[List[str]] = None) -> int:
    """Run every query of --input-source. Exit code: 0 every line ran (or there was nothing to
    do), 1 a line or the start-up failed, 2 a bad flag, 130 interrupted (Ctrl-C).

    With --model-parallel-size N > 1 this is one of the N processes torchrun started
    (generation/distributed.py): each loads its slice of the model, and the model's first
    process alone writes and prints."""
    args = get_args(argv, check_shape=False)  # the shape is checked once model_config.json is applied
    model_parallel = args.requested_model_parallel_size
    problem = launch_error(model_parallel, args.world_size)
    if model_parallel == 1 or args.world_size == 1:  # one process per model: nothing shared
        if problem:
            _error(problem)
            return 2
        return _run(args, argv)
    args.device = process_device(args.device, args.local_rank, args.world_size)
    try:
        started = start_process_group(args.device)
    except (RuntimeError, ValueError) as exc:
        _error(f"cannot join the other processes of --model-parallel-size {model_parallel}: {exc}")
        return 1
    try:
        return _run(args, argv, problem)
    finally:
        end(started)


def _run(args: argparse.Namespace, argv: Optional[List[str]], problem: Optional[str] = None) -> int:
    """Start up and run the lines; a start-up failure of any process is agreed on first, so the
    processes of one model stop together and the first one says why, once."""
    message, code = None, 0
    try:
        if problem:
            raise LaunchError(problem)
        cfg, lines, tokenizer, model = _start(args, argv if argv is not None else sys.argv[1:])
    except LaunchError as exc:
        message, code = str(exc), 2
    except (CheckpointError, ValueError, OSError, OutputError) as exc:
        message, code = str(exc), 1
    except KeyboardInterrupt:
        if args.rank % max(1, args.requested_model_parallel_size) == 0:
            print("generate_samples.py: interrupted before any line ran", file=sys.stderr)
        return INTERRUPTED
    message, code = agree(message, code)  # a failure of any slice stops every process
    if message:
        if first_process():
            _error(message)
        barrier()  # the message is out before any process exits
        return code
    if model is None:
        if cfg.reports:
            share = (
                f" for rank {cfg.data_parallel_rank} of {cfg.data_parallel_size}" if cfg.data_parallel_size > 1 else ""
            )
            print(
                f"generate_samples.py: {cfg.input_source} holds no queries{share} (blank lines are "
                "skipped); nothing to do",
                file=sys.stderr,
            )
        return 0
    generator = Generator(cfg, tokenizer, model)
    failures = done = 0
    try:
        for number, line in lines if lines is not None else iterate_lines(cfg):
            try:
                query = split_line(line, number, cfg.task, cfg.with_id)
                generator.run(query)
            except (QueryError, ValueError, KeyError, OSError, CheckpointError, OutputError) as exc:
                message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
                if cfg.reports:
                    print(f"line {number}: {message}", file=sys.stderr, flush=True)
                failures += 1
            except (RuntimeError, MemoryError) as exc:
                if not is_out_of_memory(exc):
                    raise
                where = f"{cfg.device} (slice {cfg.model_parallel_rank})" if cfg.model_parallel_size > 1 else cfg.device
                print(
                    f"line {number}: out of memory on {where} sampling "
                    f"{min(cfg.batch_size, cfg.max_inference_batch_size)} at once; lower "
                    "--max-inference-batch-size",
                    file=sys.stderr,
                    flush=True,
                )
                if cfg.model_parallel_size > 1:
                    return 1  # the other slices wait for this one: the launcher stops them
                failures += 1
            done += 1
    except KeyboardInterrupt:
        if cfg.reports:
            where = "captions printed above" if cfg.task not in WRITING_TASKS else f"outputs in {cfg.output_path}"
            print(f"generate_samples.py: interrupted; {done} line(s) done, {where}", file=sys.stderr, flush=True)
        return INTERRUPTED
    if failures and cfg.reports:
        print(f"generate_samples.py: {failures} line(s) failed", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
