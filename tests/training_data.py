"""Tiny training inputs made on the fly: a character sentencepiece model and LMDBs.

Rows follow the CogView layout ``[ROI1] text [BASE] [BOI1] codes [EOI1]`` with
image codes that depend on the text, so a few dozen steps visibly lower the loss.
"""

from __future__ import annotations

import os
from typing import List

import numpy as np

NUM_IMAGE_TOKENS = 64
WORDS = ["red bird", "blue fish", "green tree", "small cat", "big dog", "white cloud", "dark sky", "old car"]
COMMANDS = ["[PAD]", "[BOI1]", "[BOI2]", "[BOI3]", "[EOI1]", "[EOI2]", "[EOI3]", "[ROI1]", "[ROI2]", "[ROI3]"]


def make_text_tokenizer(folder: str) -> str:
    """A small char-level sentencepiece model trained on the captions; returns its path."""
    from data_utils.sp_tokenizer import train_text_tokenizer

    prefix = os.path.join(folder, "tiny_sp")
    if os.path.exists(prefix + ".model"):
        return prefix + ".model"
    text = os.path.join(folder, "captions.txt")
    with open(text, "w") as f:
        for _ in range(20):
            f.write("\n".join(WORDS) + "\n")
    return train_text_tokenizer(
        text, prefix, vocab_size=24, model_type="char", character_coverage=1.0, user_defined_symbols=()
    )


def tokenizer_for(sp_model: str):
    from data_utils.unified_tokenizer import UnifiedTokenizer

    return UnifiedTokenizer(None, txt_tokenizer_path=sp_model, img_tokenizer_num_tokens=NUM_IMAGE_TOKENS)


def make_rows(tokenizer, n: int, codes: int = 16, seed: int = 0, roi2: bool = False) -> List[np.ndarray]:
    """n rows; codes are a text-dependent arithmetic pattern plus a little noise."""
    rng = np.random.RandomState(seed)
    rows = []
    for i in range(n):
        w = i % len(WORDS)
        text = tokenizer.EncodeAsIds(WORDS[w])
        base = (w * 7 + np.arange(codes) * (w + 1)) % NUM_IMAGE_TOKENS
        noise = rng.randint(0, NUM_IMAGE_TOKENS, size=codes)
        code = np.where(rng.rand(codes) < 0.1, noise, base)
        row = [
            tokenizer["[ROI1]"],
            *text,
            tokenizer["[BASE]"],
            tokenizer["[BOI1]"],
            *code.tolist(),
            tokenizer["[EOI1]"],
        ]
        if roi2:
            row += [
                tokenizer["[ROI2]"],
                tokenizer["[POS0]"],
                tokenizer["[BASE]"],
                tokenizer["[BOI2]"],
                *code[::-1].tolist(),
                tokenizer["[EOI2]"],
            ]
        rows.append(np.asarray(row, dtype=np.int64))
    return rows


def make_lmdb(folder: str, name: str, rows) -> str:
    from data_utils.lmdb_writer import write_rows

    path = os.path.join(folder, name)
    write_rows(path, rows, map_size=1 << 24)
    return path


def tiny_setup(folder: str, n_rows: int = 32, roi2: bool = False) -> dict:
    """sp model + LMDB; returns paths and the longest row length."""
    sp = make_text_tokenizer(folder)
    tok = tokenizer_for(sp)
    rows = make_rows(tok, n_rows, roi2=roi2)
    lmdb_path = make_lmdb(folder, "tiny_roi2.lmdb" if roi2 else "tiny.lmdb", rows)
    return {"sp": sp, "lmdb": lmdb_path, "max_len": max(len(r) for r in rows), "tokenizer": tok}


def tiny_flags(setup: dict, save: str, **overrides) -> List[str]:
    """The command line of a tiny run (2 layers, hidden 32); overrides replace/add flags."""
    flags = {
        "--num-layers": 2,
        "--hidden-size": 32,
        "--num-attention-heads": 4,
        "--max-position-embeddings": 33,
        "--make-vocab-size-divisible-by": 32,
        "--img-tokenizer-num-tokens": NUM_IMAGE_TOKENS,
        "--txt-tokenizer-path": setup["sp"],
        "--train-data": setup["lmdb"],
        "--dataset-type": "TokenizedDataset",
        "--split": "1",
        "--batch-size": 4,
        "--lr": 3e-3,
        "--warmup": 0.1,
        "--lr-decay-style": "cosine",
        "--train-iters": 20,
        "--log-interval": 1,
        "--save": save,
        "--save-interval": 1000,
        "--num-workers": 0,
        "--seed": 7,
        "--device": "cpu",
        "--max-memory-length": 0,
        "--experiment-name": "tiny",
        "--summary-dir": os.path.join(save, "tb"),
        "--eval-interval": 1000,
        "--eval-iters": 2,
    }
    flags.update(overrides)
    argv: List[str] = []
    for key, value in flags.items():
        if value is None:
            continue
        if value is True:
            argv.append(key)
        elif isinstance(value, (list, tuple)):
            argv += [key, *[str(v) for v in value]]
        else:
            argv += [key, str(value)]
    return argv
