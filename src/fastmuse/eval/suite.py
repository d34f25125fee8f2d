"""`fastmuse eval`: run the suites on a model and write results.json, results.md and grids.

Suites:
  shapes  compositional accuracy by category (shapes_suite, checked from pixels)
  emoji   FID and KID of images generated from the held-out emoji captions against renders
          of those emoji, and retrieval R@1: is a generated image's nearest real image (cosine,
          same features) the emoji it was asked for; the same for as many training emoji
          (in-distribution: how much of the val gap is generalisation)
  speed   seconds per image at several batch sizes, network evaluations, peak RSS
  tokenizer  the model's VQ tokenizer alone: PSNR, SSIM, codebook usage and code perplexity of
          round trips of the held-out emoji renders and the shapes suite's ground-truth scenes,
          and token consistency (modal-code share of flat images, eval/tokenizer.py)
"""

from __future__ import annotations

import json
import resource
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..data import emoji
from ..data.images import make_grid
from ..errors import ConfigError
from ..fsutil import atomic_write_bytes
from ..pipeline import MAX_IMAGES, Pipeline
from . import SUITES
from .machine import describe_machine
from .shapes_check import check, detect
from .shapes_suite import CATEGORIES, EVAL_WORLD, SUITE_VERSION, render_item, suite_items, summarise


@dataclass
class EvalSettings:
    seeds: int = 4             # images per prompt
    steps: int | None = None   # None: the model's default
    guidance: float | None = None
    batch_sizes: tuple[int, ...] = (1, 4, 16)
    device: str = "cpu"        # where the models run (cpu, cuda, cuda:N, auto); precision fp32


def _generate(pipe: Pipeline, prompts: list[str], s: EvalSettings, desc: str) -> list:
    per_call = max(1, MAX_IMAGES // 2 // s.seeds)
    images = []
    for i in tqdm(range(0, len(prompts), per_call), desc=desc, unit="batch", leave=False):
        images += pipe(prompts[i:i + per_call], n=s.seeds, steps=s.steps, guidance=s.guidance, seed=i)
    return images


def shapes_accuracy(pipe: Pipeline, s: EvalSettings, categories: tuple[str, ...] = CATEGORIES,
                    world: int = EVAL_WORLD) -> tuple[dict[str, float], list, list]:
    """Per-category accuracy (and "overall", their mean) of the suite's prompts of `categories`
    drawn from shapes world `world`, s.seeds images each; also returns the images and items."""
    items = [it for it in suite_items(world=world) if it.spec.category in categories]
    images = _generate(pipe, [it.prompt for it in items], s, "shapes")
    per: dict[str, list[bool]] = {}
    for k, im in enumerate(images):
        item = items[k // s.seeds]
        per.setdefault(item.spec.category, []).append(check(detect(im), item.spec))
    return summarise(per), images, items


def eval_shapes(pipe: Pipeline, s: EvalSettings) -> tuple[dict, object]:
    accuracy, images, items = shapes_accuracy(pipe, s)
    show = [images[k * s.seeds] for k in range(0, len(items), 6)]
    grid = make_grid(show, ncols=6, captions=[items[k].prompt for k in range(0, len(items), 6)])
    return {"suite": SUITE_VERSION, "images": len(images), "accuracy": accuracy}, grid


def emoji_entries(split: str) -> list[emoji.Emoji]:
    """The emoji the suite scores: every held-out one ("val"), or as many training emoji spread
    evenly through the catalogue ("train"; FD depends on the sample size, so the sets are equal)."""
    catalogue = emoji.catalogue()
    val = [e for e in catalogue if e.split == "val"]
    if split == "val":
        return val
    train = [e for e in catalogue if e.split == "train"]
    return train[::max(1, len(train) // max(1, len(val)))][:len(val)]


def eval_emoji(pipe: Pipeline, s: EvalSettings,
               splits: tuple[str, ...] = ("val", "train")) -> tuple[dict, object]:
    """FD, KID and R@1 on the held-out emoji (top-level keys) and, when `splits` has "train",
    on as many training emoji (under "train"); the grid shows the held-out ones."""
    from .distribution import InceptionFeatures, fd, kid

    features = InceptionFeatures()
    result, grid = {"features": features.name}, None
    for split in splits:
        entries = emoji_entries(split)
        if not entries:
            continue
        real = [emoji.render(e, pipe.resolution) for e in entries]
        images = _generate(pipe, [e.caption for e in entries], s, f"emoji {split}")
        fr, fg = features(real), features(images)
        unit = lambda f: f / np.linalg.norm(f, axis=1, keepdims=True)  # noqa: E731
        nearest = (unit(fg) @ unit(fr).T).argmax(1)
        scores = {"real": len(real), "generated": len(images), "fid": fd(fg, fr), "kid": kid(fg, fr),
                  "retrieval_r1": float((nearest == np.arange(len(images)) // s.seeds).mean()),
                  "retrieval_chance": 1 / len(real)}
        if split == "val":
            result.update(scores)
            grid = make_grid(images[::s.seeds][:24], ncols=8, captions=[e.caption for e in entries[:24]])
        else:
            result[split] = scores
    return result, grid


def eval_speed(pipe: Pipeline, s: EvalSettings) -> dict:
    steps = s.steps or pipe.defaults.steps
    guidance = pipe.defaults.guidance if s.guidance is None else s.guidance
    rows = {}
    for b in s.batch_sizes:
        pipe("a red circle", n=b, steps=steps, guidance=guidance)  # warm-up
        t0 = time.perf_counter()
        pipe("a red circle", n=b, steps=steps, guidance=guidance, seed=1)
        took = time.perf_counter() - t0
        rows[str(b)] = {"seconds_per_image": took / b, "images_per_second": b / took}
    return {"steps": steps, "guidance": guidance,
            "network_evaluations": pipe.network_evaluations(steps, guidance),
            "threads": torch.get_num_threads(), "by_batch": rows,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def eval_tokenizer(pipe: Pipeline) -> tuple[dict, object]:
    from ..data.images import to_tensor
    from ..eval.tokenizer import evaluate_recon, flat_consistency, recon_grid

    res = pipe.resolution
    sets = {"emoji_val": [emoji.render(e, res) for e in emoji_entries("val")],
            "shapes_scenes": [render_item(it, res) for it in suite_items()]}
    result, grids = {}, []
    for name, pil in sets.items():
        images = torch.stack([to_tensor(im) for im in pil])
        r = evaluate_recon(pipe.tokenizer, images)
        grids.append(recon_grid(images, r.pop("recon"), n=8))
        result[name] = r
    used = {name: r.pop("codes_used") for name, r in result.items()}
    result["codebook_size"] = pipe.tokenizer.codebook_size
    result["codes_used"] = used
    result["flat"] = flat_consistency(pipe.tokenizer)
    return result, make_grid(grids, ncols=1)


def evaluate(model: str, suites: list[str], out: Path, s: EvalSettings) -> dict:
    unknown = [x for x in suites if x not in SUITES]
    if unknown:
        raise ConfigError(f"suite {unknown[0]!r} unknown; accepted: {', '.join(SUITES)}")
    pipe = Pipeline.from_pretrained(model, device=s.device)
    out.mkdir(parents=True, exist_ok=True)
    result = {"model": model, "steps": s.steps or pipe.defaults.steps,
              "guidance": pipe.defaults.guidance if s.guidance is None else s.guidance, "seeds": s.seeds,
              "machine": describe_machine()}
    for suite in suites:
        t0 = time.perf_counter()
        if suite == "speed":
            result["speed"] = eval_speed(pipe, s)
        else:
            run = {"shapes": lambda: eval_shapes(pipe, s), "emoji": lambda: eval_emoji(pipe, s),
                   "tokenizer": lambda: eval_tokenizer(pipe)}[suite]
            result[suite], grid = run()
            grid.save(out / f"{suite}.png")
        result.setdefault("eval_seconds", {})[suite] = round(time.perf_counter() - t0, 1)
    atomic_write_bytes(out / "results.json", (json.dumps(result, indent=2) + "\n").encode())
    return result


def table(results: list[dict]) -> str:
    """Markdown: one row per evaluated (model, steps, guidance), metrics as columns
    (the tokenizer's on the held-out emoji renders)."""
    head = ["model", "steps", "guidance", "shapes overall", "single", "colour", "two obj", "counting",
            "colour attr", "position", "emoji FID", "emoji FID (train)", "KID x1e3", "R@1", "s/img (b=1)",
            "img/s (b=16)", "NFE",
            "VQ PSNR", "VQ SSIM", "codebook use", "shapes code ppl", "flat modal share"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        acc = r.get("shapes", {}).get("accuracy", {})
        em, sp = r.get("emoji", {}), r.get("speed", {}).get("by_batch", {})
        tok = r.get("tokenizer", {})
        cells = [r["model"], r["steps"], r["guidance"],
                 *(f"{acc[k]:.3f}" if k in acc else "" for k in ("overall", *CATEGORIES)),
                 f"{em['fid']:.1f}" if em else "", f"{em['train']['fid']:.1f}" if "train" in em else "",
                 f"{em['kid'] * 1e3:.1f}" if em else "",
                 f"{em['retrieval_r1']:.3f}" if em else "",
                 f"{sp['1']['seconds_per_image']:.2f}" if "1" in sp else "",
                 f"{sp['16']['images_per_second']:.2f}" if "16" in sp else "",
                 r.get("speed", {}).get("network_evaluations", ""),
                 *(f"{tok['emoji_val'][k]:{f}}" if tok else "" for k, f in
                   (("psnr", ".2f"), ("ssim", ".3f"), ("codebook_usage", ".3f"))),
                 f"{tok['shapes_scenes']['code_perplexity']:.1f}" if tok else "",
                 f"{tok['flat']['min_modal_share']:.3f}" if tok else ""]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"
