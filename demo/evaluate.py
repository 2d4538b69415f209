"""Evaluate the shipped demo models on held-out shapes scenes (scripts/eval_demo.sh).

    python -m demo.evaluate [--model pretrained/cogview/cogview-demo]
        [--sr-model pretrained/cogview/cogview-demo-sr] [--prompts 100] [--write-results [FILE]]

Every scored prompt and image comes from held-out scenes (demo.shapes.HELD_OUT_PAIRS: a
(colour, shape) pair the models never saw). Images are scored by the grammar checker
(demo.checker), captions by parsing them back into scenes.

- vqvae ceiling: checker accuracy on VQ-VAE reconstructions of the rendered scenes;
- text2image: the first image text2image.sh returns for each prompt (one- and two-object,
  English and Chinese): the best of the checkpoint's --post-select draws by the caption
  score, or its one draw; the expected rate of a single draw beside it;
- image2text: the most likely caption of each rendered image (top-k 1), every attribute
  must match; one sampled caption per image is reported beside it;
- post-selection: the best of N draws per prompt by inverse_prompt_score vs a random pick
  (the mean over the N): the checkpoint's --post-select N on the text2image draws, else 8
  draws on half the prompts;
- the same text2image / image2text scores on training-split scenes (--train-prompts; pairs
  the model saw), reported beside the held-out ones without a target: the difference is
  what generalising to unseen (colour, shape) pairs costs;
- super-resolution: PSNR of magnify's output against the render at twice the size, vs
  bicubic upsampling of the low-resolution image: the image its codes decode to (the same
  information magnify gets) and the true render; low-level super-resolution (half the SR
  model's size -> its size) against bicubic of the true render; for both, how often the
  checker reads the shapes right in the output and in the input. Sampled as the scripts
  sample: the checkpoint's recorded top-k (model_config.json) unless --sr-top-k is given.
Numbers go to stdout as JSON and, with --write-results, to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import sys
import time
from collections import defaultdict
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from bench.results import add_write_results_argument, write_section
from demo.checker import check_image
from demo.shapes import Scene, all_scenes, caption, parse_caption, render
from generation.queries import size_token

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

LANGUAGES = ("en", "zh")
RANKED_CAPTIONS = 8  # image2text.sh's BATCH_SIZE


def _to_uint8(image: torch.Tensor) -> np.ndarray:
    """[1, 3, H, W] or [3, H, W] in [0, 1] -> H x W x 3 uint8."""
    x = image.detach().float().reshape(-1, *image.shape[-3:])[0].clamp(0, 1)
    return (x.permute(1, 2, 0).cpu().numpy() * 255 + 0.5).astype(np.uint8)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-10)))


def _rate(flags: Sequence[Dict[str, bool]]) -> Dict[str, float]:
    keys = flags[0].keys() if flags else []
    return {k: round(100.0 * sum(f[k] for f in flags) / len(flags), 1) for k in keys}


def caption_flags(truth: Scene, got: Optional[Scene]) -> Dict[str, bool]:
    """Which attributes a generated caption (parsed; None when it is outside the grammar)
    gets right: one object background/colour/shape/position/size, two objects
    background/colours/shapes/relation; an unparsable caption gets every one wrong.

    A two-object caption may describe the picture from either object ("a blue circle
    below a red star" is "a red star above a blue circle"): it is read both ways and the
    reading that agrees with more attributes counts (the caption as written on a tie)."""
    if got is not None and got.second is not None and truth.second is not None:
        as_written, mirrored = _flags(truth, got), _flags(truth, got.mirrored())
        return mirrored if sum(mirrored.values()) > sum(as_written.values()) else as_written
    return _flags(truth, got)


def _flags(truth: Scene, got: Optional[Scene]) -> Dict[str, bool]:
    same_kind = got is not None and (got.second is None) == (truth.second is None)
    flags = {
        "parsed": got is not None,
        "all": got == truth,
        "background": got is not None and got.background == truth.background,
    }
    if truth.second is None:
        for key in ("colour", "shape"):
            flags[key] = same_kind and getattr(got.first, key) == getattr(truth.first, key)
        for key in ("position", "size"):
            flags[key] = same_kind and getattr(got, key) == getattr(truth, key)
    else:
        for key in ("colour", "shape"):
            flags[key + "s"] = same_kind and all(
                getattr(g, key) == getattr(t, key) for g, t in zip(got.objects, truth.objects)
            )
        flags["relation"] = same_kind and got.relation == truth.relation
    return flags


def evaluation_scenes(count: int, seed: int, split: str = "held-out") -> Dict[str, List[Scene]]:
    """``count`` one-object and ``count`` two-object scenes of ``split``, deterministic in seed."""
    rng = random.Random(seed)
    pool = all_scenes(split)
    ones = [s for s in pool if s.second is None]
    twos = [s for s in pool if s.second is not None]
    return {"one": rng.sample(ones, count), "two": rng.sample(twos, count)}


# --weights: the generation flags of each weight format
WEIGHTS = {"float32": [], "bf16": ["--bf16"], "int8": ["--bf16", "--quantize", "int8"]}


class Demo:
    """A loaded demo checkpoint behind generation.Generator (what generate_samples.py runs)."""

    def __init__(self, load: str, extra: Sequence[str] = ()):
        from arguments import explicit_dests, get_args
        from generation.config import GenerationConfig
        from generation.generator import Generator, setup

        argv = ["--load", load, "--device", "cpu", "--input-source", "interactive", *extra]
        cfg = GenerationConfig.from_args(get_args(argv), explicit_dests(argv))
        tokenizer, model = setup(cfg)
        self.gen = Generator(cfg, tokenizer, model)
        self.tok = tokenizer

    def encode(self, image: Image.Image) -> List[int]:
        from vqvae import img2code, normalize
        from vqvae.image_io import pil_to_tensor

        x = normalize(pil_to_tensor(image))[None]
        return img2code(self.tok.img_tokenizer.model, x)[0].tolist()

    def decode(self, codes) -> np.ndarray:
        return _to_uint8(self.tok.img_tokenizer.DecodeIds(torch.as_tensor(codes)))

    def text2image(self, prompt: str, n: int) -> List[np.ndarray]:
        from generation.queries import task_template

        ids = self.gen.parse(task_template("text2image", self.gen.grid).format(prompt))
        seqs = self.gen.sample(ids, batch_size=n, guidance=self.gen.guidance(ids, "text2image"))
        return [_to_uint8(self.gen.last_image(s)) for s in seqs]

    def text2image_draws(self, prompt: str) -> List[np.ndarray]:
        """Every image text2image.sh draws for its first output, in its order: the checkpoint's
        --post-select N draws ranked best first (the first is what it returns first), or one."""
        from generation.queries import task_template

        ids = self.gen.parse(task_template("text2image", self.gen.grid).format(prompt))
        seqs, _ = self.gen.text2image_sequences(ids, batch_size=max(1, self.gen.cfg.post_select))
        return [_to_uint8(self.gen.last_image(s)) for s in seqs]

    def _caption_query(self, codes: Sequence[int]) -> List[int]:
        from generation.queries import CAPTION_LENGTH

        t = self.tok
        size = t.command_tokens[size_token(self.gen.grid)]
        return [size, t["[BOI1]"], *codes, t["[EOI1]"], t["[ROI1]"]] + [-1] * CAPTION_LENGTH

    def caption(self, codes: Sequence[int], top_k: Optional[int] = None) -> str:
        """One caption; ``top_k`` overrides the sampler's (1: the most likely caption)."""
        ids = self._caption_query(codes)
        config = None if top_k is None else dataclasses.replace(self.gen.config, top_k=top_k)
        seqs = self.gen.sample(ids, batch_size=1, config=config, guidance=self.gen.guidance(ids, "image2text"))
        return self.gen.captions(ids, seqs)[0]

    def ranked_caption(self, codes: Sequence[int], n: int) -> str:
        """The first caption image2text.sh prints with --caption-rerank: the best of ``n``
        sampled (guided as the checkpoint says) by log p(image | caption) + W log p(caption |
        image), W the checkpoint's --caption-rerank-weight."""
        ids = self._caption_query(codes)
        seqs = self.gen.sample(ids, batch_size=n, guidance=self.gen.guidance(ids, "image2text"))
        return self.gen.rank_captions(ids, self.gen.captions(ids, seqs))[0][1]

    def scores(self, codes: Sequence[Sequence[int]], text: str) -> List[float]:
        return self.gen.caption_scores(self.tok(text), codes)


def evaluate(args) -> dict:
    torch.manual_seed(args.seed)
    scenes = evaluation_scenes(args.prompts, args.seed)
    results: dict = {
        "prompts_per_kind": args.prompts,
        "temperature": args.temperature,
        "top_k": args.top_k,
        "caption_top_k": args.caption_top_k,
        "weights": args.weights,
    }
    demo = Demo(
        args.model,
        [
            "--temperature",
            str(args.temperature),
            "--top_k",
            str(args.top_k),
            "--seed",
            str(args.seed),
            "--max-inference-batch-size",
            "8",
            *WEIGHTS[args.weights],
        ],
    )
    # --guidance-scale per task: the checkpoint's model_config.json values unless --guidance overrides
    scales = {**demo.gen.cfg.guidance_scale, **dict(args.guidance)}
    results["guidance_scale"] = {task: scales.get(task, 0.0) for task in ("text2image", "image2text")}
    top_k = {**demo.gen.cfg.guidance_top_k, **dict(args.guidance_top_k)}
    results["guidance_top_k"] = {task: top_k.get(task, 0) for task in ("text2image", "image2text")}
    weight = demo.gen.cfg.caption_rerank_weight if args.caption_rerank_weight is None else args.caption_rerank_weight
    post_select = demo.gen.cfg.post_select if args.post_select is None else args.post_select
    demo.gen.cfg = dataclasses.replace(
        demo.gen.cfg, guidance_scale=scales, guidance_top_k=top_k, caption_rerank_weight=weight, post_select=post_select
    )
    results["caption_rerank_weight"] = demo.gen.caption_rerank_weight()

    results["vqvae_ceiling"] = _vqvae_ceiling(demo, scenes)

    results["post_select"] = demo.gen.cfg.post_select
    t2i = _text2image_rates(demo, scenes)
    results["text2image"], results["text2image_single_draw"] = t2i["first"], t2i["single_draw"]
    results["text2image_seconds_per_image"] = t2i["seconds"]
    results["post_selection_seconds_per_image"] = t2i["post_selection_seconds_per_image"]

    # image2text on rendered held-out images: the most likely caption (--caption-top-k 1)
    # scores the target; one caption sampled like the images is reported beside it
    (results["image2text"], results["image2text_sampled"], results["image2text_examples"]) = _image2text_rates(
        demo, scenes, args.caption_top_k, sampled=True
    )
    # what image2text.sh prints first: 8 sampled captions ranked as --caption-rerank(-weight) say
    results["image2text_ranked"] = _ranked_caption_rates(demo, scenes, RANKED_CAPTIONS)

    # post-selection: best of N by the caption likelihood vs a random pick (per attribute too)
    results["post_selection"] = t2i["post_selection"] or _post_selection(demo, scenes, max(1, args.prompts // 2))

    # the same on training-split scenes (every (colour, shape) pair seen in training): the gap
    # to the held-out numbers is what generalising to unseen pairs costs
    if args.train_prompts > 0:
        seen = evaluation_scenes(args.train_prompts, args.seed, split="train")
        seen_t2i = _text2image_rates(demo, seen)
        i2t, _, _ = _image2text_rates(demo, seen, args.caption_top_k, sampled=False)
        results["training_split"] = {
            "prompts_per_kind": args.train_prompts,
            "text2image": seen_t2i["first"],
            "text2image_single_draw": seen_t2i["single_draw"],
            "image2text": i2t,
            "vqvae_ceiling": _vqvae_ceiling(demo, seen),
        }

    if args.sr_model and args.sr_images > 0:  # --sr-images 0 skips super-resolution
        results["super_resolution"] = evaluate_super_resolution(args, scenes)
    return results


def _vqvae_ceiling(demo: Demo, scenes: Dict[str, List[Scene]]) -> dict:
    """The checker on VQ-VAE reconstructions of the rendered scenes: the best a GPT drawing
    through these codes can score."""
    size = demo.gen.cfg.img_size
    flags = defaultdict(list)
    for kind, group in scenes.items():
        for s in group:
            flags[kind].append(check_image(s, demo.decode(demo.encode(render(s, size)))))
    return {k: _rate(v) for k, v in flags.items()}


def _text2image_rates(demo: Demo, scenes: Dict[str, List[Scene]]) -> dict:
    """Checker rates of the first image text2image.sh returns per prompt (English and Chinese
    prompts alternate), the expected rate of one unranked draw (all draws), the seconds per
    returned image, and, when the checkpoint post-selects, the post-selection summary of
    these draws (else None)."""
    first, draws, seconds, prompts = defaultdict(list), defaultdict(list), 0.0, 0
    scoring, scored = 0.0, 0
    for kind, group in scenes.items():
        for i, s in enumerate(group):
            start = time.time()
            images = demo.text2image_draws(caption(s, LANGUAGES[i % 2]))
            seconds += time.time() - start
            prompts += 1
            flags = [check_image(s, im) for im in images]
            first[kind].append(flags[0])
            draws[kind].append(flags)
            if scored < 8:  # post_selection.sh's work: read each image's codes, score it for the prompt
                start = time.time()
                demo.scores([demo.encode(Image.fromarray(im)) for im in images], caption(s, LANGUAGES[i % 2]))
                scoring += time.time() - start
                scored += len(images)
    ranked = demo.gen.cfg.post_select > 1
    return {
        "first": {k: _rate(v) for k, v in first.items()},
        "single_draw": {k: _rate([f for fs in v for f in fs]) for k, v in draws.items()},
        "seconds": round(seconds / max(prompts, 1), 3),
        "post_selection_seconds_per_image": round(scoring / max(scored, 1), 4),
        "post_selection": _post_selection_summary(draws) if ranked else None,
    }


def _post_selection_summary(draws: Dict[str, List[List[Dict[str, bool]]]]) -> dict:
    """Best (the first of each prompt's ranked draws) vs a random pick (the mean over them)."""
    per_prompt = [fs for v in draws.values() for fs in v]
    return {
        "prompts": len(per_prompt),
        "draws": len(per_prompt[0]),
        "best_all_right": round(100 * float(np.mean([fs[0]["all"] for fs in per_prompt])), 1),
        "random_pick_all_right": round(100 * float(np.mean([np.mean([f["all"] for f in fs]) for fs in per_prompt])), 1),
        "best": {k: _rate([fs[0] for fs in v]) for k, v in draws.items()},
        "random_pick": {k: _rate([f for fs in v for f in fs]) for k, v in draws.items()},
    }


def _post_selection(demo: Demo, scenes: Dict[str, List[Scene]], prompts: int, n: int = 8) -> dict:
    """Post-selection of a checkpoint that does not post-select itself: ``n`` images for each of
    ``prompts`` prompts per kind, ranked by the caption score (what text2image.sh followed by
    post_selection.sh hands a user)."""
    draws = defaultdict(list)
    for kind, group in scenes.items():
        for i, s in enumerate(group[:prompts]):
            prompt = caption(s, LANGUAGES[i % 2])
            images = demo.text2image(prompt, n)
            scores = demo.scores([demo.encode(Image.fromarray(im)) for im in images], prompt)
            draws[kind].append([check_image(s, images[j]) for j in np.argsort(scores)[::-1]])
    return _post_selection_summary(draws)


def _image2text_rates(
    demo: Demo, scenes: Dict[str, List[Scene]], top_k: Optional[int], sampled: bool
) -> Tuple[dict, dict, List[str]]:
    """Caption rates of rendered scenes: the caption at ``top_k`` (scored), optionally one
    sampled like the images (reported beside it), and the first few examples."""
    size = demo.gen.cfg.img_size
    flags, flags_sampled, examples = defaultdict(list), defaultdict(list), []
    for kind, group in scenes.items():
        for s in group:
            codes = demo.encode(render(s, size))
            text = demo.caption(codes, top_k=top_k)
            flags[kind].append(caption_flags(s, parse_caption(text.rstrip(".。"))))
            if sampled:
                flags_sampled[kind].append(caption_flags(s, parse_caption(demo.caption(codes).rstrip(".。"))))
            if len(examples) < 6:
                examples.append(f"{caption(s, 'en')} -> {text}")
    return ({k: _rate(v) for k, v in flags.items()}, {k: _rate(v) for k, v in flags_sampled.items()}, examples)


def _ranked_caption_rates(demo: Demo, scenes: Dict[str, List[Scene]], n: int) -> dict:
    """Caption rates of the best of ``n`` sampled captions as ``Generator.rank_captions`` ranks
    them, and the seconds per image (encoding, sampling and ranking)."""
    size = demo.gen.cfg.img_size
    flags, seconds, images = defaultdict(list), 0.0, 0
    for kind, group in scenes.items():
        for s in group:
            start = time.time()
            text = demo.ranked_caption(demo.encode(render(s, size)), n)
            seconds += time.time() - start
            images += 1
            flags[kind].append(caption_flags(s, parse_caption(text.rstrip(".。"))))
    return {**{k: _rate(v) for k, v in flags.items()}, "seconds_per_image": round(seconds / max(images, 1), 3)}


def evaluate_super_resolution(args, scenes: Dict[str, List[Scene]]) -> dict:
    """PSNR against the render at twice the size: magnify vs bicubic (of the true low-res
    render, and of the decoded low-res codes, which is what magnify sees) vs the VQ-VAE's
    own reconstruction of the high-res render (the ceiling). Sizes are the SR model's own
    (its img_size -> twice that); low-level super-resolution (half its img_size -> its
    img_size, the step after a 64 px text2image image) is measured the same way."""
    from arch.model_config import read_model_config
    from generation.magnify import magnify, sr_window

    # sampled as the scripts sample: --sr-top-k, else the checkpoint's recorded top-k, else --top_k
    recorded = "top_k" in (read_model_config(args.sr_model) or {})
    top_k = (
        []
        if args.sr_top_k is None and recorded
        else ["--top_k", str(args.top_k if args.sr_top_k is None else args.sr_top_k)]
    )
    sr = Demo(args.sr_model, ["--temperature", "1.0", *top_k, "--seed", str(args.seed), *WEIGHTS[args.weights]])
    t = sr.tok
    size = sr.gen.cfg.img_size
    ps_sr, ps_bic, ps_bic_codes, ps_vq, secs = [], [], [], [], 0.0
    shapes_in, shapes_out = [], []
    group = scenes["one"][: args.sr_images // 2] + scenes["two"][: args.sr_images - args.sr_images // 2]
    for i, s in enumerate(group):
        low_img, high = render(s, size), np.asarray(render(s, 2 * size))
        low = torch.tensor(sr.encode(low_img))
        prefix = sr.gen.sr_text(
            [t["[ROI1]"], *t(caption(s, LANGUAGES[i % 2])), t[size_token(sr.gen.grid)], t["[BOI1]"]]
        )
        start = time.time()
        window, stride = sr_window(sr.gen.grid)  # as generate_samples.py's super-resolution
        hi = magnify(
            low, prefix, lambda seq: sr.gen.sample(seq, batch_size=1), t.command_tokens, window=window, stride=stride
        )
        secs += time.time() - start
        out = sr.decode(hi[0])
        ps_sr.append(_psnr(out, high))
        shapes_in.append(_shapes_right(s, np.asarray(low_img)))
        shapes_out.append(_shapes_right(s, out))
        side = high.shape[:2][::-1]
        ps_bic.append(_psnr(np.asarray(low_img.resize(side, Image.BICUBIC)), high))
        decoded_low = Image.fromarray(sr.decode(low))  # what the low-res codes show
        ps_bic_codes.append(_psnr(np.asarray(decoded_low.resize(side, Image.BICUBIC)), high))
        ps_vq.append(_psnr(sr.decode(sr.encode(Image.fromarray(high))), high))
    low_level = _low_level_psnr(sr, group, size)
    return {
        "low_res_size": size,
        "top_k": sr.gen.cfg.top_k,
        "low_level": low_level,
        "images": len(group),
        "shapes_right_input": round(100 * float(np.mean(shapes_in)), 1),
        "shapes_right_output": round(100 * float(np.mean(shapes_out)), 1),
        "psnr_magnify": round(float(np.mean(ps_sr)), 2),
        "psnr_bicubic": round(float(np.mean(ps_bic)), 2),
        "psnr_bicubic_of_decoded_low_res_codes": round(float(np.mean(ps_bic_codes)), 2),
        "psnr_vqvae_reconstruction_of_high_res": round(float(np.mean(ps_vq)), 2),
        "seconds_per_image": round(secs / len(group), 2),
    }


def _low_level_psnr(sr: Demo, group: List[Scene], size: int) -> dict:
    """generate_samples.py's low-level super-resolution (size/2 px -> size px) vs bicubic."""
    import tempfile

    ps, ps_bic, ps_vq, secs, shapes_in, shapes_out = [], [], [], 0.0, [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i, s in enumerate(group):
            low, high = render(s, size // 2), np.asarray(render(s, size))
            path = os.path.join(tmp, f"{i}.png")
            low.save(path)
            start = time.time()
            seq = sr.gen.low_level_sequences(caption(s, LANGUAGES[i % 2]), path, batch_size=1)[0]
            out = _to_uint8(sr.gen.last_image(seq))
            secs += time.time() - start
            ps.append(_psnr(out, high))
            shapes_in.append(_shapes_right(s, np.asarray(low)))
            shapes_out.append(_shapes_right(s, out))
            ps_vq.append(_psnr(sr.decode(sr.encode(Image.fromarray(high))), high))
            ps_bic.append(_psnr(np.asarray(low.resize((size, size), Image.BICUBIC)), high))
    return {
        "psnr": round(float(np.mean(ps)), 2),
        "psnr_bicubic": round(float(np.mean(ps_bic)), 2),
        "psnr_vqvae_reconstruction": round(float(np.mean(ps_vq)), 2),
        "shapes_right_input": round(100 * float(np.mean(shapes_in)), 1),
        "shapes_right_output": round(100 * float(np.mean(shapes_out)), 1),
        "seconds_per_image": round(secs / len(group), 2),
    }


def _shapes_right(scene: Scene, image: np.ndarray) -> bool:
    """The checker reads every shape of ``scene`` right in ``image`` (two objects: each found
    by its colour)."""
    return check_image(scene, image)["shape" if scene.second is None else "shapes"]


def _guidance_words(scales: Dict[str, float], top_k: Dict[str, int]) -> str:
    words = []
    for task in ("text2image", "image2text"):
        scale, k = scales.get(task, 0.0), top_k.get(task, 0)
        among = f" among the {k} most likely tokens (--guidance-top-k {k})" if scale and k else ""
        words.append(f"{task} {scale or 'off'}{among}")
    return ", ".join(words)


def report(results: dict) -> str:
    """The "Demo model evaluation" section of bench/RESULTS.md: every target of the demo
    models with its result, then the numbers reported without a target."""
    t2i, i2t, ps = results["text2image"], results["image2text"], results["post_selection"]
    ceil, n = results["vqvae_ceiling"], results.get("post_select", 0)
    first = f"the best of {n} by post-selection" if n > 1 else "its one draw"
    lines = [
        f"Held-out prompts: {results['prompts_per_kind']} one-object and {results['prompts_per_kind']} "
        "two-object scenes, each containing a (colour, shape) pair never trained on; English and "
        "Chinese prompts alternate. Checker: demo/checker.py. Images sampled at "
        f"temperature {results['temperature']}, top-k {results['top_k']}; --guidance-scale "
        f"{_guidance_words(results.get('guidance_scale', {}), results.get('guidance_top_k', {}))}; "
        f"text2image scored on the first image text2image.sh returns ({first}); a two-object "
        'caption may name either object first ("a blue circle below a red star" is "a red star '
        'above a blue circle").',
        "",
        "| measure | target | result | VQ-VAE ceiling |",
        "|---|---|---|---|",
    ]

    def row(measure: str, target: str, result: str, ceiling: str = "-") -> None:
        lines.append(f"| {measure} | {target} | {result} | {ceiling} |")

    for key, target in (("background", 95), ("colour", 95), ("position", 95), ("shape", 80)):
        row(f"text2image one object: {key}", f">= {target}%", f"{t2i['one'][key]}%", f"{ceil['one'][key]}%")
    row("text2image one object: size (no target)", "-", f"{t2i['one']['size']}%", f"{ceil['one']['size']}%")
    two, two_ceil = t2i["two"], ceil["two"]
    row(
        "text2image two objects: colours and relation",
        ">= 85%",
        f"{two['colours_and_relation']}%",
        f"{two_ceil['colours_and_relation']}%",
    )
    row("text2image two objects: shapes too", ">= 70%", f"{two['all']}%", f"{two_ceil['all']}%")
    if "image2text_ranked" in results:
        rk, weight = results["image2text_ranked"], results.get("caption_rerank_weight", 0.0)
        score = "log p(image given caption)" + (f" + {weight:g} log p(caption given image)" if weight else "")
        for kind, words in (("one", "one object"), ("two", "two objects")):
            part = "shape" if kind == "one" else "shapes"
            row(
                f"image2text: every attribute, {words}, image2text.sh's first caption (the best of "
                f"{RANKED_CAPTIONS} sampled by {score})",
                ">= 90%",
                f"{rk[kind]['all']}% ({part} {rk[kind][part]}%)",
            )
    if "super_resolution" in results:
        sr = results["super_resolution"]
        ll, half, size = sr["low_level"], sr["low_res_size"] // 2, sr["low_res_size"]
        row(
            f"super-resolution PSNR ({sr['images']} images, {size} -> {2 * size} px, top-k {sr.get('top_k', '-')}): "
            "magnify vs bicubic of the decoded low-res codes (the same input)",
            "above bicubic",
            f"{sr['psnr_magnify']} dB vs {sr['psnr_bicubic_of_decoded_low_res_codes']} dB",
            f"{sr['psnr_vqvae_reconstruction_of_high_res']} dB",
        )
        row(
            "super-resolution PSNR: magnify vs bicubic of the true low-res render",
            "above bicubic",
            f"{sr['psnr_magnify']} dB vs {sr['psnr_bicubic']} dB",
            f"{sr['psnr_vqvae_reconstruction_of_high_res']} dB",
        )
        if "shapes_right_output" in sr:
            row(
                "super-resolution: shapes read right, output vs input",
                "output >= input",
                f"{sr['shapes_right_output']}% vs {sr['shapes_right_input']}%",
            )
        row(
            f"low-level super-resolution PSNR ({half} -> {size} px) vs bicubic of the true {half} px render",
            "above bicubic",
            f"{ll['psnr']} dB vs {ll['psnr_bicubic']} dB",
            f"{ll['psnr_vqvae_reconstruction']} dB" if "psnr_vqvae_reconstruction" in ll else "-",
        )
        if "shapes_right_output" in ll:
            row(
                "low-level super-resolution: shapes read right, output vs input",
                "output >= input",
                f"{ll['shapes_right_output']}% vs {ll['shapes_right_input']}%",
            )
    best = ps.get("best_all_right", ps.get("best_of_8_all_right"))
    draws = ps.get("draws", 8)
    row(
        f"post-selection: all right, best of {draws} vs random pick",
        "+5 points",
        f"{best}% vs {ps['random_pick_all_right']}% ({best - ps['random_pick_all_right']:+.1f})",
    )
    row("text2image time per returned image (2 CPU cores)", "recorded", f"{results['text2image_seconds_per_image']} s")
    if "image2text_ranked" in results and "seconds_per_image" in results["image2text_ranked"]:
        row(
            "image2text time per image (8 captions, ranked)",
            "recorded",
            f"{results['image2text_ranked']['seconds_per_image']} s",
        )
    if "post_selection_seconds_per_image" in results:
        row("post-selection time per scored image", "recorded", f"{results['post_selection_seconds_per_image']} s")
    if "super_resolution" in results:
        sr = results["super_resolution"]
        row("super-resolution time per image", "recorded", f"{sr['seconds_per_image']} s")
        row("low-level super-resolution time per image", "recorded", f"{sr['low_level']['seconds_per_image']} s")

    # without a target
    single = results.get("text2image_single_draw")
    if single:
        row(
            "text2image, one unranked draw (no target): one object background / colour / position / shape; "
            "two objects colours and relation / shapes too",
            "-",
            f"{single['one']['background']}% / {single['one']['colour']}% / {single['one']['position']}% / "
            f"{single['one']['shape']}%; {single['two']['colours_and_relation']}% / {single['two']['all']}%",
        )
    i2s, k = results["image2text_sampled"], results["caption_top_k"]
    how = "the most likely caption (top-k 1)" if k == 1 else f"top-k {k}"
    row(
        f"image2text: every attribute, one / two objects, {how} (no target)",
        "-",
        f"{i2t['one']['all']}% / {i2t['two']['all']}%",
    )
    row(
        f"image2text: every attribute, one / two objects, a sampled caption (temperature "
        f"{results['temperature']}, top-k {results['top_k']}; no target)",
        "-",
        f"{i2s['one']['all']}% / {i2s['two']['all']}%",
    )
    for kind, keys in (
        ("one", ("parsed", "background", "colour", "shape", "position", "size")),
        ("two", ("parsed", "background", "colours", "shapes", "relation")),
    ):
        parts = ", ".join(f"{key} {i2t[kind][key]}%" for key in keys)
        row(f"image2text {kind} object{'s' if kind == 'two' else ''}, {how}, per attribute (no target)", "-", parts)
    b, r = ps.get("best", ps.get("best_of_8")), ps["random_pick"]
    if b:
        one = ", ".join(
            f"{key} {b['one'][key]}% ({r['one'][key]}%)" for key in ("background", "colour", "position", "shape")
        )
        row(
            f"post-selection per attribute, best of {draws} (random pick in brackets; {ps['prompts'] // 2} "
            f"+ {ps['prompts'] // 2} prompts, no target)",
            "-",
            f"one object {one}; two objects colours and relation {b['two']['colours_and_relation']}% "
            f"({r['two']['colours_and_relation']}%), shapes too {b['two']['all']}% ({r['two']['all']}%)",
        )
    if "training_split" in results:
        tr = results["training_split"]
        tc = tr["vqvae_ceiling"]
        t1, t2, c1, c2 = (
            tr["text2image"]["one"],
            tr["text2image"]["two"],
            tr["image2text"]["one"],
            tr["image2text"]["two"],
        )
        row(
            f"the same on {tr['prompts_per_kind']} + {tr['prompts_per_kind']} training-split scenes (pairs seen "
            "in training; no target): text2image one object background / colour / position / shape",
            "-",
            f"{t1['background']}% / {t1['colour']}% / {t1['position']}% / {t1['shape']}%",
            f"shape {tc['one']['shape']}%",
        )
        row(
            "training-split text2image two objects: colours and relation / shapes too (no target)",
            "-",
            f"{t2['colours_and_relation']}% / {t2['all']}%",
            f"{tc['two']['colours_and_relation']}% / {tc['two']['all']}%",
        )
        if "text2image_single_draw" in tr:
            s1, s2 = tr["text2image_single_draw"]["one"], tr["text2image_single_draw"]["two"]
            row(
                "training-split text2image, one unranked draw: one object shape; two objects colours and "
                "relation (no target)",
                "-",
                f"{s1['shape']}%; {s2['colours_and_relation']}%",
            )
        row(
            f"training-split image2text: every attribute, one / two objects, {how} (no target)",
            "-",
            f"{c1['all']}% / {c2['all']}%",
        )
    lines += ["", "Caption examples (truth -> generated):", ""]
    lines += [f"- {e}" for e in results["image2text_examples"]]
    return "\n".join(lines)


def write_picture(model: str, prompts_file: str, out: str, per_prompt: int = 4, seed: int = 7) -> None:
    """One row of ``per_prompt`` text2image samples per prompt of ``prompts_file`` (the README
    picture; images under 128 px enlarged by pixel repetition), as a PNG written atomically."""
    with open(prompts_file, encoding="utf-8") as f:
        prompts = [line.strip() for line in f if line.strip()]
    demo = Demo(model, ["--seed", str(seed), "--max-inference-batch-size", str(per_prompt)])
    rows = [np.concatenate(demo.text2image(p, per_prompt), axis=1) for p in prompts]
    grid = np.concatenate(rows, axis=0)
    scale = max(1, 128 // demo.gen.cfg.img_size)  # small images shown enlarged, pixels kept
    grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    tmp = out + ".tmp.png"
    Image.fromarray(grid).save(tmp)
    os.replace(tmp, out)
    print(f"wrote {out}: {len(prompts)} prompts x {per_prompt} samples")


def main(argv=None) -> int:
    from training.export_release import task_scale, task_top_k

    p = argparse.ArgumentParser(prog="python -m demo.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=os.path.join(ROOT, "pretrained/cogview/cogview-demo"))
    p.add_argument("--sr-model", default=os.path.join(ROOT, "pretrained/cogview/cogview-demo-sr"))
    p.add_argument("--prompts", type=int, default=100, help="held-out prompts per kind (one/two objects)")
    p.add_argument(
        "--train-prompts",
        type=int,
        default=100,
        help="training-split prompts/images per kind scored the same way, no target: the "
        "generalisation gap (0 skips them)",
    )
    p.add_argument(
        "--sr-images", type=int, default=20, help="held-out images for the super-resolution PSNR (0 skips it)"
    )
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top_k", type=int, default=20)
    p.add_argument(
        "--sr-top-k",
        type=int,
        help="super-resolution sampling top-k (default: the SR checkpoint's recorded value, else --top_k)",
    )
    p.add_argument(
        "--caption-top-k",
        type=int,
        default=1,
        help="top-k of the scored image2text captions (1: the most likely caption)",
    )
    p.add_argument(
        "--guidance",
        action="append",
        default=[],
        metavar="TASK=S",
        type=task_scale,
        help="--guidance-scale for text2image or image2text instead of the checkpoint's (repeatable; 0 = off)",
    )
    p.add_argument(
        "--guidance-top-k",
        action="append",
        default=[],
        metavar="TASK=K",
        type=task_top_k,
        help="--guidance-top-k for text2image or image2text instead of the checkpoint's (repeatable; 0 = every token)",
    )
    p.add_argument(
        "--caption-rerank-weight",
        type=float,
        metavar="W",
        help="--caption-rerank-weight of the ranked captions instead of the checkpoint's",
    )
    p.add_argument(
        "--post-select",
        type=int,
        metavar="N",
        help="text2image --post-select instead of the checkpoint's (0: the first draw, no ranking)",
    )
    p.add_argument("--seed", type=int, default=7)
    p.add_argument(
        "--weights",
        choices=sorted(WEIGHTS),
        default="float32",
        help="weight format of both models: float32 (as shipped), bf16, or int8 (--quantize int8 with bf16 "
        "activations)",
    )
    p.add_argument("--json", help="also write the numbers to this file")
    add_write_results_argument(p)
    p.add_argument(
        "--picture",
        metavar="PNG",
        help="only write a grid of 4 samples per input.txt prompt to PNG (the README picture)",
    )
    a = p.parse_args(argv)
    if a.picture:
        write_picture(a.model, os.path.join(ROOT, "input.txt"), a.picture, seed=a.seed)
        return 0
    for path in (a.model, a.sr_model):
        if path and not os.path.isdir(path):
            print(
                f"eval_demo: error: {path}: no such checkpoint folder; run ./scripts/train_demo.sh first",
                file=sys.stderr,
            )
            return 1
    start = time.time()
    results = evaluate(a)
    results["seconds"] = round(time.time() - start, 1)
    print(json.dumps(results, indent=1, ensure_ascii=False))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1, ensure_ascii=False)
    text = report(results)
    print(text)
    if a.write_results is not None:
        if a.weights == "float32":
            section = "Demo model evaluation (scripts/eval_demo.sh)"
        else:  # a section of its own: the shipped format's numbers stay
            section = f"Demo model evaluation, {a.weights} weights (scripts/eval_demo.sh --weights {a.weights})"
        write_section(section, text, a.write_results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
