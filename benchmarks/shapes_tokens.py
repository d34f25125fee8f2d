"""Token-level diagnosis of shapes-world models: what the tokenizer allows, where the loss goes.

    python benchmarks/shapes_tokens.py ceiling --tokenizer tokenizer-v2 [--resolution 64 128]
        [--world 90001 12345]
    python benchmarks/shapes_tokens.py context RUN [RUN ...] [--ratios 0.1 0.5 0.9] [--n 256]
    python benchmarks/shapes_tokens.py commits RUN [--order confidence]
    python benchmarks/shapes_tokens.py denoise MODEL [MODEL ...] [--n 64]

`ceiling`: the shapes-suite checker on the suite's own scenes, drawn at each resolution, clean
and after a round trip through the tokenizer: the best accuracy any model predicting that
tokenizer's codes can reach there (and whether the checker itself reads that size).

`context`: held-out cross-entropy and accuracy of a training run's model, split into background
tokens (their patch is pure white) and object tokens. A masked model is scored on the masked
positions with a fraction `ratio` of each grid masked; an autoregressive one on every position
given the raster prefix. How much a masked model's object accuracy rises as the ratio falls
shows how much it reads its visible neighbours.

`commits`: a masked run's model decodes the suite's prompts with its own sampler settings; for
the tokens that end up as objects (non-white patches in the decoded image) and for the rest,
the share committed at each step.

`denoise`: a diffusion model (DiT folder or bundled name) denoises held-out scenes' latents in
one step from times t (pi/2 is pure noise); squared error of its clean estimate on object and
background tokens, against always predicting the data mean, with the right caption, a caption
shuffled between scenes and the empty caption. Where the right caption does no better than a
shuffled one, the model does not read the prompt at that noise level; t = 0.9-1.4 is where
the layout is decided, while at pi/2 the best estimate is near the data mean whatever the
caption (docs/diffusion-teacher.md).
"""

from __future__ import annotations

import argparse
import collections
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from fastmuse.data.images import to_pil, to_tensor
from fastmuse.data.shapes import render_scene, scene_at
from fastmuse.eval.shapes_check import check, detect
from fastmuse.eval.shapes_suite import CATEGORIES, EVAL_WORLD, render_item, suite_items, summarise
from fastmuse.models import ARTransformer, DiT, load_transformer
from fastmuse.models.dit import token_latents
from fastmuse.sampling.maskgit import maskgit_sample
from fastmuse.sampling.trigflow import add_noise, denoise
from fastmuse.text import load_text_encoder
from fastmuse.tokenizer import VQTokenizer
from fastmuse.train.masked import TransformerTrainConfig

HELD_OUT_WORLD = 777  # scenes no run trains on


@torch.no_grad()
def ceiling(tokenizer: str, resolutions: list[int], worlds: list[int]) -> None:
    tok = VQTokenizer.from_pretrained(tokenizer).eval()
    print(f"| tokenizer | world | px | images | {' | '.join(CATEGORIES)} | overall |")
    print("|---|---|---|---|" + "---|" * (len(CATEGORIES) + 1))
    for world in worlds:
        items = suite_items(world=world)
        for res in resolutions:
            clean = [render_item(it, res) for it in items]
            recon = tok.decode(tok.encode(torch.stack([to_tensor(im) for im in clean]))).clamp(-1, 1)
            for name, images in (("clean", clean), ("round trip", [to_pil(r) for r in recon])):
                per: dict[str, list[bool]] = {}
                for it, im in zip(items, images, strict=True):
                    per.setdefault(it.spec.category, []).append(check(detect(im), it.spec))
                acc = summarise(per)
                print(f"| {tokenizer} | {world} | {res} | {name} | "
                      + " | ".join(f"{acc[c]:.2f}" for c in CATEGORIES) + f" | **{acc['overall']:.2f}** |")


def entropy(codes: list[int]) -> tuple[int, float]:
    count = collections.Counter(codes)
    n = sum(count.values())
    return len(count), -sum(c / n * math.log(c / n) for c in count.values())


@torch.no_grad()
def held_out(tok: VQTokenizer, res: int, n: int) -> tuple[list, torch.Tensor, torch.Tensor]:
    """n scenes no run trains on, their codes [n, g, g] and which tokens are background (their
    patch is pure white)."""
    scenes = [scene_at(HELD_OUT_WORLD, i, res) for i in range(n)]
    images = torch.stack([to_tensor(render_scene(s, res)) for s in scenes])
    codes = torch.cat([tok.encode(images[i:i + 64]) for i in range(0, n, 64)])
    g, f = codes.shape[-1], tok.downsample
    return scenes, codes, (images.view(n, 3, g, f, g, f) > 0.99).all(dim=(1, 3, 5))


@torch.no_grad()
def context(runs: list[Path], ratios: list[float], n: int) -> None:
    encoder = load_text_encoder()
    print("| run | masked | background CE | background acc | object CE | object acc | "
          "share of loss on background |")
    print("|---|---|---|---|---|---|---|")
    notes = []
    for run in runs:
        cfg = TransformerTrainConfig.load(run / "config.json")
        tok = VQTokenizer.from_pretrained(cfg.tokenizer).eval()
        model = load_transformer(run / "transformer").eval()
        res = cfg.model.resolution
        scenes, codes, white = held_out(tok, res, n)
        g = codes.shape[-1]
        k, h = entropy(codes[white].tolist())
        ko, ho = entropy(codes[~white].tolist())
        share = float(white.float().mean())
        notes.append(f"{run.name} ({cfg.tokenizer}, {res} px): {share:.0%} of tokens are background, "
                     f"{k} codes, {h:.2f} nats; object tokens {ko} codes, {ho:.2f} nats")
        text = encoder.encode([s.caption for s in scenes])
        causal = isinstance(model, ARTransformer)
        for ratio in [1.0] if causal else ratios:
            gen = torch.Generator().manual_seed(0)
            if causal:
                mask, inputs = torch.ones_like(white), codes
            else:
                rank = torch.rand(codes.shape, generator=gen).flatten(1).argsort(1).argsort(1)
                mask = rank.view_as(codes) < max(1, round(g * g * ratio))
                inputs = torch.where(mask, model.mask_id, codes)
            logits = torch.cat([model(inputs[i:i + 64], model.prepare_text(text.index(slice(i, i + 64))))
                                for i in range(0, n, 64)]).float()
            ce = F.cross_entropy(logits.flatten(0, 2), codes.flatten(), reduction="none").view_as(codes)
            hit = (logits.argmax(-1) == codes).float()
            bg, ob = white & mask, ~white & mask
            masked = "prefix (AR)" if causal else f"{ratio:.0%}"
            print(f"| {run.name} | {masked} | {float(ce[bg].mean()):.2f} | {float(hit[bg].mean()):.3f} | "
                  f"{float(ce[ob].mean()):.2f} | {float(hit[ob].mean()):.3f} | "
                  f"{float(ce[bg].sum() / ce[mask].sum()):.2f} |")
    print()
    for line in notes:
        print(line)


@torch.no_grad()
def commits(run: Path, order: str, n: int) -> None:
    from shapes_runs import run_pipeline

    pipe, _ = run_pipeline(run)
    prompts = [it.prompt for it in suite_items()][:n]
    sampling = pipe.sampling(prompts, n=2, order=order)
    mask_id = pipe.transformer.mask_id
    g = pipe.transformer.config.grid
    init = torch.full((len(prompts) * 2, g, g), mask_id)
    history: list[torch.Tensor] = []
    tokens = maskgit_sample(sampling.model, init, sampling.cond, sampling.uncond, steps=sampling.steps,
                            guidance=sampling.guidance, generator=sampling.generator,
                            callback=lambda i, x: history.append(x.clone()), **sampling.options)
    step = torch.full(tokens.shape, -1)
    for i, x in enumerate(history):
        step = torch.where((step < 0) & (x != mask_id), i, step)
    images = pipe.tokenizer.decode(tokens).clamp(-1, 1)
    f = images.shape[-1] // g
    obj = ~(images.view(len(images), 3, g, f, g, f) > 0.9).all(dim=(1, 3, 5))
    print(f"| tokens | share | {' | '.join(f'step {i + 1}' for i in range(len(history)))} |")
    print("|---|---|" + "---|" * len(history))
    for name, sel in (("object", obj), ("background", ~obj)):
        count = collections.Counter(step[sel].tolist())
        total = sum(count.values())
        print(f"| {name} | {total / step.numel():.2f} | "
              + " | ".join(f"{count.get(i, 0) / total:.2f}" for i in range(len(history))) + " |")


DENOISE_TIMES = (0.3, 0.9, 1.2, 1.4, math.pi / 2)


@torch.no_grad()
def denoise_probe(models: list[str], n: int) -> None:
    times = " | ".join(f"t = {t:.2f}" for t in DENOISE_TIMES)
    print(f"| model | caption | tokens | data mean | {times} |")
    print("|---|---|---|---|" + "---|" * len(DENOISE_TIMES))
    for name in models:
        model = load_transformer(name).eval()
        if not isinstance(model, DiT):
            raise SystemExit(f"{name}: a {type(model).__name__}; accepted: a diffusion model (DiT)")
        cfg = model.config
        tok = VQTokenizer.from_pretrained(cfg.tokenizer).eval()
        encoder = load_text_encoder(cfg.text_encoder).with_caption_rule(cfg.caption_rule)
        scenes, codes, white = held_out(tok, cfg.resolution, n)
        x0 = token_latents(tok, codes, cfg.latent_scale)
        z = cfg.sigma_d * torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
        base = ((x0.mean(dim=(0, 2, 3), keepdim=True) - x0) ** 2).mean(1)
        captions = [s.caption for s in scenes]
        shuffled = captions[1:] + captions[:1]
        for label, caps in (("right", captions), ("shuffled", shuffled), ("empty", [""] * n)):
            ctx = model.prepare_text(encoder.encode(caps))
            errors = []
            for t in DENOISE_TIMES:
                tt = torch.full((n,), t)
                x_t = add_noise(x0, tt, z)
                errors.append(((denoise(x_t, tt, model.velocity(x_t, tt, ctx)) - x0) ** 2).mean(1))
            for part, sel in (("object", ~white), ("background", white)):
                print(f"| {name} | {label} | {part} | {float(base[sel].mean()):.3f} | "
                      + " | ".join(f"{float(e[sel].mean()):.3f}" for e in errors) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    c = sub.add_parser("ceiling", help="checker accuracy on the suite's scenes after a tokenizer round trip")
    c.add_argument("--tokenizer", default="tokenizer-v2")
    c.add_argument("--resolution", type=int, nargs="+", default=[64, 128])
    c.add_argument("--world", type=int, nargs="+", default=[EVAL_WORLD])
    x = sub.add_parser("context", help="loss and accuracy on background vs object tokens")
    x.add_argument("runs", type=Path, nargs="+")
    x.add_argument("--ratios", type=float, nargs="+", default=[0.1, 0.5, 0.9],
                   help="fractions of each grid masked (masked models)")
    x.add_argument("--n", type=int, default=256, help="held-out scenes")
    m = sub.add_parser("commits", help="at which step the tokens that end up as objects are committed")
    m.add_argument("run", type=Path)
    m.add_argument("--order", choices=["confidence", "halton"], default="confidence")
    m.add_argument("--n", type=int, default=24, help="suite prompts (2 images each)")
    d = sub.add_parser("denoise", help="a DiT's one-step clean estimate by noise level and caption")
    d.add_argument("models", nargs="+", help="DiT folders or bundled names")
    d.add_argument("--n", type=int, default=64, help="held-out scenes")
    a = ap.parse_args()
    if a.what == "ceiling":
        ceiling(a.tokenizer, a.resolution, a.world)
    elif a.what == "context":
        context(a.runs, a.ratios, a.n)
    elif a.what == "commits":
        commits(a.run, a.order, a.n)
    else:
        denoise_probe(a.models, a.n)


if __name__ == "__main__":
    main()
