"""Read a shapes-world image back into objects and decide whether it shows its prompt.

A GenEval-like check, but exact because the world is ours: every pixel is labelled with the
nearest palette colour (or white, or "other" when far from all of them), each colour's
8-connected components above a minimum area are objects, and an object's shape is the
template (circle, square, ... drawn into the object's bounding box, data/shapes.py) with the
highest IoU, if that IoU reaches SHAPE_IOU; else the object is "unknown".

Pass rules per category (the spec comes from the prompt's scene, never from its boxes):
  single       an object of the shape, any colour
  colour       an object of the shape in the colour
  two_objects  both shapes present, any colour
  counting     exactly N objects of the shape in the colour
  colour_attribution  both (shape, colour) pairs present
  position     both (shape, colour) objects present and the first is left of / right of /
               above / below the second: centres differ along that axis by more than across it
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..data.shapes import BACKGROUND, PALETTE, SHAPES, shape_mask

MIN_AREA = 0.004       # of the image: smaller components are specks, not objects
SHAPE_IOU = 0.6        # template IoU needed to name a shape
MAX_COLOUR_DIST = 90.0  # RGB distance beyond which a pixel is "other", not a palette colour
_NAMES = (*PALETTE, "white")
_RGB = np.array([*PALETTE.values(), BACKGROUND], np.float32)


@dataclass(frozen=True)
class Found:
    shape: str  # one of SHAPES or "unknown"
    color: str
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive)
    iou: float

    @property
    def centre(self) -> tuple[float, float]:
        return (self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2


def label_pixels(image: Image.Image) -> np.ndarray:
    """[H, W] index into (*PALETTE, "white"); -1 where no colour is within MAX_COLOUR_DIST."""
    rgb = np.asarray(image.convert("RGB"), np.float32)
    d = np.linalg.norm(rgb[:, :, None, :] - _RGB[None, None], axis=-1)
    lab = d.argmin(-1)
    return np.where(d.min(-1) <= MAX_COLOUR_DIST, lab, -1)


def components(mask: np.ndarray, min_area: float = 1) -> list[np.ndarray]:
    """8-connected components of a bool mask with at least min_area pixels, as bool masks
    (label propagation by max-pooling)."""
    m = torch.from_numpy(mask)
    h, w = mask.shape
    lab = torch.where(m, torch.arange(1, h * w + 1, dtype=torch.float64).view(h, w), 0.0)
    while True:
        new = F.max_pool2d(lab[None, None], 3, 1, 1)[0, 0] * m
        if torch.equal(new, lab):
            break
        lab = new
    ids, counts = torch.unique(lab[lab > 0], return_counts=True)
    return [(lab == v).numpy() for v in ids[counts >= min_area].tolist()]


def classify(mask: np.ndarray) -> tuple[str, float, tuple[int, int, int, int]]:
    """(shape or "unknown", best template IoU, box) of one object's mask."""
    ys, xs = np.nonzero(mask)
    box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    crop = mask[box[1]:box[3], box[0]:box[2]]
    w, h = box[2] - box[0], box[3] - box[1]
    best, best_iou = "unknown", 0.0
    for shape in SHAPES:
        t = np.asarray(shape_mask(shape, w, h)) >= 128
        iou = float((t & crop).sum() / max(1, (t | crop).sum()))
        if iou > best_iou:
            best, best_iou = shape, iou
    return (best if best_iou >= SHAPE_IOU else "unknown"), best_iou, box


def detect(image: Image.Image) -> list[Found]:
    """Every coloured object of the image, largest first."""
    lab = label_pixels(image)
    min_area, found = MIN_AREA * lab.size, []
    for i, colour in enumerate(_NAMES[:-1]):
        for comp in components(lab == i, min_area):
            shape, iou, box = classify(comp)
            found.append((int(comp.sum()), Found(shape, colour, box, iou)))
    return [f for _, f in sorted(found, key=lambda t: -t[0])]


@dataclass(frozen=True)
class Spec:
    """What a prompt asks for: (shape, colour) objects, a category, maybe a relation."""
    category: str
    objects: tuple[tuple[str, str], ...]
    relation: str | None = None
    count: int = 1


def relation_holds(a: Found, relation: str, b: Found) -> bool:
    dx, dy = a.centre[0] - b.centre[0], a.centre[1] - b.centre[1]
    along, across = {"left of": (-dx, dy), "right of": (dx, dy), "above": (-dy, dx),
                     "below": (dy, dx)}[relation]
    return along > abs(across)


def check(found: list[Found], spec: Spec) -> bool:
    def having(shape: str, colour: str | None) -> list[Found]:
        return [f for f in found if f.shape == shape and (colour is None or f.color == colour)]

    (s0, c0), *rest = spec.objects
    if spec.category == "single":
        return bool(having(s0, None))
    if spec.category == "colour":
        return bool(having(s0, c0))
    if spec.category == "two_objects":
        return bool(having(s0, None)) and bool(having(rest[0][0], None))
    if spec.category == "counting":
        return len(having(s0, c0)) == spec.count
    if spec.category == "colour_attribution":
        return bool(having(s0, c0)) and bool(having(*rest[0]))
    if spec.category == "position":
        return any(relation_holds(a, spec.relation, b) for a in having(s0, c0) for b in having(*rest[0]))
    raise ValueError(f"unknown category {spec.category!r}")
