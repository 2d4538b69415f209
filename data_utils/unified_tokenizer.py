"""One id space for images, text and command tokens (CogView's UnifiedTokenizer).

Layout, with I image codes and T text pieces: [0, I) image codes, [I, I+T) text
(sentencepiece id + I), then the 27 command tokens in COMMAND_TOKENS order. With the
released sizes (8192 + 50000) [PAD] is 58192 and there are 58219 tokens.
"""

from __future__ import annotations

import logging
import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .image_tokenizers import FakeTokenizer, VQVAETokenizer, sqrt_int
from .sp_tokenizer import SentencePieceTokenizer, resolve_txt_tokenizer_path

logger = logging.getLogger(__name__)

COMMAND_TOKENS: Tuple[str, ...] = (
    "[PAD]",
    "[BOI1]",
    "[BOI2]",
    "[BOI3]",  # begin of image n
    "[EOI1]",
    "[EOI2]",
    "[EOI3]",  # end of image n
    "[ROI1]",
    "[ROI2]",
    "[ROI3]",  # reference text
    "[SEP]",
    "[MASK]",
    "[CLS]",
    "[ENC]",
    "[TINY]",
    "[SMALL]",
    "[BASE]",
    "[BIG]",  # 8x8, 16x16, 32x32, 64x64 code grids
    "[POS0]",
    "[POS1]",
    "[POS2]",
    "[POS3]",
    "[POS4]",
    "[POS5]",
    "[POS6]",
    "[POS7]",
    "[POS8]",
)
SIZE_TOKENS = {8: "[TINY]", 16: "[SMALL]", 32: "[BASE]", 64: "[BIG]"}

CodeLike = Union[List[int], np.ndarray, torch.Tensor]


class UnifiedTokenizer:
    """Encode/decode text and images into the shared vocabulary; parse generation queries."""

    def __init__(
        self,
        img_tokenizer_path: Optional[str] = None,
        txt_tokenizer_path: Optional[Union[str, SentencePieceTokenizer]] = None,
        device: Union[str, torch.device] = "cpu",
        img_tokenizer_num_tokens: Optional[int] = None,
    ):
        self.device = device
        if img_tokenizer_path is not None:
            self.img_tokenizer = VQVAETokenizer(img_tokenizer_path, device=device)
        elif img_tokenizer_num_tokens is not None:
            # training on pre-tokenized data: only the VQ-VAE vocabulary size is needed
            self.img_tokenizer = FakeTokenizer(img_tokenizer_num_tokens)
        else:
            raise ValueError(
                "UnifiedTokenizer needs an image tokenizer: pass "
                "--img-tokenizer-path (a VQ-VAE checkpoint) or "
                "--img-tokenizer-num-tokens (its codebook size)"
            )
        if isinstance(txt_tokenizer_path, SentencePieceTokenizer):
            self.txt_tokenizer = txt_tokenizer_path
        else:
            self.txt_tokenizer = SentencePieceTokenizer(resolve_txt_tokenizer_path(txt_tokenizer_path))
        self.num_image_tokens = self.img_tokenizer.num_tokens
        self.num_text_tokens = self.txt_tokenizer.num_tokens
        self.num_command_tokens = len(COMMAND_TOKENS)
        self.command_offset = self.num_image_tokens + self.num_text_tokens
        self.num_tokens = self.command_offset + self.num_command_tokens
        self.command_tokens: Dict[str, int] = {name: self.command_offset + i for i, name in enumerate(COMMAND_TOKENS)}

    # ---- vocabulary -------------------------------------------------------------------
    def __getitem__(self, command_token: str) -> int:
        try:
            return self.command_tokens[command_token]
        except KeyError:
            raise KeyError(f"unknown command token {command_token!r}; known: {', '.join(COMMAND_TOKENS)}") from None

    def __len__(self) -> int:
        return self.num_tokens

    def padded_vocab_size(self, divisible_by: int = 128, mp_size: int = 1) -> int:
        """Smallest multiple of divisible_by * mp_size that holds every token, as the original pads the vocabulary."""
        multiple = int(divisible_by) * int(mp_size)
        if multiple <= 0:
            return self.num_tokens
        return -(-self.num_tokens // multiple) * multiple

    # ---- encoding ---------------------------------------------------------------------
    def __call__(self, inputs, process_fn: Optional[Callable[[str], str]] = None):
        """Text -> ids; an image tensor [c, h, w] or [b, c, h, w] -> [b, h*w] codes."""
        if isinstance(inputs, torch.Tensor):
            if inputs.dim() == 3:
                inputs = inputs.unsqueeze(0)
            return self.img_tokenizer.EncodeAsIds(inputs)
        return self.EncodeAsIds(inputs, process_fn=process_fn)

    def code_grid_side(self, img_size: int, device="cpu") -> int:
        """Codes per side of an ``img_size`` image: the VQ-VAE's answer when it is loaded,
        else img_size // 8 (the released and demo VQ-VAEs' downsampling)."""
        if getattr(self.img_tokenizer, "model", None) is None:
            return img_size // 8
        with torch.no_grad():
            codes = self(torch.zeros(1, 3, img_size, img_size, device=device))
        return int(round(codes.numel() ** 0.5))

    def EncodeAsIds(self, text: str, process_fn: Optional[Callable[[str], str]] = None) -> List[int]:
        """Plain text (command tokens are NOT recognised here) -> unified ids."""
        if process_fn is not None:
            text = process_fn(text)
        offset = self.num_image_tokens
        return [x + offset for x in self.txt_tokenizer.EncodeAsIds(text)]

    # ---- decoding ---------------------------------------------------------------------
    def DecodeIds(self, ids: Sequence[int]) -> Tuple[List[str], list]:
        """Ids -> (texts and command-token names in order, images).

        A command token flushes pending text; an [EOI*] also flushes pending image codes
        into one image (a VQ-VAE decode of the square grid; the code list itself when
        only the vocabulary size is known or the run is not a square grid).
        """
        texts, images, img_buffer, txt_buffer = [], [], [], []

        def flush_text():
            if txt_buffer:
                texts.append(self.txt_tokenizer.DecodeIds(txt_buffer))
                txt_buffer.clear()

        def flush_image():
            if img_buffer:
                try:
                    images.append(self.img_tokenizer.DecodeIds(list(img_buffer)))
                except ValueError as exc:  # e.g. a run of codes that is not a square grid
                    logger.warning("cannot decode %d image codes (%s); returning the codes", len(img_buffer), exc)
                    images.append(list(img_buffer))
                img_buffer.clear()

        for x in ids.tolist() if isinstance(ids, (np.ndarray, torch.Tensor)) else ids:
            x = int(x)
            if x < 0 or x >= self.num_tokens:
                raise ValueError(f"id {x} is outside the vocabulary [0, {self.num_tokens})")
            if x >= self.command_offset:
                name = COMMAND_TOKENS[x - self.command_offset]
                if name.startswith("[EOI"):
                    flush_image()
                flush_text()
                texts.append(name)
            elif x < self.num_image_tokens:
                img_buffer.append(x)
            else:
                txt_buffer.append(x - self.num_image_tokens)
        flush_image()
        flush_text()
        return texts, images

    # ---- layout helpers ---------------------------------------------------------------
    def wrap_code(self, code: CodeLike, idx: int = 1) -> CodeLike:
        """[size token, BOI{idx}] + code + [EOI{idx}], keeping the container type."""
        if isinstance(code, torch.Tensor):
            n = code.numel()
        elif isinstance(code, np.ndarray):
            n = code.size
        else:
            n = len(code)
        side = sqrt_int(n)
        if side not in SIZE_TOKENS:
            raise ValueError(f"{n} codes ({side}x{side}) have no size token; expected 8x8, 16x16, 32x32 or 64x64")
        if idx not in (1, 2, 3):
            raise ValueError(f"image index must be 1, 2 or 3, got {idx}")
        head = [self.command_tokens[SIZE_TOKENS[side]], self.command_tokens[f"[BOI{idx}]"]]
        tail = [self.command_tokens[f"[EOI{idx}]"]]
        if isinstance(code, list):
            return head + code + tail
        if isinstance(code, np.ndarray):
            return np.concatenate((np.array(head), code.reshape(-1), np.array(tail)), axis=0)
        if isinstance(code, torch.Tensor):
            flat = code.reshape(-1)
            return torch.cat(
                (
                    torch.tensor(head, dtype=flat.dtype, device=flat.device),
                    flat,
                    torch.tensor(tail, dtype=flat.dtype, device=flat.device),
                )
            )
        raise ValueError(f"wrap_code expects a list, numpy array or tensor, got {type(code)}")

    # ---- generation queries -----------------------------------------------------------
    def parse_query(self, query: str, img_size: int = 256) -> List[int]:
        """The query mini-language of generate_samples.py -> ids, -1 marking tokens to fill.

        Parts are separated by single spaces: a command-token name ([MASK] -> -1),
        ``[MASK]*N`` (N x -1), ``[Image]path`` (all codes of the image),
        ``[ImageN]path`` (first N codes kept, the rest -1), or text. Consecutive text
        parts are joined with single spaces and encoded together; a command token or an
        image part ends such a run. An image path may hold spaces (it runs on to the next
        command token).
        """
        ret: List[int] = []
        text_buffer: List[str] = []

        def flush_text():
            if text_buffer:
                ret.extend(self.EncodeAsIds(" ".join(text_buffer)))
                text_buffer.clear()

        parts = query.split(" ")
        index = 0
        while index < len(parts):
            part = parts[index]
            index += 1
            if part.startswith("[Image"):
                # a path may hold spaces: it runs on to the next command token (see _image_path_parts)
                taken = _image_path_parts(part, parts[index:], self.command_tokens)
                part = " ".join([part, *parts[index : index + taken]])
                index += taken
            if part in self.command_tokens:
                flush_text()
                ret.append(-1 if part == "[MASK]" else self.command_tokens[part])
            elif part.startswith("[MASK]*"):
                count = _parse_count(part[7:], part)
                if count <= 0:
                    raise ValueError(f"{part!r} in query: the [MASK] count must be positive")
                flush_text()
                ret.extend([-1] * count)
            elif part.startswith("[Image"):
                # the original did not flush here, moving earlier text behind the image
                codes = self._image_part(part, img_size)
                flush_text()
                ret.extend(codes)
            else:
                text_buffer.append(part)
        flush_text()
        return ret

    def _image_part(self, part: str, img_size: int) -> List[int]:
        """``[Image]path`` / ``[ImageN]path`` -> the image's codes, all but N set to -1."""
        rest = part[len("[Image") :]
        if "]" not in rest or rest.count("]") != 1:
            raise ValueError(f"{part!r} in query: expected [Image]path or [ImageN]path (the path may not contain ']')")
        num, path = rest.split("]")
        if not path:
            raise ValueError(f"{part!r} in query: no image path after ']'")
        keep = None if num == "" else _parse_count(num, part)
        if keep is not None and keep < 0:
            raise ValueError(f"{part!r} in query: the number of kept codes must be >= 0")
        img = self.img_tokenizer.read_img(path, img_size=img_size)
        codes = self.img_tokenizer.EncodeAsIds(img)[0].reshape(-1).tolist()
        if keep is not None:
            codes[keep:] = [-1] * max(0, len(codes) - keep)
        return codes


def _image_path_parts(first: str, following: Sequence[str], command_tokens: Dict[str, int]) -> int:
    """How many of the space-separated ``following`` parts belong to the image path begun in
    ``first`` (``[Image]path``).

    Paths come from TAB-separated fields and may hold spaces, but the query language splits on
    spaces. The path runs on to the next command token (every template ends an image there or at
    the end of the query); when that whole run is not a file, the longest run that is one wins, so
    a query with text after an existing image's path (``[Image]a.png more text``) reads as before.
    """
    run = 0
    while run < len(following) and not _ends_image_path(following[run], command_tokens):
        run += 1
    if run == 0:
        return 0
    head = first[first.index("]") + 1 :] if "]" in first else first
    for taken in range(run, -1, -1):
        if os.path.isfile(" ".join([head, *following[:taken]])):
            return taken
    return run


def _ends_image_path(part: str, command_tokens: Dict[str, int]) -> bool:
    return part in command_tokens or part.startswith(("[MASK]*", "[Image"))


def _parse_count(text: str, part: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(
            f"{part!r} in query: {text!r} is not an integer count (parts are "
            "separated by spaces, e.g. '[MASK]*2 [BASE]')"
        ) from None


_TOKENIZER: Optional[UnifiedTokenizer] = None


def get_tokenizer(args=None) -> UnifiedTokenizer:
    """The process-wide tokenizer, built from args (img/txt tokenizer paths, device) once."""
    global _TOKENIZER
    if _TOKENIZER is None:
        if args is None:
            raise RuntimeError(
                "no tokenizer yet: call get_tokenizer(args) or set_tokenizer() "
                "before using templates/datasets without an explicit tokenizer"
            )
        _TOKENIZER = UnifiedTokenizer(
            args.img_tokenizer_path,
            txt_tokenizer_path=args.txt_tokenizer_path,
            device=args.device,
            img_tokenizer_num_tokens=args.img_tokenizer_num_tokens,
        )
    return _TOKENIZER


def set_tokenizer(tokenizer: Optional[UnifiedTokenizer]) -> None:
    """Install (or with None, forget) the process-wide tokenizer."""
    global _TOKENIZER
    _TOKENIZER = tokenizer
