"""The shapes compositional suite: fixed prompts by category, images checked from their pixels.

Version "shapes-v1": PER_CATEGORY prompts for each of six categories, drawn from shapes world
EVAL_WORLD (a seed no training config uses) in index order, captions de-duplicated; "single"
and "colour" take different single-object scenes. The prompt list is pinned by a test, so a
change to the shapes world shows up as a new suite version, not as silently different numbers.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image, ImageFilter

from ..data.shapes import Obj, Scene, render_scene, scene_at
from ..errors import ConfigError
from .shapes_check import Spec, check, detect

SUITE_VERSION = "shapes-v1"
EVAL_WORLD = 90_001
PER_CATEGORY = 12
SCENE_RESOLUTION = 128  # the suite's scenes (their boxes) are drawn for this size
MAX_SCENES = 20_000
CATEGORIES = ("single", "colour", "two_objects", "counting", "colour_attribution", "position")


@dataclass(frozen=True)
class Item:
    prompt: str
    spec: Spec
    scene: Scene  # the scene the prompt came from: a ground-truth render for the checker


def spec_of(scene: Scene, category: str) -> Spec:
    objects = tuple((o.shape, o.color) for o in scene.objects)
    relation = scene.relation["relation"] if scene.relation else None
    return Spec(category, objects[:1] if scene.category == "counting" else objects, relation,
                len(objects) if scene.category == "counting" else 1)


def suite_items(per_category: int = PER_CATEGORY, world: int = EVAL_WORLD) -> list[Item]:
    want = {c: [] for c in CATEGORIES}
    seen: set[str] = set()
    index = 0
    while any(len(v) < per_category for v in want.values()):
        if index == MAX_SCENES:  # single objects have only 36 distinct captions
            raise ConfigError(f"per_category {per_category}: not enough distinct prompts in {MAX_SCENES} "
                              "scenes; accepted: at most 18")
        scene = scene_at(world, index, SCENE_RESOLUTION)
        index += 1
        cats = ("single", "colour") if scene.category == "single" else (scene.category,)
        cat = next((c for c in cats if len(want[c]) < per_category), None)
        if cat is None or scene.caption in seen:
            continue
        seen.add(scene.caption)
        want[cat].append(Item(scene.caption, spec_of(scene, cat), scene))
    return [item for c in CATEGORIES for item in want[c]]


# -- checker validation ------------------------------------------------------------------------
def render_item(item: Item, resolution: int) -> Image.Image:
    """The ground truth of an item drawn at `resolution`: its scene's boxes scaled from
    SCENE_RESOLUTION, so a 64 px model's tokenizer sees the same scene, smaller."""
    f = resolution / SCENE_RESOLUTION
    scene = item.scene
    objects = [Obj(o.shape, o.color, tuple(round(v * f) for v in o.box)) for o in scene.objects]
    return render_scene(Scene(objects, scene.caption, scene.category, scene.relation), resolution)


def _noise(sigma: float) -> Callable[[Image.Image, random.Random], Image.Image]:
    def apply(im: Image.Image, rng: random.Random) -> Image.Image:
        import numpy as np

        g = np.random.default_rng(rng.randrange(2**32)).normal(0, sigma, (im.height, im.width, 3))
        return Image.fromarray(np.clip(np.asarray(im, np.float32) + g, 0, 255).astype(np.uint8))

    return apply


def _jpeg(quality: int) -> Callable[[Image.Image, random.Random], Image.Image]:
    def apply(im: Image.Image, rng: random.Random) -> Image.Image:
        import io

        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=quality)
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")

    return apply


CORRUPTIONS: dict[str, Callable[[Image.Image, random.Random], Image.Image]] = {
    "clean": lambda im, rng: im,
    "blur r1": lambda im, rng: im.filter(ImageFilter.GaussianBlur(1)),
    "blur r2": lambda im, rng: im.filter(ImageFilter.GaussianBlur(2)),
    "noise 8": _noise(8),
    "noise 20": _noise(20),
    "jpeg 75": _jpeg(75),
    "jpeg 30": _jpeg(30),
    "half size": lambda im, rng: im.resize((im.width // 2, im.height // 2), Image.Resampling.BILINEAR)
                                   .resize(im.size, Image.Resampling.BILINEAR),
}


def validate_checker(items: list[Item], corruptions: list[str] | None = None, resolution: int = 128
                     ) -> dict[str, dict[str, float]]:
    """Checker accuracy on ground-truth renders of the items' own scenes, per corruption and
    category (the truth is "pass" for every one of them)."""
    out = {}
    for name in corruptions or list(CORRUPTIONS):
        rng = random.Random(f"validate-{name}")
        per: dict[str, list[bool]] = {}
        for item in items:
            image = CORRUPTIONS[name](render_item(item, resolution), rng)
            per.setdefault(item.spec.category, []).append(check(detect(image), item.spec))
        out[name] = summarise(per)
    return out


def summarise(per: dict[str, list[bool]]) -> dict[str, float]:
    """Per-category accuracy and "overall" = their mean (each category weighs the same)."""
    acc = {c: sum(v) / len(v) for c, v in per.items()}
    return {**acc, "overall": sum(acc.values()) / len(acc)}
