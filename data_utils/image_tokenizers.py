"""Image halves of the unified tokenizer: the VQ-VAE, or a size-only stand-in.

``FakeTokenizer`` lets training on pre-tokenized data run without the VQ-VAE (only the
image vocabulary size matters then). ``vqvae`` is imported lazily so this module, and
everything that imports it, loads even when the VQ-VAE package is unavailable.
"""

from __future__ import annotations

import math
from typing import List, Sequence, Union

import torch

Codes = Union[Sequence[int], torch.Tensor]


def sqrt_int(x: int) -> int:
    """Side of a square grid of ``x`` codes; ValueError when ``x`` is not a square."""
    r = int(math.sqrt(x) + 1e-4)
    if r * r != x:
        raise ValueError(f"{x} image codes do not form a square grid")
    return r


class FakeTokenizer:
    """Image vocabulary of a given size, without a model to encode or decode images."""

    def __init__(self, num_tokens: int):
        if int(num_tokens) <= 0:
            raise ValueError(f"image vocabulary size must be positive, got {num_tokens}")
        self.num_tokens = int(num_tokens)

    def __len__(self) -> int:
        return self.num_tokens

    def _no_model(self, what: str):
        raise ValueError(
            f"cannot {what}: no VQ-VAE loaded (the image tokenizer only knows its "
            f"size, {self.num_tokens}); pass --img-tokenizer-path"
        )

    def EncodeAsIds(self, img: torch.Tensor) -> torch.Tensor:
        self._no_model("encode an image")

    def read_img(self, path: str, img_size: int = 256) -> torch.Tensor:
        self._no_model(f"read image {path!r}")

    def DecodeIds(self, codes: Codes) -> List[int]:
        """Without a decoder the codes themselves are the best description of the image."""
        if isinstance(codes, torch.Tensor):
            return codes.reshape(-1).tolist()
        return [int(c) for c in codes]


def _num_embeddings(model) -> int:
    quantize = getattr(model, "quantize_t", None)
    for holder in (quantize, model):
        n = getattr(holder, "n_embed", None)
        if n is not None:
            return int(n)
    if quantize is not None and hasattr(quantize, "embed"):
        return int(quantize.embed.shape[-1])
    raise ValueError("cannot find the codebook size (n_embed) of the VQ-VAE model")


class VQVAETokenizer:
    """Images <-> codes through the VQ-VAE (vqvae.load_model / img2code / code2img)."""

    def __init__(self, model_path: str, device: Union[str, torch.device] = "cpu"):
        import vqvae

        self.device = torch.device(device)
        self.model = vqvae.load_model(model_path).to(self.device).eval()
        self.num_tokens = _num_embeddings(self.model)

    def __len__(self) -> int:
        return self.num_tokens

    @torch.no_grad()
    def EncodeAsIds(self, img: torch.Tensor) -> torch.Tensor:
        """[b, 3, S, S] normalised images -> [b, h*w] codes."""
        import vqvae

        if img.dim() != 4:
            raise ValueError(f"expected images shaped [b, c, h, w], got {tuple(img.shape)}")
        return vqvae.img2code(self.model, img.to(self.device))

    @torch.no_grad()
    def DecodeIds(self, codes: Codes) -> torch.Tensor:
        """A square run of codes -> one de-normalised image [1, 3, H, W]."""
        import vqvae

        codes = torch.as_tensor(codes, dtype=torch.long, device=self.device).reshape(-1)
        s = sqrt_int(codes.numel())
        return vqvae.code2img(self.model, codes.view(1, s, s))

    def read_img(self, path: str, img_size: int = 256) -> torch.Tensor:
        import vqvae

        return vqvae.read_img(path, img_size).to(self.device)
