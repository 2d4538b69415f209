"""How firmly a demo checkpoint binds two-object captions to images, without sampling.

    python -m demo.binding MODEL [MODEL ...] [--scenes 64] [--split train]

For two-object scenes of a split, each rendered and encoded, it compares the true caption with
two wrong ones that use the same words: the relation inverted ("above" -> "below") and the two
colours swapped. Per language and wrong kind it reports how often the model prefers the truth
and the mean log-likelihood margin in nats, in both directions: text2image, log p(codes |
caption), and image2text, log p(caption | codes). It costs two forward passes per caption, so a
training run's checkpoints can be followed in seconds where sampling and the checker
(demo/evaluate.py) take minutes; a margin near 0 means the model has not learnt that part of
the grammar yet.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Dict, List

from demo.shapes import INVERSE_RELATIONS, Obj, Scene, caption, render

WRONG_KINDS = ("relation", "colours")


def wrong_caption_scene(scene: Scene, kind: str) -> Scene:
    """The two-object scene a wrong caption of ``kind`` describes: the relation inverted, or
    the objects' colours swapped (shapes and positions kept)."""
    if scene.second is None:
        raise ValueError("binding is measured on two-object scenes")
    if kind == "relation":
        return dataclasses.replace(scene, relation=INVERSE_RELATIONS[scene.relation])
    if kind == "colours":
        first, second = scene.first, scene.second
        return dataclasses.replace(scene, first=Obj(second.colour, first.shape), second=Obj(first.colour, second.shape))
    raise ValueError(f"unknown wrong-caption kind {kind!r}; use one of {WRONG_KINDS}")


def binding_margins(demo, scenes: List[Scene], languages=("en", "zh")) -> Dict[str, Dict[str, dict]]:
    """language -> kind -> {text2image, image2text: {"preferred": %, "margin": mean nats}}."""
    from generation.post_selection import image_given_text_score
    from generation.queries import size_token

    gen, tok = demo.gen, demo.tok
    codes = [demo.encode(render(s, gen.grid * 8)) for s in scenes]
    size = tok.command_tokens[size_token(gen.grid)]

    def scores(ids, c):  # (log p(codes | caption), log p(caption | codes))
        row = [tok["[ROI1]"], *ids, size, tok["[BOI1]"], *c]
        text2image = image_given_text_score(gen.model, [row], tok["[BOI1]"], tok.num_image_tokens)[0].item()
        return text2image, gen.caption_scores(ids, [c])[0]

    result: Dict[str, Dict[str, dict]] = {}
    for lang in languages:
        result[lang] = {}
        truths = [scores(tok.EncodeAsIds(caption(s, lang)), c) for s, c in zip(scenes, codes)]
        for kind in WRONG_KINDS:
            margins = {"text2image": [], "image2text": []}
            for scene, c, truth in zip(scenes, codes, truths):
                wrong = scores(tok.EncodeAsIds(caption(wrong_caption_scene(scene, kind), lang)), c)
                margins["text2image"].append(truth[0] - wrong[0])
                margins["image2text"].append(truth[1] - wrong[1])
            result[lang][kind] = {
                direction: {
                    "preferred": round(100.0 * sum(m > 0 for m in values) / len(values), 1),
                    "margin": round(sum(values) / len(values), 2),
                }
                for direction, values in margins.items()
            }
    return result


def main(argv=None) -> int:
    from demo.evaluate import Demo, evaluation_scenes

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", help="checkpoint folders (release or training) to compare")
    p.add_argument("--scenes", type=int, default=64, help="two-object scenes scored")
    p.add_argument("--split", choices=("train", "held-out"), default="train")
    p.add_argument("--seed", type=int, default=11)
    args = p.parse_args(argv)
    scenes = evaluation_scenes(args.scenes, args.seed, args.split)["two"]
    for model in args.models:
        print(json.dumps({"model": model, **binding_margins(Demo(model), scenes)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
