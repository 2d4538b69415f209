"""The generation tasks for a caller that wants the results back rather than files (the web page).

Each function is one task of ``generation.generator.Generator`` built from its own blocks
(``parse``, ``guidance``, ``sample``, ``last_image``, ``captions``, ``rank_captions``,
``low_level_sequences``, ``sr_text``) and ``magnify``, so a request with seed S and the
settings of a script gives what ``generate_samples.py --seed S`` gives for that one query
line. A request runs on its own shallow copy of the Generator (its own random generator,
sampling settings and progress hook): concurrent requests share only the model.

Input from a client is untrusted: ``clean_text`` refuses ``[Image]`` parts (they name
server files) and overlong text, ``stage_image`` decodes an upload once, under a pixel
limit, into a PNG whose name the query language can hold.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import uuid
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

import numpy as np
import torch
from PIL import Image, ImageDraw, UnidentifiedImageError

from vqvae.image_io import center_crop, open_image, resize_shorter

from .generator import Generator
from .queries import QueryError, parse_region, region_mask, task_template
from .sampling import count_to_generate

MAX_TEXT_CHARS = 2000  # far beyond any model's positions; bounds the tokenizer's work on abuse
MAX_IMAGE_PIXELS = 6000 * 6000  # an upload larger than this is refused before decoding

Progress = Callable[[int, int], None]  # (tokens sampled so far, tokens to sample)


@dataclass(frozen=True)
class ScoredImage:
    """One text2image sample with its post-selection score."""

    image: np.ndarray
    """H x W x 3 uint8, the pixels generate_samples.py writes (before JPEG)."""
    score: float
    """log p(text | image) by the caption direction (inverse_prompt_score); higher is better."""
    index: int
    """Position in the sampled batch: generate_samples.py writes this sample as ``<index>.jpg``."""


@dataclass(frozen=True)
class Captions:
    """image2text's captions, best first when the checkpoint ranks them."""

    captions: List[str]
    scores: Optional[List[float]]
    """The ranking scores, None when the captions are in sampled order."""
    ranked_by: str
    """What the scores are, as image2text.sh prints it."""


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """[1, 3, H, W] or [3, H, W] in [0, 1] -> H x W x 3 uint8, rounded as vqvae.save_image does."""
    x = image.detach().float().cpu().reshape(-1, *image.shape[-3:])[0]
    return x.clamp(0, 1).mul(255).add(0.5).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


def clean_text(text: Optional[str], what: str = "prompt") -> str:
    """Untrusted text as one query field: whitespace runs (newlines, TABs) become one space.

    Raises QueryError for empty or overlong text and for ``[Image...]`` parts, which would
    make the server read a file the client names."""
    text = " ".join((text or "").split())
    if not text:
        raise QueryError(f"the {what} is empty: type a description of the image")
    if len(text) > MAX_TEXT_CHARS:
        raise QueryError(f"the {what} is {len(text)} characters; shorten it (the model reads a few dozen words)")
    if any(part.startswith("[Image") for part in text.split(" ")):
        raise QueryError(f"the {what} may not hold [Image] parts: upload the image instead")
    return text


def stage_image(path: Optional[str], folder: str, name: str = "the upload") -> str:
    """The image at ``path`` (an upload) decoded once and written as ``<folder>/<uuid>.png``.

    Why: the query language splits on spaces and ``]``, so an upload's own name cannot go
    into a query; decoding here also refuses a file that is not an image or that would
    decode to more than MAX_IMAGE_PIXELS, with a message that names no server path.
    generate_samples.py reads the PNG exactly as it reads the original (RGB, alpha dropped).
    """
    if not path:
        raise QueryError("no image: upload one (PNG, JPEG, WebP, ...)")
    try:
        with Image.open(path) as probe:
            width, height = probe.size
    except Image.DecompressionBombError:
        raise QueryError(f"{name} has too many pixels to be read safely") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise QueryError(f"{name} is not an image file Pillow can read") from None
    if width * height > MAX_IMAGE_PIXELS:
        raise QueryError(f"{name} is {width}x{height} pixels; at most {MAX_IMAGE_PIXELS:,} pixels are read")
    try:
        image = open_image(path)
    except ValueError as exc:
        reason = str(exc).split(": ", 1)[-1]
        raise QueryError(f"{name} cannot be read: {reason}") from None
    os.makedirs(folder, exist_ok=True)
    staged = os.path.join(folder, f"{uuid.uuid4().hex}.png")
    image.save(staged, format="PNG")
    return staged


def as_read(path: str, size: int) -> Image.Image:
    """The image as a task reads it (shorter side to ``size``, centre crop), for display."""
    return center_crop(resize_shorter(open_image(path), size), size)


def bicubic(path: str, size: int, out_size: int) -> np.ndarray:
    """The input as the model reads it (``size`` px), upscaled bicubically to ``out_size``:
    the baseline shown beside super-resolution."""
    return np.asarray(as_read(path, size).resize((out_size, out_size), Image.BICUBIC))


def for_request(
    gen: Generator,
    seed: int,
    total: int,
    on_progress: Optional[Progress] = None,
    temperature: Optional[float] = None,
    top_k: Optional[int] = None,
) -> Generator:
    """A copy of ``gen`` seeded with ``seed`` (as generate_samples.py --seed seeds it) whose
    progress hook reports (done, total) tokens; ``temperature`` / ``top_k`` override the flags'."""
    request = copy.copy(gen)
    request.generator = torch.Generator(device=gen.device).manual_seed(int(seed))
    changes = {k: v for k, v in (("temperature", temperature), ("top_k", top_k)) if v is not None}
    if changes:
        if not 0 < changes.get("temperature", 1.0) < float("inf"):
            raise QueryError("the temperature must be a positive number")
        if changes.get("top_k", 0) < 0:
            raise QueryError("top-k must be 0 (all tokens) or more")
        request.config = dataclasses.replace(gen.config, **changes)
    done = [0]

    def tick(rows: int) -> None:
        done[0] += rows
        if on_progress is not None:
            on_progress(min(done[0], total), total)

    request.on_token = tick
    return request


def _check_count(n: int, most: int) -> int:
    n = int(n)
    if not 1 <= n <= most:
        raise QueryError(f"ask for 1 to {most} samples, not {n}")
    return n


def text2image(
    gen: Generator,
    prompt: str,
    n: int,
    seed: int,
    scorer: Optional[Generator] = None,
    temperature: Optional[float] = None,
    top_k: Optional[int] = None,
    on_progress: Optional[Progress] = None,
    most: int = 64,
) -> List[ScoredImage]:
    """``n`` images for ``prompt``, best first by post-selection: ``inverse_prompt_score`` of
    each sample's codes for the prompt under ``scorer`` (the caption direction; default
    ``gen``, a model trained on both directions)."""
    prompt = clean_text(prompt)
    n = _check_count(n, most)
    ids = gen.parse(task_template("text2image", gen.grid).format(prompt))
    scorer = scorer or gen
    text_ids = scorer.tokenizer.parse_query(prompt)
    scorer.caption_scores(text_ids, [])  # a prompt too long to score is refused before sampling
    request = for_request(gen, seed, count_to_generate(ids) * n, on_progress, temperature, top_k)
    seqs = request.sample(ids, batch_size=n, desc="web text2image", guidance=request.guidance(ids, "text2image"))
    boi = ids.index(gen.tokenizer["[BOI1]"])
    scores = scorer.caption_scores(text_ids, seqs[:, boi + 1 : boi + 1 + gen.grid**2].tolist())
    order = sorted(range(n), key=lambda i: -scores[i])
    return [ScoredImage(to_uint8(request.last_image(seqs[i])), scores[i], i) for i in order]


def image2text(
    gen: Generator, image_path: str, n: int, seed: int, on_progress: Optional[Progress] = None, most: int = 64
) -> Captions:
    """``n`` captions of the (staged) image, ranked as image2text.sh ranks them when the
    checkpoint says so (--caption-rerank), else in sampled order."""
    n = _check_count(n, most)
    ids = gen.parse(task_template("image2text", gen.grid).format(image_path))
    request = for_request(gen, seed, count_to_generate(ids) * n, on_progress)
    seqs = request.sample(ids, batch_size=n, desc="web image2text", guidance=request.guidance(ids, "image2text"))
    captions = request.captions(ids, seqs)
    if not gen.cfg.caption_rerank:
        return Captions(captions, None, "sampled order")
    ranked = request.rank_captions(ids, captions)
    weight = request.caption_rerank_weight()
    how = "log p(image | caption)" + (f" + {weight:g} log p(caption | image)" if weight else "")
    return Captions([c for _, c in ranked], [s for s, _ in ranked], how)


def super_resolution(
    gen: Generator, text: str, image_path: str, seed: int, on_progress: Optional[Progress] = None
) -> np.ndarray:
    """The (staged) image magnified window by window, as Generator.super_resolution does
    for one sample: img_size -> 2 x img_size."""
    text = clean_text(text, "caption")
    t = gen.tokenizer
    prefix, low = gen.sr_query(text, image_path)
    request = for_request(gen, seed, (2 * gen.grid) ** 2, on_progress)
    hi = request.magnify_codes(prefix, low, desc="web window")
    return to_uint8(t.img_tokenizer.DecodeIds(hi[0]))


def low_level_super_resolution(
    gen: Generator,
    text: str,
    image_path: str,
    n: int,
    seed: int,
    on_progress: Optional[Progress] = None,
    most: int = 64,
) -> List[np.ndarray]:
    """``n`` redraws at img_size of the (staged) image read at half img_size."""
    text = clean_text(text, "caption")
    n = _check_count(n, most)
    request = for_request(gen, seed, (gen.grid**2) * n, on_progress)
    seqs = request.low_level_sequences(text, image_path, batch_size=n, desc="web low-level")
    return [to_uint8(request.last_image(s)) for s in seqs]


def inpainting(
    gen: Generator,
    text: str,
    image_path: str,
    box: str,
    n: int,
    seed: int,
    on_progress: Optional[Progress] = None,
    most: int = 64,
) -> List[np.ndarray]:
    """``n`` versions of the (staged) image with the box ``x0,y0,x1,y1`` (fractions of the
    side) drawn again from ``text``, the rest kept, as Generator.inpainting does."""
    text = clean_text(text)
    n = _check_count(n, most)
    region = parse_region(box or "")
    ids = gen.parse(task_template("inpainting", gen.grid).format(text, image_path))
    boi = ids.index(gen.tokenizer["[BOI1]"])
    codes = [-1 if hole else c for c, hole in zip(ids[boi + 1 :], region_mask(region, gen.grid))]
    ids = ids[: boi + 1] + codes
    request = for_request(gen, seed, count_to_generate(ids) * n, on_progress)
    seqs = request.sample(ids, batch_size=n, desc="web inpainting")
    return [to_uint8(request.last_image(s)) for s in seqs]


def outline(image: Image.Image, box: Tuple[float, float, float, float], side: int = 256) -> np.ndarray:
    """``image`` enlarged (nearest) to at least ``side`` px with the region (fractions of the
    side) outlined, to show what is redrawn."""
    out = image.convert("RGB")
    if out.width < side:
        out = out.resize((side, side * out.height // out.width), Image.NEAREST)
    w, h = out.size
    x0, y0, x1, y1 = box
    ImageDraw.Draw(out).rectangle(
        (x0 * w, y0 * h, min(x1 * w, w - 1), min(y1 * h, h - 1)), outline=(255, 0, 255), width=max(1, w // 128)
    )
    return np.asarray(out)
