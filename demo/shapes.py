"""Procedural captioned shapes: the grammar the shipped demo model is trained on.

A scene is one object (size, colour, shape, position) or two objects (colour, shape,
relation, colour, shape) on a plain background. Every scene renders deterministically
(Pillow, 4x supersampled) and has an English and a Chinese caption; ``parse_caption``
inverts both, so generated captions can be scored attribute by attribute.

Held-out split: every scene containing one of the ``HELD_OUT_PAIRS`` (colour, shape)
objects is never trained on; the demo evaluation draws its prompts from those scenes, so
it measures composition ("red" and "star" were seen, a red star never was).
"""

from __future__ import annotations

import itertools
import math
import random
import re
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

RGB = Tuple[int, int, int]

BACKGROUNDS: Dict[str, RGB] = {"white": (250, 250, 250), "black": (20, 20, 20), "gray": (128, 128, 128)}
COLOURS: Dict[str, RGB] = {
    "red": (220, 30, 30),
    "orange": (245, 140, 20),
    "yellow": (240, 220, 20),
    "green": (30, 170, 40),
    "cyan": (20, 200, 220),
    "blue": (30, 60, 220),
    "purple": (140, 40, 200),
    "pink": (250, 120, 190),
    "black": (20, 20, 20),
    "white": (250, 250, 250),
}
SHAPES: Tuple[str, ...] = ("circle", "square", "triangle", "star", "diamond", "heart", "hexagon", "cross")
SIZES: Dict[str, float] = {"small": 0.30, "medium": 0.40, "large": 0.56}
ANCHORS = (0.27, 0.50, 0.73)
POSITIONS: Dict[str, Tuple[float, float]] = {  # name -> (x, y) as fractions of the side
    "in the center": (0.50, 0.50),
    "at the top": (0.50, 0.27),
    "at the bottom": (0.50, 0.73),
    "on the left": (0.27, 0.50),
    "on the right": (0.73, 0.50),
    "in the top left corner": (0.27, 0.27),
    "in the top right corner": (0.73, 0.27),
    "in the bottom left corner": (0.27, 0.73),
    "in the bottom right corner": (0.73, 0.73),
}
RELATIONS: Dict[str, Tuple[Tuple[float, float], Tuple[float, float]]] = {
    # relation -> centre of the first object, centre of the second
    "above": ((0.50, 0.27), (0.50, 0.73)),
    "below": ((0.50, 0.73), (0.50, 0.27)),
    "to the left of": ((0.27, 0.50), (0.73, 0.50)),
    "to the right of": ((0.73, 0.50), (0.27, 0.50)),
}
# "a red star above a blue circle" and "a blue circle below a red star" are the same picture
INVERSE_RELATIONS = {
    "above": "below",
    "below": "above",
    "to the left of": "to the right of",
    "to the right of": "to the left of",
}
PAIR_DIAMETER = 0.36

ZH_BACKGROUNDS = {"white": "白色", "black": "黑色", "gray": "灰色"}
ZH_COLOURS = {
    "red": "红色",
    "orange": "橙色",
    "yellow": "黄色",
    "green": "绿色",
    "cyan": "青色",
    "blue": "蓝色",
    "purple": "紫色",
    "pink": "粉色",
    "black": "黑色",
    "white": "白色",
}
ZH_SHAPES = {
    "circle": "圆形",
    "square": "正方形",
    "triangle": "三角形",
    "star": "星形",
    "diamond": "菱形",
    "heart": "心形",
    "hexagon": "六边形",
    "cross": "十字形",
}
ZH_SIZES = {"small": "小的", "medium": "中等大小的", "large": "大的"}
ZH_POSITIONS = {
    "in the center": "在中间",
    "at the top": "在上方",
    "at the bottom": "在下方",
    "on the left": "在左边",
    "on the right": "在右边",
    "in the top left corner": "在左上角",
    "in the top right corner": "在右上角",
    "in the bottom left corner": "在左下角",
    "in the bottom right corner": "在右下角",
}
ZH_RELATIONS = {"above": "上方", "below": "下方", "to the left of": "左边", "to the right of": "右边"}

# one (colour, shape) per colour and every shape at least once: never in training data
HELD_OUT_PAIRS = frozenset(
    {
        ("red", "star"),
        ("orange", "hexagon"),
        ("yellow", "heart"),
        ("green", "triangle"),
        ("cyan", "cross"),
        ("blue", "diamond"),
        ("purple", "circle"),
        ("pink", "square"),
        ("black", "heart"),
        ("white", "star"),
    }
)


@dataclass(frozen=True)
class Obj:
    colour: str
    shape: str


@dataclass(frozen=True)
class Scene:
    """One object (``size`` and ``position`` set) or two (``relation`` and ``second`` set)."""

    background: str
    first: Obj
    size: Optional[str] = None
    position: Optional[str] = None
    relation: Optional[str] = None
    second: Optional[Obj] = None

    @property
    def objects(self) -> Tuple[Obj, ...]:
        return (self.first,) if self.second is None else (self.first, self.second)

    @property
    def held_out(self) -> bool:
        return any((o.colour, o.shape) in HELD_OUT_PAIRS for o in self.objects)

    def mirrored(self) -> "Scene":
        """The same picture described from the other object (two-object scenes; a
        one-object scene is returned as it is)."""
        if self.second is None:
            return self
        return Scene(self.background, self.second, relation=INVERSE_RELATIONS[self.relation], second=self.first)

    def layout(self) -> List[Tuple[Obj, float, float, float]]:
        """(object, centre x, centre y, diameter) as fractions of the image side."""
        if self.second is None:
            x, y = POSITIONS[self.position]
            return [(self.first, x, y, SIZES[self.size])]
        (x0, y0), (x1, y1) = RELATIONS[self.relation]
        return [(self.first, x0, y0, PAIR_DIAMETER), (self.second, x1, y1, PAIR_DIAMETER)]


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def caption_en(scene: Scene) -> str:
    bg = f"on a {scene.background} background"
    o = scene.first
    if scene.second is None:
        return f"{_article(scene.size)} {scene.size} {o.colour} {o.shape} {scene.position} {bg}"
    p = scene.second
    return f"{_article(o.colour)} {o.colour} {o.shape} {scene.relation} {_article(p.colour)} {p.colour} {p.shape} {bg}"


def caption_zh(scene: Scene) -> str:
    head = f"{ZH_BACKGROUNDS[scene.background]}背景上，"
    o = scene.first
    if scene.second is None:
        return (
            f"{head}一个{ZH_SIZES[scene.size]}{ZH_COLOURS[o.colour]}{ZH_SHAPES[o.shape]}{ZH_POSITIONS[scene.position]}"
        )
    p = scene.second
    return (
        f"{head}一个{ZH_COLOURS[o.colour]}{ZH_SHAPES[o.shape]}在一个"
        f"{ZH_COLOURS[p.colour]}{ZH_SHAPES[p.shape]}的{ZH_RELATIONS[scene.relation]}"
    )


def caption(scene: Scene, language: str = "en") -> str:
    if language == "en":
        return caption_en(scene)
    if language == "zh":
        return caption_zh(scene)
    raise ValueError(f"unknown caption language {language!r}; use en or zh")


# ---- parsing captions back into scenes --------------------------------------------------
def _alt(words) -> str:
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


_EN_ONE = re.compile(
    rf"^an? ({_alt(SIZES)}) ({_alt(COLOURS)}) ({_alt(SHAPES)}) ({_alt(POSITIONS)}) "
    rf"on a ({_alt(BACKGROUNDS)}) background$"
)
_EN_TWO = re.compile(
    rf"^an? ({_alt(COLOURS)}) ({_alt(SHAPES)}) ({_alt(RELATIONS)}) an? ({_alt(COLOURS)}) "
    rf"({_alt(SHAPES)}) on a ({_alt(BACKGROUNDS)}) background$"
)


def _inv(d: Dict[str, str]) -> Dict[str, str]:
    return {v: k for k, v in d.items()}


_ZH_ONE = re.compile(
    rf"^({_alt(ZH_BACKGROUNDS.values())})背景上，一个({_alt(ZH_SIZES.values())})"
    rf"({_alt(ZH_COLOURS.values())})({_alt(ZH_SHAPES.values())})({_alt(ZH_POSITIONS.values())})$"
)
_ZH_TWO = re.compile(
    rf"^({_alt(ZH_BACKGROUNDS.values())})背景上，一个({_alt(ZH_COLOURS.values())})"
    rf"({_alt(ZH_SHAPES.values())})在一个({_alt(ZH_COLOURS.values())})"
    rf"({_alt(ZH_SHAPES.values())})的({_alt(ZH_RELATIONS.values())})$"
)


def parse_caption(text: str) -> Optional[Scene]:
    """The scene an English or Chinese caption of the grammar describes; None if it is not one."""
    t = " ".join(text.strip().lower().split())
    t_zh = re.sub(r"\s+", "", text.strip()).replace(",", "，")
    if m := _EN_ONE.match(t):
        size, colour, shape, position, bg = m.groups()
        return Scene(bg, Obj(colour, shape), size=size, position=position)
    if m := _EN_TWO.match(t):
        c0, s0, rel, c1, s1, bg = m.groups()
        return Scene(bg, Obj(c0, s0), relation=rel, second=Obj(c1, s1))
    if m := _ZH_ONE.match(t_zh):
        bg, size, colour, shape, position = m.groups()
        return Scene(
            _inv(ZH_BACKGROUNDS)[bg],
            Obj(_inv(ZH_COLOURS)[colour], _inv(ZH_SHAPES)[shape]),
            size=_inv(ZH_SIZES)[size],
            position=_inv(ZH_POSITIONS)[position],
        )
    if m := _ZH_TWO.match(t_zh):
        bg, c0, s0, c1, s1, rel = m.groups()
        return Scene(
            _inv(ZH_BACKGROUNDS)[bg],
            Obj(_inv(ZH_COLOURS)[c0], _inv(ZH_SHAPES)[s0]),
            relation=_inv(ZH_RELATIONS)[rel],
            second=Obj(_inv(ZH_COLOURS)[c1], _inv(ZH_SHAPES)[s1]),
        )
    return None


# ---- enumerating and sampling scenes -----------------------------------------------------
def _colours_on(background: str) -> List[str]:
    return [c for c in COLOURS if c != background]


def one_object_scenes() -> Iterator[Scene]:
    for bg, colour, shape in itertools.product(BACKGROUNDS, COLOURS, SHAPES):
        if colour == bg:
            continue
        for size in SIZES:
            for position in ["in the center"] if size == "large" else POSITIONS:
                yield Scene(bg, Obj(colour, shape), size=size, position=position)


def two_object_scenes() -> Iterator[Scene]:
    for bg, relation in itertools.product(BACKGROUNDS, RELATIONS):
        for c0, c1 in itertools.permutations(_colours_on(bg), 2):
            for s0, s1 in itertools.product(SHAPES, SHAPES):
                yield Scene(bg, Obj(c0, s0), relation=relation, second=Obj(c1, s1))


def all_scenes(split: str = "train") -> List[Scene]:
    """Every scene of the grammar in a fixed order; split 'train', 'held-out' or 'all'."""
    if split not in ("train", "held-out", "all"):
        raise ValueError(f"unknown split {split!r}; use train, held-out or all")
    scenes = list(one_object_scenes()) + list(two_object_scenes())
    if split == "all":
        return scenes
    return [s for s in scenes if s.held_out == (split == "held-out")]


def sample_scenes(num: int, seed: int, split: str = "train", one_object_fraction: float = 0.5) -> List[Scene]:
    """``num`` scenes drawn with replacement, one-object ones with the given probability
    (there are 13x fewer of them than two-object scenes); deterministic in ``seed``."""
    rng = random.Random(seed)
    pool = all_scenes(split)
    ones = [s for s in pool if s.second is None]
    twos = [s for s in pool if s.second is not None]
    return [rng.choice(ones if rng.random() < one_object_fraction else twos) for _ in range(num)]


# ---- rendering ---------------------------------------------------------------------------
def shape_polygon(shape: str, cx: float, cy: float, d: float) -> List[Tuple[float, float]]:
    """Outline of an upright shape whose bounding box is d x d around (cx, cy) (pixels).

    Circles are drawn as a 64-gon; the heart as two lobes and a point.
    """
    r = d / 2
    if shape == "circle":
        pts = [(math.cos(2 * math.pi * k / 64), math.sin(2 * math.pi * k / 64)) for k in range(64)]
    elif shape == "square":
        pts = [(-1, -1), (1, -1), (1, 1), (-1, 1)]
    elif shape == "triangle":
        pts = [(0, -1), (1, 1), (-1, 1)]
    elif shape == "diamond":
        pts = [(0, -1), (1, 0), (0, 1), (-1, 0)]
    elif shape == "hexagon":
        h = math.sqrt(3) / 2
        pts = [(1, 0), (0.5, h), (-0.5, h), (-1, 0), (-0.5, -h), (0.5, -h)]
    elif shape == "star":
        pts = []
        for k in range(10):
            rad = 1.0 if k % 2 == 0 else 0.42
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((rad * math.cos(a), rad * math.sin(a) + 0.1))
    elif shape == "cross":
        t = 1 / 3
        pts = [
            (-t, -1),
            (t, -1),
            (t, -t),
            (1, -t),
            (1, t),
            (t, t),
            (t, 1),
            (-t, 1),
            (-t, t),
            (-1, t),
            (-1, -t),
            (-t, -t),
        ]
    elif shape == "heart":
        pts = []
        for k in range(64):
            a = 2 * math.pi * k / 64
            x = 16 * math.sin(a) ** 3
            y = -(13 * math.cos(a) - 5 * math.cos(2 * a) - 2 * math.cos(3 * a) - math.cos(4 * a))
            pts.append((x / 16.0, (y + 2.5) / 14.5))
    else:
        raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")
    return [(cx + r * x, cy + r * y) for x, y in pts]


SUPERSAMPLE = 4


def render(scene: Scene, size: int = 64) -> Image.Image:
    """The scene as an RGB ``size`` x ``size`` image (drawn at 4x and box-filtered down)."""
    big = size * SUPERSAMPLE
    img = Image.new("RGB", (big, big), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(img)
    for obj, x, y, d in scene.layout():
        draw.polygon(shape_polygon(obj.shape, x * big, y * big, d * big), fill=COLOURS[obj.colour])
    return img.resize((size, size), Image.BOX)


def render_array(scene: Scene, size: int = 64) -> np.ndarray:
    return np.asarray(render(scene, size), dtype=np.uint8)


def shape_mask(shape: str, size: int, cx: float, cy: float, d: float) -> np.ndarray:
    """Boolean mask of one shape (centre and diameter in pixels) on a size x size grid."""
    img = Image.new("L", (size * SUPERSAMPLE, size * SUPERSAMPLE), 0)
    s = SUPERSAMPLE
    ImageDraw.Draw(img).polygon(shape_polygon(shape, cx * s, cy * s, d * s), fill=255)
    return np.asarray(img.resize((size, size), Image.BOX)) >= 128


def scene_key(scene: Scene) -> str:
    """A stable short identifier (used for file names)."""
    return caption_en(scene).replace(" ", "_")


def scenes_from_captions(captions: Sequence[str]) -> List[Scene]:
    out = []
    for text in captions:
        scene = parse_caption(text)
        if scene is None:
            raise ValueError(f"not a caption of the shapes grammar: {text!r}")
        out.append(scene)
    return out
