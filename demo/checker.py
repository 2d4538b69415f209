"""Read a shapes-grammar scene back out of pixels, to score generated images automatically.

Written from the grammar alone (demo.shapes), not learned: the background is the
border's median colour; foreground pixels (far from it) take the nearest palette colour;
each colour's largest connected blob is an object; its bounding box gives centre and
diameter for each candidate shape, and the shape whose rendered mask overlaps the blob
best (IoU) wins. Position, size and relation snap to the nearest grammar value.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np

from .shapes import ANCHORS, BACKGROUNDS, COLOURS, POSITIONS, SHAPES, SIZES, Scene, shape_mask, shape_polygon

FOREGROUND_DISTANCE = 60.0  # RGB distance from the background that counts as an object
MIN_OBJECT_FRACTION = 0.006  # blobs smaller than this share of the image are noise


@dataclass
class Blob:
    colour: str
    shape: str
    cx: float  # centre and diameter as fractions of the side
    cy: float
    diameter: float
    iou: float
    area: int


@dataclass
class Reading:
    background: str
    blobs: List[Blob]


def _unit_extent(shape: str) -> Tuple[float, float, float, float]:
    pts = np.array(shape_polygon(shape, 0.0, 0.0, 2.0))
    return pts[:, 0].min(), pts[:, 0].max(), pts[:, 1].min(), pts[:, 1].max()


_EXTENTS = {s: _unit_extent(s) for s in SHAPES}


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected component of a boolean mask."""
    seen = np.zeros_like(mask, dtype=bool)
    best: List[Tuple[int, int]] = []
    h, w = mask.shape
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        comp, queue = [], deque([(y0, x0)])
        seen[y0, x0] = True
        while queue:
            y, x = queue.popleft()
            comp.append((y, x))
            for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    queue.append((ny, nx))
        if len(comp) > len(best):
            best = comp
    out = np.zeros_like(mask, dtype=bool)
    if best:
        ys, xs = zip(*best)
        out[list(ys), list(xs)] = True
    return out


def _fit_shape(blob: np.ndarray) -> Tuple[str, float, float, float, float]:
    """(shape, centre x, centre y, diameter, IoU) in pixels for the best-fitting shape."""
    size = blob.shape[0]
    ys, xs = np.nonzero(blob)
    bx0, bx1, by0, by1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    best = ("circle", 0.0, 0.0, 0.0, -1.0)
    for shape in SHAPES:
        ux0, ux1, uy0, uy1 = _EXTENTS[shape]  # extent of a diameter-2 shape at the origin
        d = max((bx1 - bx0) / (ux1 - ux0), (by1 - by0) / (uy1 - uy0)) * 2
        cx = (bx0 + bx1) / 2 - (ux0 + ux1) / 2 * d / 2
        cy = (by0 + by1) / 2 - (uy0 + uy1) / 2 * d / 2
        m = shape_mask(shape, size, cx, cy, d)
        iou = (m & blob).sum() / max(1, (m | blob).sum())
        if iou > best[4]:
            best = (shape, cx, cy, d, float(iou))
    return best


def read_scene(image, max_objects: int = 2) -> Reading:
    """Background and up to ``max_objects`` objects (largest first) of an RGB image."""
    arr = np.asarray(image, dtype=np.float32)[..., :3]
    size = arr.shape[0]
    border = np.concatenate(
        [arr[:2].reshape(-1, 3), arr[-2:].reshape(-1, 3), arr[:, :2].reshape(-1, 3), arr[:, -2:].reshape(-1, 3)]
    )
    med = np.median(border, axis=0)
    bg = min(BACKGROUNDS, key=lambda k: np.linalg.norm(med - np.array(BACKGROUNDS[k])))
    fg = np.linalg.norm(arr - np.array(BACKGROUNDS[bg], dtype=np.float32), axis=-1) > FOREGROUND_DISTANCE
    names = [c for c in COLOURS if c != bg]
    palette = np.array([COLOURS[c] for c in names], dtype=np.float32)
    nearest = np.linalg.norm(arr[..., None, :] - palette, axis=-1).argmin(-1)
    blobs = []
    for k, name in enumerate(names):
        mask = fg & (nearest == k)
        if mask.sum() < MIN_OBJECT_FRACTION * size * size:
            continue
        comp = _largest_component(mask)
        if comp.sum() < MIN_OBJECT_FRACTION * size * size:
            continue
        shape, cx, cy, d, iou = _fit_shape(comp)
        blobs.append(Blob(name, shape, cx / size, cy / size, d / size, iou, int(comp.sum())))
    blobs.sort(key=lambda b: -b.area)
    return Reading(bg, blobs[:max_objects])


def _nearest(value: float, options) -> float:
    return min(options, key=lambda o: abs(o - value))


def position_of(cx: float, cy: float) -> str:
    ax, ay = _nearest(cx, ANCHORS), _nearest(cy, ANCHORS)
    return next(name for name, xy in POSITIONS.items() if xy == (ax, ay))


def size_of(diameter: float) -> str:
    return min(SIZES, key=lambda k: abs(SIZES[k] - diameter))


def relation_of(first: Blob, second: Blob) -> str:
    dx, dy = second.cx - first.cx, second.cy - first.cy
    if abs(dy) >= abs(dx):
        return "above" if dy > 0 else "below"
    return "to the left of" if dx > 0 else "to the right of"


def check_image(expected: Scene, image) -> Dict[str, bool]:
    """Per-attribute correctness of an image against the scene its prompt describes.

    One object: background, colour, position, size, shape. Two objects: background, both
    colours, both shapes, relation (objects matched to the prompt by colour). ``all`` is
    every attribute at once.
    """
    reading = read_scene(image, max_objects=len(expected.objects))
    res = {"background": reading.background == expected.background}
    if expected.second is None:
        blob = reading.blobs[0] if reading.blobs else None
        res["colour"] = blob is not None and blob.colour == expected.first.colour
        res["shape"] = blob is not None and blob.shape == expected.first.shape
        res["position"] = blob is not None and position_of(blob.cx, blob.cy) == expected.position
        res["size"] = blob is not None and size_of(blob.diameter) == expected.size
    else:
        by_colour = {b.colour: b for b in reading.blobs}
        first = by_colour.get(expected.first.colour)
        second = by_colour.get(expected.second.colour)
        res["colours"] = first is not None and second is not None
        res["shapes"] = res["colours"] and first.shape == expected.first.shape and second.shape == expected.second.shape
        res["relation"] = res["colours"] and relation_of(first, second) == expected.relation
        res["colours_and_relation"] = res["relation"]
    res["all"] = all(res.values())
    return res


def describe(image, two_objects: bool) -> Optional[Scene]:
    """The grammar scene the checker reads in an image (None when objects are missing)."""
    from .shapes import Obj

    reading = read_scene(image, max_objects=2 if two_objects else 1)
    if not reading.blobs or (two_objects and len(reading.blobs) < 2):
        return None
    a = reading.blobs[0]
    if not two_objects:
        return Scene(
            reading.background, Obj(a.colour, a.shape), size=size_of(a.diameter), position=position_of(a.cx, a.cy)
        )
    first, second = sorted(reading.blobs[:2], key=lambda b: (b.cy, b.cx))
    return Scene(
        reading.background,
        Obj(first.colour, first.shape),
        relation=relation_of(first, second),
        second=Obj(second.colour, second.shape),
    )
