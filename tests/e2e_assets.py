"""Tiny random-weight models for end-to-end tests: a VQ-VAE, a sentencepiece
model and a GPT checkpoint with its model_config.json (64 px images, 8x8 codes)."""

from __future__ import annotations

import json
import os

import numpy as np
import torch
from PIL import Image

WORDS = (
    "a red circle on a white background a blue square at the top left corner green star "
    "small large medium yellow triangle black heart pink cross hexagon diamond purple gray"
).split()


def make_sentencepiece(folder: str) -> str:
    from data_utils.sp_tokenizer import train_text_tokenizer

    rng = np.random.RandomState(0)
    text = os.path.join(folder, "captions.txt")
    with open(text, "w") as f:
        for _ in range(400):
            f.write(" ".join(rng.choice(WORDS, size=8)) + "\n")
    return train_text_tokenizer(text, os.path.join(folder, "sp"), vocab_size=60, character_coverage=1.0)


def make_vqvae(folder: str) -> str:
    import vqvae

    torch.manual_seed(0)
    model = vqvae.VQVAE(channel=16, n_res_block=0, n_res_channel=8, embed_dim=8, n_embed=32, stride=6)
    path = os.path.join(folder, "vqvae.pt")
    torch.save(model.state_dict(), path)
    return path


def make_images(folder: str, count: int = 3, size: int = 64):
    rng = np.random.RandomState(1)
    paths = []
    for i in range(count):
        arr = (rng.rand(size, size, 3) * 255).astype(np.uint8)
        path = os.path.join(folder, f"img{i}.png")
        Image.fromarray(arr).save(path)
        paths.append(path)
    return paths


def make_gpt_checkpoint(
    folder: str, vqvae_path: str, sp_path: str, img_size: int = 64, max_positions: int = 400
) -> str:
    """Random GPT sized for the tokenizer; writes <folder>/ckpt with model_config.json."""
    from arch import GPT2Model, save_checkpoint
    from data_utils.unified_tokenizer import UnifiedTokenizer

    tokenizer = UnifiedTokenizer(vqvae_path, sp_path)
    vocab = tokenizer.padded_vocab_size(128, 1)
    torch.manual_seed(0)
    model = GPT2Model(2, vocab, 32, 4, 0.0, 0.0, 0.0, max_positions, 2048, False)
    ckpt = os.path.join(folder, "ckpt")
    save_checkpoint(ckpt, 10, model.state_dict())
    config = dict(
        num_layers=2,
        hidden_size=32,
        num_attention_heads=4,
        max_position_embeddings=max_positions,
        max_position_embeddings_finetune=max_positions,
        make_vocab_size_divisible_by=128,
        img_size=img_size,
        img_tokenizer_path=os.path.relpath(vqvae_path, ckpt),
        txt_tokenizer_path=os.path.relpath(sp_path, ckpt),
    )
    with open(os.path.join(ckpt, "model_config.json"), "w") as f:
        json.dump(config, f)
    return ckpt


def make_all(folder: str):
    sp = make_sentencepiece(folder)
    vq = make_vqvae(folder)
    images = make_images(folder)
    ckpt = make_gpt_checkpoint(folder, vq, sp)
    return dict(sp=sp, vqvae=vq, images=images, ckpt=ckpt)
