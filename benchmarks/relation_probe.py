"""Does a masked model know which way a relation points? A likelihood test, no sampling.

    python benchmarks/relation_probe.py [--model muse-128|RUN] [--world 12345] [--scenes 200] [--out F.md]

Scenes of a shapes world are rendered and tokenized (the tokenizer's round trip); each grid
is scored twice by the model's token log-likelihood (`Pipeline.caption_logprob`: the positions split
into `--passes` groups, each masked in turn, summed over the grid; same groups both times):
under its true caption and under a false one that differs in one word:
  position  the opposite relation ("... left of ..." -> "... right of ...")
  counting  one more or one fewer ("three red squares" -> "two red squares")
  single    another shape ("a red square" -> "a red circle"): what a known word looks like
Reported: how often the true caption scores higher (0.5: the model cannot tell) and the mean
gap. Then what the model reads: for caption pairs that differ in one word, the cosine of the
text encoder's token states at the changed word, and of the keys every cross-attention layer
makes of them (the lowest over layers): a pair the text side barely separates is one the
image side can hardly learn to tell apart. If the likelihood knows a direction but samples
still put objects the wrong way round, the sampler's parallel commits are to blame; if not,
the model has not learnt it.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from shapes_failures import OPPOSITE, load

from fastmuse.data.images import to_tensor
from fastmuse.data.shapes import COUNT_WORDS, SHAPES, Scene, render_scene, scene_at
from fastmuse.fsutil import atomic_write_text
from fastmuse.pipeline import Pipeline


def false_caption(scene: Scene) -> str:
    """The scene's caption made false in one word (see the module docstring)."""
    if scene.category == "position":
        rel = scene.relation["relation"]
        return scene.caption.replace(f" {rel} ", f" {OPPOSITE[rel]} ")
    if scene.category == "counting":
        n = len(scene.objects)
        return scene.caption.replace(COUNT_WORDS[n], COUNT_WORDS[n - 1 if n > 2 else n + 1], 1)
    shape = scene.objects[0].shape
    return scene.caption.replace(shape, SHAPES[(SHAPES.index(shape) + 1) % len(SHAPES)])


@torch.no_grad()
def scores(pipe: Pipeline, scenes: list[Scene], captions: list[str], passes: int, batch: int = 16
           ) -> torch.Tensor:
    """[N] summed log-likelihood of each scene's tokens under the caption given for it (guided
    as the model's defaults say)."""
    out = []
    for i in range(0, len(scenes), batch):
        part = scenes[i:i + batch]
        images = torch.stack([to_tensor(render_scene(s, pipe.resolution)) for s in part])
        tokens = pipe.tokenizer.encode(images)
        lp = pipe.caption_logprob(tokens, captions[i:i + batch], pipe.defaults.guidance,
                                  torch.Generator().manual_seed(i), passes)
        out.append(lp.flatten(1).sum(1))
    return torch.cat(out)


TEXT_PAIRS = [("a red square left of a green triangle", "a red square right of a green triangle"),
              ("a red square above a green triangle", "a red square below a green triangle"),
              ("a red square left of a green triangle", "a red square above a green triangle"),
              ("a red square left of a green triangle", "a red circle left of a green triangle"),
              ("three red squares", "two red squares"),
              ("three red squares", "three red circles")]


@torch.no_grad()
def text_separation(pipe: Pipeline, a: str, b: str) -> tuple[float, float]:
    """(cosine of the encoder's token states, lowest cosine of the cross-attention keys) at the
    least similar position of two captions of equal token length."""
    emb = pipe.text_encoder.encode([a, b])
    n = int(emb.mask[0].sum())
    states = F.cosine_similarity(emb.hidden[0, :n], emb.hidden[1, :n], dim=-1)
    keys = [F.cosine_similarity(k[0].transpose(0, 1).flatten(1), k[1].transpose(0, 1).flatten(1), dim=-1)[:n]
            for k, _ in pipe.transformer.prepare_text(emb).kv]
    return states.min().item(), torch.stack(keys).min(0).values.min().item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="muse-128", help="a masked model: name, folder or training run")
    ap.add_argument("--world", type=int, default=12345, help="shapes world of the scenes (default 12345)")
    ap.add_argument("--scenes", type=int, default=200, help="scenes per category (default 200)")
    ap.add_argument("--passes", type=int, default=4,
                    help="masking groups of token_logprob (default 4; 1: every token masked at once, "
                         "the first sampling step's view, where the layout is still open)")
    ap.add_argument("--out", default=None, help="also write the markdown tables here")
    a = ap.parse_args()
    lines = []

    def emit(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    _, pipe = load(a.model)
    want = {"position": [], "counting": [], "single": []}
    index = 0
    while any(len(v) < a.scenes for v in want.values()):
        scene = scene_at(a.world, index, pipe.resolution)
        index += 1
        if scene.category in want and len(want[scene.category]) < a.scenes:
            want[scene.category].append(scene)
    emit("| category | false caption | scenes | true caption scores higher | mean gap (nats per image) |")
    emit("|---|---|---|---|---|")
    how = {"position": "opposite relation", "counting": "one more or fewer", "single": "another shape"}
    for cat, scenes in want.items():
        gap = (scores(pipe, scenes, [s.caption for s in scenes], a.passes)
               - scores(pipe, scenes, [false_caption(s) for s in scenes], a.passes))
        rows = {cat: torch.ones(len(scenes), dtype=torch.bool)}
        if cat == "position":  # each axis alone: a model may know one direction and not the other
            horizontal = torch.tensor([s.relation["relation"] in ("left of", "right of") for s in scenes])
            rows.update({"position, left/right": horizontal, "position, above/below": ~horizontal})
        for name, keep in rows.items():
            g = gap[keep]
            emit(f"| {name} | {how[cat]} | {len(g)} | {(g > 0).float().mean():.3f} | {g.mean():.1f} |")
    if pipe.text_encoder.caption_rule:  # e.g. "A right of B" reaches the encoder as "B left of A"
        emit(f"\nCaptions as written; the model's caption rule `{pipe.text_encoder.caption_rule}` rewrites "
             "them before the text encoder (src/fastmuse/text/captions.py).")
    emit("\n| captions | token states cos | cross-attention keys cos (lowest layer) |\n|---|---|---|")
    for x, y in TEXT_PAIRS:
        states, keys = text_separation(pipe, x, y)
        emit(f"| {x} / {y} | {states:.3f} | {keys:.3f} |")
    if a.out:
        atomic_write_text(a.out, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
