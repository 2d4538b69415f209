"""CogView inference: text2image, image2text, (low-level) super-resolution,
post-selection and inpainting, from a file of queries or interactively.

    python generate_samples.py --load CKPT --img-tokenizer-path VQVAE \
        --generation-task text2image --input-source input.txt --output-path samples

Every bad input line is reported as ``line N: what is wrong`` on stderr; the
other lines still run and the exit code is 1 if any line failed.
"""

from __future__ import annotations

import argparse
import sys
from typing import Iterator, List, Optional, Sequence, Tuple

from arch import CheckpointError
from arguments import explicit_dests, get_args
from generation.config import GenerationConfig
from generation.generator import Generator, setup
from generation.queries import QueryError, split_line

__all__ = ["Generator", "setup", "iterate_lines", "load_config", "main"]

PROMPT = "Please input a query (stop to exit) >>> "


def iterate_lines(cfg: GenerationConfig) -> Iterator[Tuple[int, str]]:
    """(line number, text) from the input file (this rank's share) or the interactive prompt."""
    if cfg.input_source == "interactive":
        try:
            import readline  # noqa: F401  (history and line editing for input())
        except ImportError:
            pass
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
            yield number, line
    else:
        with open(cfg.input_source, encoding="utf-8") as f:
            for number, line in enumerate(f.read().splitlines(), start=1):
                if (number - 1) % cfg.world_size == cfg.rank:
                    yield number, line


def load_config(args: argparse.Namespace, argv: Optional[Sequence[str]] = None) -> GenerationConfig:
    """The run's settings: the flags given in ``argv`` (default sys.argv[1:]) over the
    checkpoint's model_config.json over the flags' defaults; ``args`` is get_args(argv).
    Raises CheckpointError (one line) for an unreadable or mistyped model_config.json."""
    return GenerationConfig.from_args(args, explicit_dests(argv))


def main(argv: Optional[List[str]] = None) -> int:
    args = get_args(argv)
    if args.model_parallel_size != 1:
        print(
            "generate_samples.py: error: generation runs with --model-parallel-size 1; merge the "
            "checkpoint first: python -m arch.change_mp SRC DST --model-parallel-size 1",
            file=sys.stderr,
        )
        return 2
    try:
        cfg = load_config(args, argv if argv is not None else sys.argv[1:])
        tokenizer, model = setup(cfg)
    except (CheckpointError, ValueError, OSError) as exc:
        print(f"generate_samples.py: error: {exc}", file=sys.stderr)
        return 1
    generator = Generator(cfg, tokenizer, model)
    failures = 0
    for number, line in iterate_lines(cfg):
        try:
            query = split_line(line, number, cfg.task, cfg.with_id)
            generator.run(query)
        except (QueryError, ValueError, KeyError, OSError, CheckpointError) as exc:
            message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
            print(f"line {number}: {message}", file=sys.stderr, flush=True)
            failures += 1
    if failures:
        print(f"generate_samples.py: {failures} line(s) failed", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
