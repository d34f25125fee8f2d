"""The shapes world: seeded scenes of 1-4 flat coloured shapes on white, with template captions
and exact ground truth (shape, colour, box, relation) for every object.

It is the smallest text-to-image task whose answer can be checked: an evaluator can segment a
generated image by nearest palette colour and compare it with the scene its caption came from.
Scene i of seed s depends on (s, i) only, so the folder builder, the training stream and the
evaluator regenerate the same scene independently, in any order and in any process.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw
from torch.utils.data import IterableDataset

from ..errors import DataError
from .folder import DatasetCard, Sample, write_dataset
from .images import to_tensor
from .readers import reader_slot

RGB = tuple[int, int, int]
Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in output pixels; x1, y1 exclusive (PIL crop)

# Saturated and far apart (the closest pair, orange/yellow, is 100 apart in RGB), and far from
# white and black, so a checker can label pixels by their nearest palette colour.
PALETTE: dict[str, RGB] = {
    "red": (220, 20, 20),
    "orange": (255, 125, 0),
    "yellow": (255, 225, 0),
    "green": (20, 160, 50),
    "blue": (25, 70, 225),
    "purple": (145, 35, 190),
}
BACKGROUND: RGB = (255, 255, 255)
COLOURS = tuple(PALETTE)
SHAPES = ("circle", "square", "triangle", "star", "heart", "cross")
COUNT_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}
RELATIONS = ("left of", "right of", "above", "below")
CATEGORIES = ("single", "two_objects", "counting", "position", "colour_attribution")
VAL_FRACTION = 0.05

SIDE_MIN = 0.18  # object side, as a fraction of the image side
SIDE_MAX = {1: 0.40, 2: 0.34, 3: 0.28, 4: 0.26}  # smaller when more objects must fit
SUPERSAMPLE = 4  # draw at 4x, then average 4x4 blocks: antialiased and deterministic
_VAL_BLOCK = 1000  # the val offsets repeat every block, so train position -> index is O(1)
_PLACE_TRIES = 50
_SCENE_TRIES = 1000


@dataclass(frozen=True)
class Obj:
    shape: str
    color: str
    box: Box

    def to_dict(self) -> dict[str, Any]:
        return {"shape": self.shape, "color": self.color, "box": list(self.box)}


@dataclass
class Scene:
    objects: list[Obj]
    caption: str
    category: str
    relation: dict[str, Any] | None = None  # {"subject": 0, "relation": "left of", "object": 1}

    def to_dict(self) -> dict[str, Any]:
        return {"caption": self.caption, "category": self.category,
                "objects": [o.to_dict() for o in self.objects],
                "relation": dict(self.relation) if self.relation else None}


def nearest_colour(rgb: tuple[int, ...]) -> str:
    """The palette name nearest to a pixel, or "white" for the background."""
    named = {**PALETTE, "white": BACKGROUND}
    return min(named, key=lambda k: sum((a - b) ** 2 for a, b in zip(named[k], rgb, strict=True)))


# -- captions --------------------------------------------------------------------------------
def _phrase(colour: str, shape: str) -> str:
    return f"{'an' if colour[0] in 'aeiou' else 'a'} {colour} {shape}"


def _plural(shape: str) -> str:
    return shape + ("es" if shape.endswith(("s", "x", "sh", "ch")) else "s")


# -- layout ----------------------------------------------------------------------------------
def _margin(resolution: int) -> int:
    return max(2, round(0.04 * resolution))


def _gap(resolution: int) -> int:
    """Free pixels between any two boxes, so objects never touch, even antialiased."""
    return max(2, round(resolution / 32))


def _relation_gap(resolution: int) -> int:
    return max(3, round(0.06 * resolution))


def _random_box(rng: random.Random, resolution: int, n: int) -> Box:
    side = rng.randint(round(SIDE_MIN * resolution), round(SIDE_MAX[n] * resolution))
    m = _margin(resolution)
    x0, y0 = rng.randint(m, resolution - m - side), rng.randint(m, resolution - m - side)
    return x0, y0, x0 + side, y0 + side


def _apart(a: Box, b: Box, gap: int) -> bool:
    return b[0] - a[2] >= gap or a[0] - b[2] >= gap or b[1] - a[3] >= gap or a[1] - b[3] >= gap


def _layout(rng: random.Random, n: int, resolution: int) -> list[Box] | None:
    """n boxes at least _gap apart, each placed by rejection; None if one does not fit."""
    boxes: list[Box] = []
    for _ in range(n):
        for _ in range(_PLACE_TRIES):
            box = _random_box(rng, resolution, n)
            if all(_apart(box, b, _gap(resolution)) for b in boxes):
                boxes.append(box)
                break
        else:
            return None
    return boxes


def _clearly(a: Box, relation: str, b: Box, min_gap: int) -> bool:
    """Box a is `relation` box b beyond doubt: a gap of min_gap px along the relation's axis,
    and the centres at least twice as far apart along it as across it (no diagonal reading)."""
    dx = (a[0] + a[2] - b[0] - b[2]) / 2
    dy = (a[1] + a[3] - b[1] - b[3]) / 2
    along, across, gap = {
        "left of": (-dx, dy, b[0] - a[2]),
        "right of": (dx, dy, a[0] - b[2]),
        "above": (-dy, dx, b[1] - a[3]),
        "below": (dy, dx, a[1] - b[3]),
    }[relation]
    return gap >= min_gap and 2 * abs(across) <= along


# -- scenes ----------------------------------------------------------------------------------
def _single(rng: random.Random, resolution: int) -> Scene | None:
    shape, colour = rng.choice(SHAPES), rng.choice(COLOURS)
    boxes = _layout(rng, 1, resolution)
    if boxes is None:
        return None
    return Scene([Obj(shape, colour, boxes[0])], _phrase(colour, shape), "single")


def _pair(shapes: list[str], colours: list[str], boxes: list[Box] | None,
          category: str) -> Scene | None:
    if boxes is None:
        return None
    objects = [Obj(s, c, b) for s, c, b in zip(shapes, colours, boxes, strict=True)]
    caption = " and ".join(_phrase(c, s) for s, c in zip(shapes, colours, strict=True))
    return Scene(objects, caption, category)


def _two_objects(rng: random.Random, resolution: int) -> Scene | None:
    """Two different shapes; their colours are free (they may match)."""
    shapes, colours = rng.sample(SHAPES, 2), [rng.choice(COLOURS) for _ in range(2)]
    return _pair(shapes, colours, _layout(rng, 2, resolution), "two_objects")


def _colour_attribution(rng: random.Random, resolution: int) -> Scene | None:
    """Distinct shapes and distinct colours: only binding each colour to its shape is right."""
    shapes, colours = rng.sample(SHAPES, 2), rng.sample(COLOURS, 2)
    return _pair(shapes, colours, _layout(rng, 2, resolution), "colour_attribution")


def _counting(rng: random.Random, resolution: int) -> Scene | None:
    n, shape, colour = rng.randint(2, 4), rng.choice(SHAPES), rng.choice(COLOURS)
    boxes = _layout(rng, n, resolution)
    if boxes is None:
        return None
    caption = f"{COUNT_WORDS[n]} {colour} {_plural(shape)}"
    return Scene([Obj(shape, colour, b) for b in boxes], caption, "counting")


def _position(rng: random.Random, resolution: int) -> Scene | None:
    """Two objects that differ in shape or colour (so each can be found), clearly related."""
    relation = rng.choice(RELATIONS)
    (s0, c0), (s1, c1) = rng.sample(list(itertools.product(SHAPES, COLOURS)), 2)
    boxes = _layout(rng, 2, resolution)
    if boxes is None or not _clearly(boxes[0], relation, boxes[1], _relation_gap(resolution)):
        return None
    caption = f"{_phrase(c0, s0)} {relation} {_phrase(c1, s1)}"
    return Scene([Obj(s0, c0, boxes[0]), Obj(s1, c1, boxes[1])], caption, "position",
                 {"subject": 0, "relation": relation, "object": 1})


_COMPOSE: dict[str, Callable[[random.Random, int], Scene | None]] = {
    "single": _single,
    "two_objects": _two_objects,
    "counting": _counting,
    "position": _position,
    "colour_attribution": _colour_attribution,
}


def sample_scene(rng: random.Random, resolution: int) -> Scene:
    """A category uniformly, then its objects, redrawn until they fit (bounded)."""
    category = rng.choice(CATEGORIES)
    for _ in range(_SCENE_TRIES):
        scene = _COMPOSE[category](rng, resolution)
        if scene is not None:
            return scene
    raise RuntimeError(f"no {category} scene fitted in {_SCENE_TRIES} tries at {resolution}px")


def parse_source(source: str) -> tuple[int, tuple[str, ...]]:
    """"shapes:SEED" or "shapes:SEED:CAT[,CAT...]" -> (SEED, categories kept; () = all). A
    category filter concentrates training on what a model gets wrong (e.g. position)."""
    seed, sep, cats = source.removeprefix("shapes:").partition(":")
    try:
        world = int(seed)
    except ValueError:
        raise DataError(f"source {source!r}: expected shapes:SEED[:CATEGORIES], SEED an integer") from None
    keep = tuple(c for c in cats.split(",") if c)
    unknown = [c for c in keep if c not in CATEGORIES]
    if unknown or (sep and not keep):
        raise DataError(f"source {source!r}: unknown categories {unknown or [cats]}; accepted: a comma "
                        f"list of {', '.join(CATEGORIES)}")
    return world, keep


def scene_at(seed: int, index: int, resolution: int) -> Scene:
    """Scene `index` of world `seed`: a string seed is stable across processes and Pythons."""
    return sample_scene(random.Random(f"shapes-{seed}-{index}"), resolution)


# -- rendering -------------------------------------------------------------------------------
def _fit(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Scale an outline to fill the unit square, so the box is its tight bounding box.
    Rounded so that last-bit differences between maths libraries cannot move a pixel."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    w, h = max(xs) - min(xs), max(ys) - min(ys)
    return [(round((x - min(xs)) / w, 4), round((y - min(ys)) / h, 4)) for x, y in points]


def _star() -> list[tuple[float, float]]:
    """Five points; the inner radius is a little fatter than the regular star's 0.38, so the
    star keeps its points and its centre at small sizes."""
    points = []
    for k in range(10):
        r, a = (1.0 if k % 2 == 0 else 0.42), -math.pi / 2 + k * math.pi / 5
        points.append((r * math.cos(a), r * math.sin(a)))
    return _fit(points)


def _heart() -> list[tuple[float, float]]:
    ts = [2 * math.pi * k / 96 for k in range(96)]
    return _fit([(16 * math.sin(t) ** 3,
                  -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)))
                 for t in ts])


def _cross(arm: float = 0.36) -> list[tuple[float, float]]:
    lo, hi = (1 - arm) / 2, (1 + arm) / 2
    return [(lo, 0), (hi, 0), (hi, lo), (1, lo), (1, hi), (hi, hi),
            (hi, 1), (lo, 1), (lo, hi), (0, hi), (0, lo), (lo, lo)]


_OUTLINES: dict[str, list[tuple[float, float]]] = {
    "square": [(0, 0), (1, 0), (1, 1), (0, 1)],
    "triangle": [(0.5, 0), (1, 1), (0, 1)],
    "star": _star(),
    "heart": _heart(),
    "cross": _cross(),
}


def _draw(draw: ImageDraw.ImageDraw, shape: str, box: Box, fill: RGB | int) -> None:
    """One shape filling box (x0, y0, x1, y1), x1/y1 exclusive."""
    x0, y0, x1, y1 = box
    last_x, last_y = x1 - 1, y1 - 1  # Pillow's shapes include their end pixel
    if shape == "circle":
        draw.ellipse((x0, y0, last_x, last_y), fill=fill)
    else:
        draw.polygon([(x0 + u * (last_x - x0), y0 + v * (last_y - y0)) for u, v in _OUTLINES[shape]],
                     fill=fill)


def render_scene(scene: Scene, resolution: int) -> Image.Image:
    """Flat palette shapes on white, each filling its box; the same scene gives the same bytes."""
    s = SUPERSAMPLE
    big = Image.new("RGB", (resolution * s, resolution * s), BACKGROUND)
    draw = ImageDraw.Draw(big)
    for o in scene.objects:
        _draw(draw, o.shape, tuple(v * s for v in o.box), PALETTE[o.color])
    return big.reduce(s)


def shape_mask(shape: str, width: int, height: int) -> Image.Image:
    """A shape filling a width x height box as an antialiased "L" mask (255 = inside): the
    templates an evaluator compares detected objects with."""
    s = SUPERSAMPLE
    big = Image.new("L", (width * s, height * s), 0)
    _draw(ImageDraw.Draw(big), shape, (0, 0, width * s, height * s), 255)
    return big.reduce(s)


# -- split -----------------------------------------------------------------------------------
@functools.lru_cache(maxsize=16)
def _val_offsets(seed: int, val_fraction: float) -> frozenset[int]:
    """Seeded offsets within each block of _VAL_BLOCK indices; prefixes of one shuffle, so a
    larger val_fraction only adds val scenes."""
    order = list(range(_VAL_BLOCK))
    random.Random(f"shapes-val-{seed}").shuffle(order)
    return frozenset(order[:min(round(val_fraction * _VAL_BLOCK), _VAL_BLOCK - 1)])


def is_val(seed: int, index: int, val_fraction: float = VAL_FRACTION) -> bool:
    """Whether scene `index` of world `seed` is held out (resolution 1/1000 in val_fraction)."""
    return index % _VAL_BLOCK in _val_offsets(seed, val_fraction)


def _train_indices(seed: int, val_fraction: float, start: int, step: int) -> Iterator[int]:
    """Scene indices of train positions start, start + step, ...; position p is the p-th
    scene that is not val, found in O(1) so that a resumed stream starts at once."""
    val = _val_offsets(seed, val_fraction)
    train = [o for o in range(_VAL_BLOCK) if o not in val]
    for p in itertools.count(start, step):
        block, k = divmod(p, len(train))
        yield block * _VAL_BLOCK + train[k]


def _check_resolution(resolution: int) -> None:
    if not 32 <= resolution <= 1024:
        raise DataError(f"resolution is {resolution}; accepted: 32 <= resolution <= 1024")


def _check_val_fraction(val_fraction: float) -> None:
    if not 0 <= val_fraction < 1:
        raise DataError(f"val_fraction is {val_fraction}; accepted: 0 <= val_fraction < 1")


# -- outputs ---------------------------------------------------------------------------------
def build_shapes(out: str | Path, n: int, seed: int = 0, resolution: int = 128,
                 val_fraction: float = VAL_FRACTION) -> Path:
    """Render scenes 0..n-1 of world `seed` into a dataset folder (format: data/folder.py);
    the same arguments give a byte-identical folder."""
    if n < 1:
        raise DataError(f"n is {n}; accepted: n >= 1")
    _check_resolution(resolution)
    _check_val_fraction(val_fraction)

    def samples() -> Iterator[Sample]:
        for i in range(n):
            scene = scene_at(seed, i, resolution)
            meta = {k: v for k, v in scene.to_dict().items() if k != "caption"}
            split = "val" if is_val(seed, i, val_fraction) else "train"
            yield Sample(render_scene(scene, resolution), scene.caption, split,
                         {**meta, "index": i, "seed": seed})

    palette = ", ".join(f"{k} {v}" for k, v in PALETTE.items())
    card = DatasetCard(
        name="shapes",
        description="Seeded scenes of 1-4 flat coloured shapes on white, with template captions "
                    "and exact ground truth (shape, colour, box, relation) in every record.",
        source="procedural (fastmuse.data.shapes)",
        license="CC0-1.0 (generated by fastmuse)",
        command=f"fastmuse data shapes --out DIR --n {n} --seed {seed} --resolution {resolution}",
        resolution=resolution,
        notes=[
            f"Palette (RGB): {palette}; background white {BACKGROUND}.",
            f"Shapes: {', '.join(SHAPES)}; drawn at {SUPERSAMPLE}x and box-downsampled.",
            "Categories, drawn uniformly: single ('a red circle'), two_objects ('a red circle "
            "and a blue square'), counting (2-4 alike: 'three yellow stars'), position ('a blue "
            "square left of a yellow star'), colour_attribution (distinct shapes and colours).",
            f"Split: val_fraction {val_fraction}; val holds the scenes whose index mod "
            f"{_VAL_BLOCK} is in a seeded set; `ShapesStream(seed)` never yields them.",
            "Each record has `category`, `objects` ([{shape, color, box: [x0, y0, x1, y1]}] in "
            "pixels, x1/y1 exclusive), `relation` ({subject, relation, object}: indices into "
            "objects, or null), `index` and `seed`: `scene_at(seed, index, resolution)` "
            "regenerates it.",
        ],
    )
    return write_dataset(out, samples(), card, total=n)


class ShapesStream(IterableDataset):
    """The endless train scenes of world `seed`, for training without a folder.

    Items: {"image": [3,R,R] in [-1,1], "caption", "scene": JSON of Scene.to_dict(), "index"}.
    The scene is a JSON string so that the default collate can batch it. `start_index` counts
    train scenes (val ones are skipped), so a run that consumed k samples resumes exactly with
    start_index=k (with W readers: when k is a multiple of W batches). Reader w of W (DDP rank x
    DataLoader worker, see readers.py) takes positions start + w, start + w + W, ...
    """

    def __init__(self, seed: int = 0, resolution: int = 128, start_index: int = 0,
                 val_fraction: float = VAL_FRACTION, categories: tuple[str, ...] = ()) -> None:
        _check_resolution(resolution)
        _check_val_fraction(val_fraction)
        if start_index < 0:
            raise DataError(f"start_index is {start_index}; accepted: start_index >= 0")
        self.seed, self.resolution = seed, resolution
        self.start_index, self.val_fraction = start_index, val_fraction
        # () = all; else other scenes are skipped (start_index still counts every train scene)
        self.categories = categories

    def __iter__(self) -> Iterator[dict[str, Any]]:
        slot, slots = reader_slot()
        for index in _train_indices(self.seed, self.val_fraction, self.start_index + slot, slots):
            scene = scene_at(self.seed, index, self.resolution)
            if self.categories and scene.category not in self.categories:
                continue
            yield {"image": to_tensor(render_scene(scene, self.resolution)),
                   "caption": scene.caption,
                   "scene": json.dumps(scene.to_dict(), sort_keys=True), "index": index}
