"""Text tokenizer: any sentencepiece model, loaded by path, plus training a new one.

The original hard-coded ``pretrained/chinese_sentencepiece/cog-pretrain.model``
relative to the working directory; here the path is explicit (``--txt-tokenizer-path``)
and the default is resolved against the repository root, so scripts work from any cwd.
"""

from __future__ import annotations

import os
from typing import Iterable, List, Optional, Sequence

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COG_PRETRAIN_MODEL = os.path.join("pretrained", "chinese_sentencepiece", "cog-pretrain.model")
OWN_TOKENIZER_DIR = os.path.join("pretrained", "text_tokenizer")


class TextTokenizerError(ValueError):
    """A sentencepiece model is missing or unreadable."""


class SentencePieceTokenizer:
    """Plain EncodeAsIds / DecodeIds over a sentencepiece model (no BOS/EOS, like CogView)."""

    def __init__(self, path: str):
        import sentencepiece as spm

        self.path = str(path)
        if not os.path.isfile(self.path):
            raise TextTokenizerError(
                f"text tokenizer model not found: {self.path!r} (expected a sentencepiece "
                "*.model file; pass --txt-tokenizer-path or train one with "
                "`python -m data_utils.train_text_tokenizer`)"
            )
        self.sp = spm.SentencePieceProcessor()
        try:
            ok = self.sp.Load(self.path)
        except Exception as exc:  # sentencepiece raises OSError / RuntimeError
            raise TextTokenizerError(f"cannot load sentencepiece model {self.path!r}: {exc}") from None
        if ok is False:
            raise TextTokenizerError(f"cannot load sentencepiece model {self.path!r}")
        self.num_tokens = int(self.sp.GetPieceSize())

    def __len__(self) -> int:
        return self.num_tokens

    def EncodeAsIds(self, text: str) -> List[int]:
        return list(self.sp.EncodeAsIds(text))

    def EncodeAsPieces(self, text: str) -> List[str]:
        return list(self.sp.EncodeAsPieces(text))

    def DecodeIds(self, ids: Iterable[int]) -> str:
        return self.sp.DecodeIds([int(i) for i in ids])

    def IdToPiece(self, idx: int) -> str:
        return self.sp.IdToPiece(int(idx))

    # the original's names
    encode = EncodeAsIds
    decode = DecodeIds


def default_txt_tokenizer_path(root: Optional[str] = None) -> Optional[str]:
    """The released cog-pretrain.model if present, else the project's own model, else None.

    Paths are relative to the repository root (not the cwd). The project's model is the
    first ``*.model`` file (sorted) under ``pretrained/text_tokenizer/``.
    """
    root = REPO_ROOT if root is None else root
    released = os.path.join(root, COG_PRETRAIN_MODEL)
    if os.path.isfile(released):
        return released
    own_dir = os.path.join(root, OWN_TOKENIZER_DIR)
    if os.path.isdir(own_dir):
        models = sorted(f for f in os.listdir(own_dir) if f.endswith(".model"))
        if models:
            return os.path.join(own_dir, models[0])
    return None


def missing_tokenizer_message() -> str:
    """What to tell the user when no text tokenizer can be found."""
    return (
        "no text tokenizer found: pass --txt-tokenizer-path PATH.model, or place the "
        f"released model at {os.path.join(REPO_ROOT, COG_PRETRAIN_MODEL)}, or train one "
        "with `python -m data_utils.train_text_tokenizer --input captions.txt "
        f"--output-prefix {os.path.join(OWN_TOKENIZER_DIR, 'text')} --vocab-size 8000`"
    )


def resolve_txt_tokenizer_path(path: Optional[str] = None) -> str:
    """``path`` if given, else the default; raises TextTokenizerError when there is none."""
    if path:
        return str(path)
    found = default_txt_tokenizer_path()
    if found is None:
        raise TextTokenizerError(missing_tokenizer_message())
    return found


def from_pretrained(path: Optional[str] = None) -> SentencePieceTokenizer:
    """Load ``path`` or the default text tokenizer (the original's entry point)."""
    return SentencePieceTokenizer(resolve_txt_tokenizer_path(path))


def train_text_tokenizer(
    input_txt: str | Sequence[str],
    model_prefix: str,
    vocab_size: int,
    model_type: str = "bpe",
    character_coverage: float = 0.9995,
    user_defined_symbols: Sequence[str] = ("<n>",),
    normalization_rule_name: str = "nmt_nfkc",
    input_sentence_size: int = 0,
    byte_fallback: bool = False,
    hard_vocab_limit: bool = True,
    num_threads: int = 1,
) -> str:
    """Train a sentencepiece model like cog-pretrain (BPE, nmt_nfkc, ``<n>`` at id 3).

    Works for any language; use character_coverage 0.9995 for CJK-heavy text and 1.0
    for small alphabets. Returns the path of the written ``<model_prefix>.model``.
    """
    import sentencepiece as spm

    inputs = [input_txt] if isinstance(input_txt, (str, os.PathLike)) else list(input_txt)
    for path in inputs:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"tokenizer training text not found: {path!r}")
    if vocab_size < 4 + len(user_defined_symbols):
        raise ValueError(
            f"vocab_size {vocab_size} is too small (needs room for <unk>, <s>, "
            f"</s> and {len(user_defined_symbols)} user symbols)"
        )
    out_dir = os.path.dirname(os.path.abspath(model_prefix))
    os.makedirs(out_dir, exist_ok=True)
    kwargs = dict(
        input=",".join(str(p) for p in inputs),
        model_prefix=str(model_prefix),
        vocab_size=int(vocab_size),
        model_type=model_type,
        character_coverage=float(character_coverage),
        normalization_rule_name=normalization_rule_name,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        byte_fallback=bool(byte_fallback),
        hard_vocab_limit=bool(hard_vocab_limit),
        num_threads=int(num_threads),
        minloglevel=2,
    )
    if user_defined_symbols:
        kwargs["user_defined_symbols"] = list(user_defined_symbols)
    if input_sentence_size:
        kwargs["input_sentence_size"] = int(input_sentence_size)
        kwargs["shuffle_input_sentence"] = True
    try:
        spm.SentencePieceTrainer.Train(**kwargs)
    except RuntimeError as exc:
        raise ValueError(f"sentencepiece training failed for {inputs}: {exc}") from None
    return f"{model_prefix}.model"
