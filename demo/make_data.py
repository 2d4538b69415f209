"""Build the shipped demo model's data from the shapes grammar (demo.shapes).

    python -m demo.make_data captions --out data/demo/captions.txt
    python -m demo.make_data tokenizer --captions data/demo/captions.txt \
        --out pretrained/text_tokenizer/shapes
    python -m demo.make_data vqvae-images --out data/demo/vqvae_images.lmdb --num 24000
    python -m demo.make_data gpt --out data/demo/gpt.lmdb --vqvae VQVAE.pt \
        --txt-tokenizer-path TOK.model --num 200000
    python -m demo.make_data sr --out data/demo/sr.lmdb --vqvae ... --num 20000
    python -m demo.make_data held-out --out data/demo/held_out
    python -m demo.make_data examples --out assets/examples

Every step is deterministic in --seed and only uses training-split scenes (held-out
(colour, shape) pairs never appear), except ``held-out``, which writes the evaluation
prompts and their rendered images. Output LMDBs are written to ``<out>.tmp`` and renamed
when complete, so an interrupted step is simply run again.
"""

from __future__ import annotations

import argparse
import io
import itertools
import os
import random
import shutil
import sys
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np
import torch
from tqdm import tqdm

from demo.shapes import Scene, all_scenes, caption, render, render_array, sample_scenes

LANGUAGES = ("en", "zh")
VQVAE_CROP = 64


def _png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def write_lmdb(out: str, values: Iterable[bytes], commit_every: int = 5000) -> int:
    """Store values under keys "0", "1", ... plus "length" in a new LMDB at ``out``: written to
    ``<out>.tmp`` and renamed when complete, so an interrupted step leaves no partial LMDB."""
    import lmdb

    tmp = out.rstrip("/") + ".tmp"
    os.makedirs(os.path.dirname(os.path.abspath(tmp)), exist_ok=True)  # e.g. a new DEMO_DIR
    shutil.rmtree(tmp, ignore_errors=True)
    env = lmdb.open(tmp, map_size=1 << 36, subdir=True)
    count = 0
    txn = env.begin(write=True)
    for value in values:
        txn.put(str(count).encode(), value)
        count += 1
        if count % commit_every == 0:
            txn.commit()
            txn = env.begin(write=True)
    txn.put(b"length", str(count).encode())
    txn.commit()
    env.close()
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return count


def write_captions(out: str) -> int:
    """Every training scene's English and Chinese caption, one per line (tokenizer corpus)."""
    scenes = all_scenes("train")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for s in scenes:
            f.write(with_end_mark(caption(s, "en")) + "\n")
            f.write(with_end_mark(caption(s, "zh")) + "\n")
    os.replace(tmp, out)
    return 2 * len(scenes)


def train_tokenizer(captions_path: str, out_prefix: str, vocab_size: int) -> str:
    """sentencepiece (BPE) on the captions, the grammar's Chinese words kept whole.

    Chinese has no spaces, so plain BPE merges across words ("一个青色心形在一个") and ties
    colour to shape in one piece, which a held-out colour/shape pair would never have seen.
    """
    from data_utils.sp_tokenizer import train_text_tokenizer
    from demo.shapes import ZH_COLOURS, ZH_POSITIONS, ZH_RELATIONS, ZH_SHAPES, ZH_SIZES

    words = sorted(
        {w for d in (ZH_COLOURS, ZH_SHAPES, ZH_SIZES, ZH_RELATIONS) for w in d.values()}
        | {w[1:] for w in ZH_POSITIONS.values()},
        key=lambda w: (-len(w), w),
    )
    os.makedirs(os.path.dirname(os.path.abspath(out_prefix)), exist_ok=True)
    # trained under a temporary prefix and renamed: an interrupted run leaves no partial .model
    tmp = out_prefix + ".tmp"
    train_text_tokenizer(
        captions_path,
        tmp,
        vocab_size,
        model_type="bpe",
        character_coverage=1.0,
        user_defined_symbols=["<n>", ".", "。", *words],
    )
    os.replace(tmp + ".vocab", out_prefix + ".vocab")
    os.replace(tmp + ".model", out_prefix + ".model")
    return out_prefix + ".model"


def write_vqvae_images(
    out: str, num: int, seed: int, img_size: int, whole_size: Optional[int] = None, whole_only: bool = False
) -> int:
    """PNG crops for VQ-VAE training: random 64 px crops of scenes rendered at img_size
    (2 in 3) and at twice img_size (1 in 3, what the super-resolution model's output is
    encoded at). The VQ-VAE is convolutional, so it trains on crops and encodes any size.

    ``whole_size`` (e.g. 64, the base model's images) replaces the first of every three with
    a render at that size: the decoder then also learns the small shapes of whole 64 px
    images, which crops of bigger renders rarely show.

    ``whole_only``: every image a whole render at ``whole_size`` (or ``img_size``), the
    data of the base model's own VQ-VAE (its codes only ever see whole small scenes)."""
    rng = random.Random(seed + 17)
    scenes = sample_scenes(num, seed)
    sizes = (whole_size or img_size, img_size, 2 * img_size)
    if whole_only:
        sizes = sizes[:1]

    def crops():
        for i, scene in enumerate(tqdm(scenes, desc="rendering VQ-VAE images", mininterval=5)):
            size = sizes[i % len(sizes)]
            crop = min(VQVAE_CROP, size)
            x, y = rng.randrange(size - crop + 1), rng.randrange(size - crop + 1)
            yield _png(render(scene, size).crop((x, y, x + crop, y + crop)))

    return write_lmdb(out, crops())


class _Encoder:
    """VQ-VAE encoding of rendered scenes, cached per (scene, size): scenes repeat."""

    def __init__(self, vqvae_path: str, device: str):
        from vqvae import load_model

        self.model = load_model(vqvae_path, device=device).eval()
        self.device = device
        self.cache: Dict[tuple, np.ndarray] = {}

    @torch.no_grad()
    def encode(self, scenes: Sequence[Scene], size: int, batch: int = 256) -> List[np.ndarray]:
        todo = sorted({s for s in scenes if (s, size) not in self.cache}, key=lambda s: str(s))
        for k in tqdm(range(0, len(todo), batch), desc=f"encoding {size}px scenes", mininterval=5):
            chunk = todo[k : k + batch]
            from vqvae import img2code, normalize

            x = torch.from_numpy(np.stack([render_array(s, size) for s in chunk]))
            x = normalize(x.permute(0, 3, 1, 2).float().div(255)).to(self.device)
            codes = img2code(self.model, x)
            codes = codes.reshape(len(chunk), -1).cpu().numpy()
            for s, c in zip(chunk, codes):
                self.cache[(s, size)] = c.astype(np.int16)
        return [self.cache[(s, size)] for s in scenes]


def _tokenizer(vqvae_path: str, txt_tokenizer_path: str):
    from data_utils.unified_tokenizer import UnifiedTokenizer

    return UnifiedTokenizer(img_tokenizer_path=vqvae_path, txt_tokenizer_path=txt_tokenizer_path)


def with_end_mark(text: str) -> str:
    return text + ("。" if any("\u4e00" <= ch <= "\u9fff" for ch in text) else ".")


def gpt_rows(tok, scene_codes: np.ndarray, text: str, direction: str) -> np.ndarray:
    """text2image: [ROI1] text [size] [BOI1] codes [EOI1];
    image2text: [size] [BOI1] codes [EOI1] [ROI1] text + end mark (the caption template).

    A caption ends with a full stop ("." or "。"): the sampler only allows plain text after
    an image, so the end of a caption has to be a text piece (image2text cuts there)."""
    from data_utils.templates import TextCodeTemplate

    codes = np.asarray(scene_codes, dtype=np.int64)
    if direction == "text2image":
        ids = TextCodeTemplate(text, codes, tokenizer=tok)
    else:
        ids = np.concatenate(
            [np.asarray(tok.wrap_code(codes), dtype=np.int64), [tok["[ROI1]"]], tok(with_end_mark(text))]
        )
    return np.asarray(ids, dtype=np.int32)


def write_gpt_lmdb(
    out: str,
    num: int,
    seed: int,
    img_size: int,
    vqvae: str,
    txt_tokenizer_path: str,
    device: str,
    image2text_fraction: float = 0.35,
) -> int:
    """TokenizedDataset rows: text->image, and image->text with the given probability
    (captioning is the easier direction: it needs fewer samples); English or Chinese."""
    from data_utils.row_format import encode_row

    tok = _tokenizer(vqvae, txt_tokenizer_path)
    scenes = sample_scenes(num, seed)
    codes = _Encoder(vqvae, device).encode(scenes, img_size)
    rng = random.Random(seed + 1)

    def rows():
        for scene, code in zip(tqdm(scenes, desc="writing rows", mininterval=5), codes):
            text = caption(scene, rng.choice(LANGUAGES))
            direction = "image2text" if rng.random() < image2text_fraction else "text2image"
            yield encode_row(gpt_rows(tok, code, text, direction))

    return write_lmdb(out, rows())


def write_sr_lmdb(
    out: str,
    num: int,
    seed: int,
    img_size: int,
    vqvae: str,
    txt_tokenizer_path: str,
    device: str,
    windows_per_scene: int = 3,
    text_length: int = 0,
    low_level_fraction: float = 0.0,
) -> int:
    """Super-resolution rows (preprocess.rows.sr_row: what generation.magnify feeds the model):
    ``windows_per_scene`` different random windows of each scene encoded at img_size, each with
    its block of the scene encoded at twice the size (encoding at twice the size is the
    expensive part, so scenes are reused). With 16x16 codes a window is 8x8 -> 16x16, the
    length of the low-level super-resolution query at img_size (a half-size image, 8x8 codes,
    to a 16x16 image), so one model can serve both scripts if it also sees that query: with
    ``low_level_fraction`` > 0 that share of the rows are low-level rows instead
    (``low_level_sr_row``: the whole scene at half img_size -> at img_size); a window never
    shows a whole image (four image borders, shapes at half size). ``text_length`` pads every
    caption to that many tokens (the model's --sr-text-length)."""
    from data_utils.row_format import encode_row
    from preprocess.rows import low_level_sr_row, sr_layout, sr_positions, sr_row

    tok = _tokenizer(vqvae, txt_tokenizer_path)
    scenes = sample_scenes(-(-num // windows_per_scene), seed + 2)
    enc = _Encoder(vqvae, device)
    low, high = enc.encode(scenes, img_size), enc.encode(scenes, 2 * img_size)
    half = enc.encode(scenes, img_size // 2) if low_level_fraction > 0 else None
    grid = int(round(len(low[0]) ** 0.5))
    layout = sr_layout(grid)
    positions = sr_positions(layout)
    rng = random.Random(seed + 3)

    def rows():
        for i, scene in enumerate(tqdm(scenes, desc="writing rows", mininterval=5)):
            for position in rng.sample(positions, min(windows_per_scene, len(positions))):
                text_ids = tok(caption(scene, rng.choice(LANGUAGES)))
                if half is not None and rng.random() < low_level_fraction:
                    yield encode_row(low_level_sr_row(tok, text_ids, half[i], low[i], text_length))
                else:
                    yield encode_row(sr_row(tok, text_ids, low[i], high[i], position, layout, text_length))

    return write_lmdb(out, itertools.islice(rows(), num))


def write_held_out(out: str, seed: int, img_size: int, per_kind: int) -> int:
    """Evaluation prompts from held-out scenes: prompts_<kind>.txt (English; Chinese in
    prompts_<kind>_zh.txt) and images/<kind>_<i>.png renders with images.tsv."""
    rng = random.Random(seed)
    held = all_scenes("held-out")
    ones = [s for s in held if s.second is None]
    twos = [s for s in held if s.second is not None]
    os.makedirs(os.path.join(out, "images"), exist_ok=True)
    chosen = {"one": rng.sample(ones, per_kind), "two": rng.sample(twos, per_kind)}
    rows = []
    for kind, scenes in chosen.items():
        for lang in LANGUAGES:
            name = f"prompts_{kind}.txt" if lang == "en" else f"prompts_{kind}_{lang}.txt"
            with open(os.path.join(out, name), "w", encoding="utf-8") as f:
                f.writelines(caption(s, lang) + "\n" for s in scenes)
        for i, s in enumerate(scenes):
            for size in (img_size, 2 * img_size):
                path = os.path.join(out, "images", f"{kind}_{i}_{size}.png")
                render(s, size).save(path)
            rows.append(f"images/{kind}_{i}_{img_size}.png\t{caption(s, 'en')}\n")
    with open(os.path.join(out, "images.tsv"), "w", encoding="utf-8") as f:
        f.writelines(rows)
    return len(rows)


EXAMPLES = (  # (file name, caption): held-out scenes, so the demo model never saw them
    ("red_star", "a medium red star on the left on a white background"),
    ("yellow_heart", "a large yellow heart in the center on a gray background"),
    ("blue_diamond_cyan_circle", "a blue diamond above a cyan circle on a black background"),
    ("green_triangle", "a small green triangle in the bottom right corner on a black background"),
)


def write_examples(out: str, img_size: int) -> int:
    """The example images the input files of the generation scripts point at."""
    from demo.shapes import parse_caption

    os.makedirs(out, exist_ok=True)
    for name, text in EXAMPLES:
        render(parse_caption(text), img_size).save(os.path.join(out, f"{name}.png"))
    return len(EXAMPLES)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m demo.make_data", description="Build the shapes-grammar data for the demo model."
    )
    p.add_argument("step", choices=["captions", "tokenizer", "vqvae-images", "gpt", "sr", "held-out", "examples"])
    p.add_argument("--out", required=True)
    p.add_argument("--num", type=int, default=100000, help="rows / images to write")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--img-size", type=int, default=128, help="base image side in pixels")
    p.add_argument(
        "--whole-size", type=int, help="vqvae-images: 1 in 3 images a whole render of this side (the decoder's data)"
    )
    p.add_argument(
        "--whole-only",
        action="store_true",
        help="vqvae-images: every image a whole render (of --whole-size, else --img-size)",
    )
    p.add_argument("--vqvae", help="VQ-VAE checkpoint (gpt, sr)")
    p.add_argument("--txt-tokenizer-path", help="sentencepiece model (gpt, sr)")
    p.add_argument("--captions", help="caption file (tokenizer)")
    p.add_argument("--image2text-fraction", type=float, default=0.35, help="share of caption rows (gpt)")
    p.add_argument("--vocab-size", type=int, default=320, help="tokenizer pieces (tokenizer)")
    p.add_argument(
        "--sr-text-length",
        type=int,
        default=0,
        help="pad super-resolution captions to this many tokens (sr; the model's --sr-text-length)",
    )
    p.add_argument(
        "--low-level-fraction",
        type=float,
        default=0.0,
        help="sr: share of rows that are whole-image low-level super-resolution rows (half --img-size -> --img-size)",
    )
    p.add_argument("--per-kind", type=int, default=100, help="held-out prompts per kind")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = p.parse_args(argv)
    if a.step in ("gpt", "sr") and not (a.vqvae and a.txt_tokenizer_path):
        p.error(f"{a.step} needs --vqvae and --txt-tokenizer-path")
    if a.step == "captions":
        n = write_captions(a.out)
    elif a.step == "tokenizer":
        n = train_tokenizer(a.captions, a.out, a.vocab_size)
    elif a.step == "vqvae-images":
        n = write_vqvae_images(a.out, a.num, a.seed, a.img_size, a.whole_size, a.whole_only)
    elif a.step == "gpt":
        n = write_gpt_lmdb(
            a.out, a.num, a.seed, a.img_size, a.vqvae, a.txt_tokenizer_path, a.device, a.image2text_fraction
        )
    elif a.step == "sr":
        n = write_sr_lmdb(
            a.out,
            a.num,
            a.seed,
            a.img_size,
            a.vqvae,
            a.txt_tokenizer_path,
            a.device,
            text_length=a.sr_text_length,
            low_level_fraction=a.low_level_fraction,
        )
    elif a.step == "examples":
        n = write_examples(a.out, a.img_size)
    else:
        n = write_held_out(a.out, a.seed, a.img_size, a.per_kind)
    print(f"{a.step}: wrote {n} to {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
