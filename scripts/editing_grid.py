"""The README's editing grid: every edit on an emoji and a shapes image, with the bundled model.

    .venv/bin/python scripts/editing_grid.py -o docs/editing.png

Each row: the input, the tokens the model re-drew (red), two seeds of the result. Sources
come from the emoji catalogue (OpenMoji) and the shapes generator, not from files.
"""

from __future__ import annotations

import argparse
import time

from PIL import Image

from fastmuse.data import emoji
from fastmuse.data.images import make_grid
from fastmuse.data.shapes import render_scene, scene_at
from fastmuse.pipeline import Pipeline

CELL = 128


def letterbox(image: Image.Image) -> Image.Image:
    """Fit inside a CELL x CELL white square, keeping the aspect ratio (outpainting is wider)."""
    im = image.copy()
    im.thumbnail((CELL, CELL), Image.Resampling.LANCZOS)
    cell = Image.new("RGB", (CELL, CELL), "white")
    cell.paste(im, ((CELL - im.width) // 2, (CELL - im.height) // 2))
    return cell


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-o", "--output", default="docs/editing.png")
    p.add_argument("--model", default="muse-128")
    a = p.parse_args()

    pipe = Pipeline.from_pretrained(a.model)
    names = {e.caption: e for e in emoji.catalogue()}
    face, heart = (emoji.render(names[n], CELL) for n in ("grinning face", "red heart"))
    scene = render_scene(scene_at(0, 3, CELL), CELL)       # a blue square below a red circle
    single = render_scene(scene_at(0, 19, CELL), CELL)     # a blue star
    edits = [
        ("inpaint box", lambda s: pipe.inpaint(face, "smiling face with sunglasses", box=(20, 28, 108, 68),
                                               seed=s), "smiling face with sunglasses"),
        ("inpaint object", lambda s: pipe.inpaint(scene, "a blue square below a yellow circle",
                                                  box=(46, 16, 90, 60), seed=s), "... below a yellow circle"),
        ("outpaint right", lambda s: pipe.outpaint(heart, "red heart", right=96, seed=s), "red heart"),
        ("outpaint small", lambda s: pipe.outpaint(single.resize((64, 64)), "a blue star", left=32, right=32,
                                                   top=32, bottom=32, seed=s), "a blue star"),
        ("edit (mask-free)", lambda s: pipe.edit(heart, "blue heart", seed=s), "blue heart"),
        ("edit (mask-free)", lambda s: pipe.edit(single, "a red star", seed=s), "a red star"),
        ("img2img 0.6", lambda s: pipe.img2img(face, "grinning face with big eyes", seed=s),
         "grinning face with big eyes"),
        ("img2img 0.6", lambda s: pipe.img2img(scene, "a green square below a red circle", seed=s),
         "a green square below a red circle"),
        ("variations", lambda s: pipe.variations(heart, n=1, strength=0.4, seed=s), "(no prompt)"),
        ("variations", lambda s: pipe.variations(scene, n=1, strength=0.4, seed=s), "(no prompt)"),
    ]
    cells, captions = [], []
    t0 = time.perf_counter()
    for name, run, prompt in edits:
        results = [run(seed) for seed in (0, 1)]
        cells += [letterbox(results[0].input), letterbox(results[0].overlay())]
        cells += [letterbox(r.images[0]) for r in results]
        captions += [name, "re-drawn tokens", f"{prompt} (seed 0)", "(seed 1)"]
    grid = make_grid(cells, ncols=4, captions=captions)
    grid.save(a.output)
    print(f"wrote {a.output}: {len(edits)} edits x 2 seeds in {time.perf_counter() - t0:.1f}s")


if __name__ == "__main__":
    main()
