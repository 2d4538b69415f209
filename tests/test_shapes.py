"""The shapes grammar behind the demo model: captions, held-out split, rendering, checker."""

import random

import numpy as np
import pytest

from demo.checker import check_image, describe, read_scene
from demo.shapes import (
    BACKGROUNDS,
    COLOURS,
    HELD_OUT_PAIRS,
    POSITIONS,
    SHAPES,
    SIZES,
    Obj,
    Scene,
    all_scenes,
    caption,
    caption_en,
    caption_zh,
    parse_caption,
    render_array,
    sample_scenes,
)


def test_scene_counts_and_held_out_split():
    everything = all_scenes("all")
    train, held = all_scenes("train"), all_scenes("held-out")
    assert len(train) + len(held) == len(everything)
    # (9 + 9 + 10 colours on white, black, gray) x 8 shapes x (2 sizes x 9 positions + 1 large)
    assert sum(s.second is None for s in everything) == 28 * 8 * 19
    assert not any((o.colour, o.shape) in HELD_OUT_PAIRS for s in train for o in s.objects)
    assert any(s.second is None for s in held) and any(s.second is not None for s in held)
    # every colour and every shape still appears in training
    seen = {(o.colour, o.shape) for s in train for o in s.objects}
    assert {c for c, _ in seen} == set(COLOURS) and {sh for _, sh in seen} == set(SHAPES)
    assert all(o.colour != s.background for s in everything for o in s.objects)
    assert all(s.first.colour != s.second.colour for s in everything if s.second is not None)


def test_captions_round_trip_in_both_languages():
    scenes = random.Random(0).sample(all_scenes("all"), 3000)
    for s in scenes:
        assert parse_caption(caption_en(s)) == s
        assert parse_caption(caption_zh(s)) == s
    assert parse_caption("a purple elephant on a white background") is None
    with pytest.raises(ValueError):
        caption(scenes[0], "fr")


def test_caption_wording():
    one = Scene("white", Obj("red", "circle"), size="small", position="in the top left corner")
    assert caption_en(one) == "a small red circle in the top left corner on a white background"
    assert caption_zh(one) == "白色背景上，一个小的红色圆形在左上角"
    two = Scene("gray", Obj("orange", "star"), relation="above", second=Obj("blue", "heart"))
    assert caption_en(two) == "an orange star above a blue heart on a gray background"
    assert caption_zh(two) == "灰色背景上，一个橙色星形在一个蓝色心形的上方"


def test_sampling_is_deterministic_and_balanced():
    a, b = sample_scenes(500, seed=3), sample_scenes(500, seed=3)
    assert a == b and a != sample_scenes(500, seed=4)
    ones = sum(s.second is None for s in a)
    assert 200 < ones < 300  # half one-object scenes
    assert not any(s.held_out for s in a)


def test_render_puts_the_colours_where_the_grammar_says():
    s = Scene("black", Obj("yellow", "square"), size="large", position="in the center")
    img = render_array(s, 64)
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    assert tuple(img[0, 0]) == BACKGROUNDS["black"] and tuple(img[32, 32]) == COLOURS["yellow"]
    for name, (x, y) in POSITIONS.items():
        s = Scene("white", Obj("blue", "circle"), size="small", position=name)
        img = render_array(s, 64)
        assert tuple(img[int(y * 64), int(x * 64)]) == COLOURS["blue"], name
    assert np.array_equal(render_array(s, 64), render_array(s, 64))


@pytest.mark.parametrize("size", [64, 128])
def test_checker_reads_true_renders(size):
    rng = random.Random(size)
    scenes = rng.sample([s for s in all_scenes("all") if s.second is None], 150) + rng.sample(
        [s for s in all_scenes("all") if s.second is not None], 60
    )
    results = [check_image(s, render_array(s, size)) for s in scenes]
    assert np.mean([r["all"] for r in results]) >= 0.97
    assert all(r["background"] for r in results)
    assert all(r.get("colour", True) and r.get("colours", True) for r in results)


def test_checker_rejects_wrong_images():
    s = Scene("white", Obj("red", "star"), size="medium", position="on the left")
    wrong_colour = Scene("white", Obj("green", "star"), size="medium", position="on the left")
    wrong_place = Scene("white", Obj("red", "star"), size="medium", position="on the right")
    wrong_shape = Scene("white", Obj("red", "circle"), size="medium", position="on the left")
    r = check_image(s, render_array(wrong_colour, 64))
    assert not r["colour"] and r["position"] and r["background"] and not r["all"]
    r = check_image(s, render_array(wrong_place, 64))
    assert r["colour"] and not r["position"]
    r = check_image(s, render_array(wrong_shape, 64))
    assert r["colour"] and r["position"] and not r["shape"]
    blank = np.full((64, 64, 3), 250, np.uint8)
    r = check_image(s, blank)
    assert r["background"] and not r["colour"] and not r["all"]
    pair = Scene("black", Obj("red", "square"), relation="to the left of", second=Obj("cyan", "cross"))
    flipped = Scene("black", Obj("red", "square"), relation="to the right of", second=Obj("cyan", "cross"))
    r = check_image(pair, render_array(flipped, 64))
    assert r["colours"] and not r["relation"]
    assert describe(render_array(pair, 64), two_objects=True).relation in ("to the left of", "to the right of")


def test_read_scene_orders_objects_by_area():
    s = Scene("gray", Obj("pink", "hexagon"), size="large", position="in the center")
    reading = read_scene(render_array(s, 64))
    assert reading.background == "gray" and reading.blobs[0].colour == "pink"
    assert abs(reading.blobs[0].diameter - SIZES["large"]) < 0.06
