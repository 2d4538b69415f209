#!/usr/bin/env python3
"""Build CogView training data: images + captions -> an LMDB of tokenized rows.

    python preprocess_entry.py --captions data/captions.tsv --images data/images \\
        --img-tokenizer-path pretrained/vqvae/vqvae_hard_biggerset_011.pt --output data/mydata.lmdb

Rerunning the same command resumes an interrupted run. Bad images are skipped and listed
in <output>.report.tsv. See the README section "Preprocessing your own data".
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from typing import List, Optional

import lmdb

from preprocess.pipeline import OUTPUT_FORMATS, TASKS, PreprocessConfig, RunSummary, SetupError, run
from preprocess.records import FORMATS

DEFAULT_VQVAE = os.path.join("pretrained", "vqvae", "vqvae_hard_biggerset_011.pt")
REPO_ROOT = os.path.dirname(os.path.abspath(__file__))


def default_workers() -> int:
    return max(1, min(8, (os.cpu_count() or 2) - 1))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    g = p.add_argument_group("input")
    g.add_argument(
        "--captions",
        required=True,
        help="TSV (path<TAB>caption per line) or JSON lines / a JSON list of objects with "
        "image|path|file and caption|text keys",
    )
    g.add_argument(
        "--images",
        default=None,
        help="folder the captions' relative image paths start from (default: the captions file's folder)",
    )
    g.add_argument("--captions-format", default="auto", choices=FORMATS)
    g = p.add_argument_group("output")
    g.add_argument("--output", required=True, help="LMDB folder to write (or resume)")
    g.add_argument(
        "--task",
        default="text2image",
        choices=TASKS,
        help="text2image: one row per image; super-resolution: rows for generation's "
        "super-resolution (magnify) windows",
    )
    g.add_argument(
        "--output-format",
        default="Tokenized",
        choices=OUTPUT_FORMATS,
        help="Tokenized: TokenizedDataset rows of unified ids; TextCode: TextCodeDataset "
        "rows (caption string, codes), tokenized at training time",
    )
    g.add_argument("--overwrite", action="store_true", help="delete --output and its report first instead of resuming")
    g = p.add_argument_group("tokenizers")
    g.add_argument("--img-tokenizer-path", default=None, help=f"VQ-VAE checkpoint (default: {DEFAULT_VQVAE})")
    g.add_argument(
        "--txt-tokenizer-path",
        default=None,
        help="sentencepiece model (default: pretrained/chinese_sentencepiece/cog-pretrain.model "
        "when present, else the first pretrained/text_tokenizer/*.model)",
    )
    g = p.add_argument_group("images and captions")
    g.add_argument(
        "--img-size",
        type=int,
        default=256,
        help="image side encoded (256 -> 32x32 codes); super-resolution also encodes 2x this",
    )
    g.add_argument(
        "--min-size",
        type=int,
        default=None,
        help="skip images whose shorter side is below this (default: --img-size / 4)",
    )
    g.add_argument(
        "--max-text-tokens", type=int, default=0, help="skip captions longer than this many tokens (0: no limit)"
    )
    g.add_argument(
        "--sr-windows-per-image",
        type=int,
        default=0,
        help="super-resolution: rows per image, windows drawn at random (0: every window)",
    )
    g.add_argument(
        "--sr-text-length",
        type=int,
        default=0,
        help="super-resolution: pad captions with [PAD] to this many tokens, the model's "
        "--sr-text-length (longer captions are skipped; 0: not padded, as the original)",
    )
    g.add_argument(
        "--sr-low-level",
        action="store_true",
        help="super-resolution: also one low-level super-resolution row per image (the whole image "
        "read at half --img-size, then at --img-size: the low-level super-resolution query)",
    )
    g.add_argument("--seed", type=int, default=1234, help="seed of the super-resolution window draw")
    g = p.add_argument_group("speed")
    g.add_argument(
        "--num-workers",
        type=int,
        default=default_workers(),
        help="processes decoding and resizing images (0: in the main process)",
    )
    g.add_argument("--batch-size", type=int, default=32, help="images per VQ-VAE encode")
    g.add_argument(
        "--commit-every", type=int, default=1000, help="rows per LMDB commit (work lost to a kill is at most this much)"
    )
    g.add_argument("--device", default="cpu", help="device of the VQ-VAE (cpu, cuda, cuda:1 ...)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def config_from_args(args: argparse.Namespace) -> PreprocessConfig:
    vqvae_path = args.img_tokenizer_path or os.path.join(REPO_ROOT, DEFAULT_VQVAE)
    return PreprocessConfig(
        captions=args.captions,
        output=args.output,
        img_tokenizer_path=vqvae_path,
        images=args.images,
        captions_format=args.captions_format,
        task=args.task,
        output_format=args.output_format,
        txt_tokenizer_path=args.txt_tokenizer_path,
        img_size=args.img_size,
        min_size=args.min_size,
        max_text_tokens=args.max_text_tokens,
        sr_windows_per_image=args.sr_windows_per_image,
        sr_text_length=args.sr_text_length,
        sr_low_level=args.sr_low_level,
        num_workers=args.num_workers,
        batch_size=args.batch_size,
        commit_every=args.commit_every,
        device=args.device,
        seed=args.seed,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )


def describe(s: RunSummary) -> str:
    lines = [
        f"{s.output}: {s.total_rows} rows ({s.written_rows} written now from {s.written_inputs} "
        f"images, {s.already_done} inputs done by earlier runs) in {s.seconds:.1f}s",
        f"skipped {s.skipped} of {s.records} inputs, converted {s.converted} images; report: {s.report}",
    ]
    lines += [f"  {n} x {reason}" for reason, n in sorted(s.skip_reasons.items(), key=lambda x: -x[1])]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        summary = run(config_from_args(args))
    except SetupError as exc:
        print(f"preprocess_entry.py: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("preprocess_entry.py: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except (OSError, lmdb.Error) as exc:  # a disk that fills or fails mid-run: committed rows stay
        print(
            f"preprocess_entry.py: error: writing {args.output} failed ({write_failure(args.output, exc)}); "
            "the rows committed so far are kept: fix the cause and rerun the same command to resume",
            file=sys.stderr,
        )
        return 1
    print(describe(summary))
    if summary.total_rows == 0:
        print(f"preprocess_entry.py: error: {no_rows_reason(summary)}", file=sys.stderr)
        return 1
    return 0


def write_failure(output: str, exc: BaseException) -> str:
    """What went wrong writing ``output``, in a few words. LMDB reports a full disk at commit
    time as an I/O error, so the free space of the disk decides."""
    detail = " ".join(str(exc).split())
    folder = os.path.dirname(os.path.abspath(output))
    try:
        full = shutil.disk_usage(folder).free < (1 << 20)
    except OSError:
        full = False
    return f"no space left on the disk of {folder}: {detail}" if full else detail


def no_rows_reason(s: RunSummary) -> str:
    """Why a run left a dataset without rows: training would refuse it, so the run fails."""
    reasons = ", ".join(f"{n} x {reason}" for reason, n in sorted(s.skip_reasons.items(), key=lambda x: -x[1]))
    return (
        f"{s.output} holds no rows: all {s.records} inputs were skipped ({reasons or 'no reason recorded'}); "
        f"fix them (see {s.report}) and rerun"
    )


if __name__ == "__main__":
    sys.exit(main())
