"""Turn a training checkpoint into a small release folder (what pretrained/ ships).

    python -m training.export_release gpt SRC DST [--dtype float16] [--average OTHER ...] \
        [--img-tokenizer-path VQVAE.pt] [--txt-tokenizer-path TOK.model] [--guidance-scale TASK=S ...] \
        [--guidance-top-k TASK=K ...] [--caption-rerank] [--caption-rerank-weight W] \
        [--post-select N] [--top-k K]
    python -m training.export_release vqvae SRC.pt DST.pt

gpt: reads the tracked iteration of SRC (the original layout), keeps only the weights
(``module``) and the iteration, stores floating tensors in --dtype, and writes
``DST/<iteration>/mp_rank_00_model_states.pt`` + the tracker file, then SRC's
model_config.json with tokenizer paths rewritten relative to DST (or replaced by the
given ones). --average (repeatable) ships the mean of SRC's weights and those of other
checkpoints of the same model (weight averaging along one run, e.g. an earlier and a
later checkpoint); the folder keeps SRC's iteration and config. --guidance-scale
(repeatable) records generate_samples.py's --guidance-scale default for a task
(text2image, image2text) as measured for this model, in model_config.json, and
--guidance-top-k (repeatable) its --guidance-top-k; --caption-rerank records that
image2text ranks its captions by log p(image | caption) by default, --caption-rerank-weight
W that it adds W log p(caption | image) to that score (all of these only for a model
trained on both directions). --post-select N records text2image's post-selection (best of N
by the caption direction, same models), --top-k K the sampling top-k of every task (e.g. 1 for
a super-resolution model that should copy rather than invent).
vqvae: the weights and constructor config of a vqvae.train checkpoint, without optimizer
and RNG state (fp32: nearest-code search is sensitive to rounding).
Every file is written atomically.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Dict, List, Optional, Sequence, Tuple

from arch.checkpoint import CheckpointError, StateDict, load_checkpoint_state, read_tracker, save_checkpoint
from arch.model_config import model_config_path, read_model_config, write_model_config
from common.dtypes import DTYPES
from common.fileio import torch_save_atomic


def export_gpt(
    src: str,
    dst: str,
    dtype: str = "float16",
    img_tokenizer_path: Optional[str] = None,
    txt_tokenizer_path: Optional[str] = None,
    average: Sequence[str] = (),
    guidance_scale: Optional[Dict[str, float]] = None,
    caption_rerank: bool = False,
    caption_rerank_weight: Optional[float] = None,
    guidance_top_k: Optional[Dict[str, int]] = None,
    post_select: Optional[int] = None,
    top_k: Optional[int] = None,
) -> str:
    tag, _ = read_tracker(src)
    if tag is None:
        raise CheckpointError(f"{src}: no latest_checkpointed_iteration.txt; nothing to export")
    state = load_checkpoint_state(src)
    if average:
        state = average_states([state] + [load_checkpoint_state(o) for o in average], [src, *average])
    cast = {k: (v.to(DTYPES[dtype]) if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    config = read_model_config(src)
    if config is None:
        raise CheckpointError(f"{model_config_path(src)}: missing; export needs the model shape recorded by training")
    os.makedirs(dst, exist_ok=True)
    for key, given in (("img_tokenizer_path", img_tokenizer_path), ("txt_tokenizer_path", txt_tokenizer_path)):
        value = given
        if value is None and config.get(key):
            value = config[key] if os.path.isabs(config[key]) else os.path.join(src, config[key])
        if value:
            if not os.path.exists(value):
                raise CheckpointError(f"{key} {value}: no such file")
            config[key] = os.path.relpath(os.path.abspath(value), os.path.abspath(dst))
    if guidance_scale:
        config["guidance_scale"] = {**config.get("guidance_scale", {}), **guidance_scale}
    if guidance_top_k:
        config["guidance_top_k"] = {**config.get("guidance_top_k", {}), **guidance_top_k}
    if caption_rerank:
        config["caption_rerank"] = True
    if caption_rerank_weight is not None:
        config["caption_rerank_weight"] = caption_rerank_weight
    if post_select is not None:
        config["post_select"] = post_select
    if top_k is not None:
        config["top_k"] = top_k
    file = save_checkpoint(dst, tag, cast)
    write_model_config(dst, config)
    return file


def average_states(states: Sequence[StateDict], names: Sequence[str]) -> StateDict:
    """The element-wise mean of state dicts of one model (fp32 sums; integer buffers from the first)."""
    first = states[0]
    for state, name in zip(states[1:], names[1:]):
        if state.keys() != first.keys():
            odd = sorted(state.keys() ^ first.keys())[0]
            raise CheckpointError(f"{name}: key {odd} differs from {names[0]}; only checkpoints of one model average")
        for k, v in state.items():
            if v.shape != first[k].shape:
                raise CheckpointError(
                    f"{name}: {k} has shape {tuple(v.shape)}, {names[0]} "
                    f"{tuple(first[k].shape)}; only checkpoints of one model average"
                )
    out = {}
    for k, v in first.items():
        if v.is_floating_point():
            out[k] = (sum(s[k].float() for s in states) / len(states)).to(v.dtype)
        else:
            out[k] = v
    return out


def export_vqvae(src: str, dst: str) -> str:
    from vqvae.api import read_checkpoint

    try:
        sd, config, _ = read_checkpoint(src)
    except ValueError as exc:
        raise CheckpointError(str(exc)) from None
    if config is None:
        raise CheckpointError(f"{src}: no stored config (not a vqvae.train checkpoint)")
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    torch_save_atomic({"model": sd, "config": config}, dst)
    return dst


def _split_task(text: str, letter: str) -> Tuple[str, str]:
    """``text2image=...`` -> ("text2image", "..."); any other task is refused."""
    task, _, value = text.partition("=")
    if task not in ("text2image", "image2text"):
        raise argparse.ArgumentTypeError(f"{text!r}: use text2image={letter} or image2text={letter}")
    return task, value


def task_scale(text: str) -> Tuple[str, float]:
    """``image2text=0.5`` -> ("image2text", 0.5)."""
    task, value = _split_task(text, "S")
    try:
        return task, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: S must be a number, e.g. image2text=0.5") from None


def task_top_k(text: str) -> Tuple[str, int]:
    """``text2image=2`` -> ("text2image", 2)."""
    task, value = _split_task(text, "K")
    try:
        k = int(value)
    except ValueError:
        k = -1
    if k < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: K must be a whole number >= 0, e.g. text2image=2")
    return task, k


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.export_release", description=__doc__.split("\n\n")[0])
    p.add_argument("kind", choices=["gpt", "vqvae"])
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--dtype", default="float16", choices=sorted(DTYPES))
    p.add_argument(
        "--average",
        action="append",
        default=[],
        metavar="OTHER",
        help="gpt: average SRC's weights with this checkpoint's (repeatable)",
    )
    p.add_argument("--img-tokenizer-path")
    p.add_argument("--txt-tokenizer-path")
    p.add_argument(
        "--guidance-scale",
        action="append",
        default=[],
        metavar="TASK=S",
        type=task_scale,
        help="gpt: the --guidance-scale generation uses for TASK by default (repeatable)",
    )
    p.add_argument(
        "--guidance-top-k",
        action="append",
        default=[],
        metavar="TASK=K",
        type=task_top_k,
        help="gpt: the --guidance-top-k generation uses for TASK by default (repeatable)",
    )
    p.add_argument(
        "--caption-rerank",
        action="store_true",
        help="gpt: image2text ranks captions by log p(image | caption) by default",
    )
    p.add_argument(
        "--caption-rerank-weight",
        type=float,
        metavar="W",
        help="gpt: ... + W log p(caption | image) (generate_samples.py's default)",
    )
    p.add_argument(
        "--post-select",
        type=int,
        metavar="N",
        help="gpt: text2image keeps the best of N images by log p(text | image) (--post-select's default)",
    )
    p.add_argument("--top-k", type=int, metavar="K", help="gpt: the sampling --top_k generation uses by default")
    a = p.parse_args(argv)
    for flag, value in (("--post-select", a.post_select), ("--top-k", a.top_k)):
        if value is not None and value < 0:
            p.error(f"{flag} {value}: must be 0 or more")
    try:
        if a.kind == "gpt":
            out = export_gpt(
                a.src,
                a.dst,
                a.dtype,
                a.img_tokenizer_path,
                a.txt_tokenizer_path,
                a.average,
                dict(a.guidance_scale),
                a.caption_rerank,
                a.caption_rerank_weight,
                dict(a.guidance_top_k),
                a.post_select,
                a.top_k,
            )
        else:
            if (
                a.average
                or a.guidance_scale
                or a.guidance_top_k
                or a.caption_rerank
                or a.caption_rerank_weight is not None
                or a.post_select is not None
                or a.top_k is not None
            ):
                p.error(
                    "--average, --guidance-scale/-top-k, --caption-rerank(-weight), --post-select and --top-k "
                    "are for gpt exports"
                )
            out = export_vqvae(a.src, a.dst)
    except (CheckpointError, OSError, ValueError) as exc:
        print(f"export_release: error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {out} ({os.path.getsize(out) / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
