"""CLI: train a sentencepiece text tokenizer for CogView on a caption file.

    python -m data_utils.train_text_tokenizer --input captions.txt \
        --output-prefix pretrained/text_tokenizer/text --vocab-size 8000
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from .sp_tokenizer import SentencePieceTokenizer, train_text_tokenizer


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m data_utils.train_text_tokenizer",
        description="Train a sentencepiece (BPE by default) text tokenizer on plain text, "
        "one sentence/caption per line.",
    )
    parser.add_argument("--input", nargs="+", required=True, help="text file(s), one caption a line")
    parser.add_argument("--output-prefix", required=True, help="writes PREFIX.model and PREFIX.vocab")
    parser.add_argument("--vocab-size", type=int, required=True)
    parser.add_argument("--model-type", default="bpe", choices=["bpe", "unigram", "char", "word"])
    parser.add_argument(
        "--character-coverage", type=float, default=0.9995, help="0.9995 for Chinese/Japanese, 1.0 for small alphabets"
    )
    parser.add_argument(
        "--user-defined-symbols", nargs="*", default=["<n>"], help="pieces kept whole (cog-pretrain has <n> at id 3)"
    )
    parser.add_argument(
        "--input-sentence-size", type=int, default=0, help="sample this many lines from a large input (0 = all)"
    )
    parser.add_argument(
        "--byte-fallback", action="store_true", help="encode unknown characters as bytes instead of <unk>"
    )
    parser.add_argument("--num-threads", type=int, default=1)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    try:
        path = train_text_tokenizer(
            args.input,
            args.output_prefix,
            args.vocab_size,
            model_type=args.model_type,
            character_coverage=args.character_coverage,
            user_defined_symbols=args.user_defined_symbols,
            input_sentence_size=args.input_sentence_size,
            byte_fallback=args.byte_fallback,
            num_threads=args.num_threads,
        )
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    tok = SentencePieceTokenizer(path)
    print(f"wrote {path} ({tok.num_tokens} pieces); use it with --txt-tokenizer-path {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
