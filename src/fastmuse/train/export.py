"""From a finished run to a model folder with a model card whose figures are rerunnable:
held-out token accuracy (`fastmuse transformer eval`), loss curves, a sample grid. Masked
and autoregressive runs get the same card, worded for their objective; a diffusion (DiT)
run gets its held-out flow loss instead."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

from PIL import Image

from ..data.images import make_grid
from ..hub import stored
from ..models import DiT, Transformer, load_transformer
from ..models.transformer import low_res_grid, micro_names
from ..pipeline import Pipeline, SamplerDefaults
from ..text.captions import CAPTION_RULES
from ..text.encoders import load_text_encoder
from ..tokenizer import VQTokenizer
from .masked import (
    TransformerTrainConfig,
    evaluate_diffusion,
    evaluate_masked,
    grid_rows,
    training_data,
    val_groups,
)
from .plot import plot_curves
from .run import SAMPLE_PROMPTS

CARD_PROMPTS = SAMPLE_PROMPTS  # the prompts the run's sample grids showed


def heldout_accuracy(model: str | Path, config: str | Path, loaded: Transformer | None = None) -> dict:
    """Val-split masked-token loss/accuracy of `model` (`loaded`: already in memory) on the data
    of training config `config`, with the captions and with every caption replaced by "" (what
    the text adds)."""
    cfg = TransformerTrainConfig.load(config)
    m = loaded if loaded is not None else load_transformer(model)
    tokenizer = VQTokenizer.from_pretrained(cfg.tokenizer)
    # the captions as the model reads them (its caption rule), so the training run's cache is reused
    encoder = load_text_encoder(cfg.text_encoder).with_caption_rule(getattr(m.config, "caption_rule", ""))
    data, low = training_data(cfg.replace(model=m.config), tokenizer, encoder)
    groups = val_groups(data)
    if m.config.objective == "diffusion":  # held-out flow loss at fixed times and noise
        return {"model": str(model), "config": str(config),
                "val_counts": {k: len(r) for k, r in groups.items()},
                "with_captions": evaluate_diffusion(m, tokenizer, data.val, data.captions, groups)}
    low = low.val if low else None
    with_text = evaluate_masked(m, data.val, data.captions, groups, low=low)
    empty = int(data.captions.rows([""])[0])
    without = evaluate_masked(m, data.val, data.captions, groups, caption_row=empty, low=low)
    return {"model": str(model), "config": str(config), "val_counts": {k: len(r) for k, r in groups.items()},
            "chance_acc": 1 / m.config.codebook_size, "with_captions": with_text, "empty_captions": without}


def _png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def export_run(run: str | Path, out: str | Path, name: str, notes: str = "",
               defaults: SamplerDefaults | None = None, dtype: str = "fp32", reproduce: str = "") -> Path:
    """`dtype`: how the weights are stored; the card's grid and figures are made with the
    weights rounded to it, so they show what the folder holds. `reproduce`: the card's
    commands after `make demo` (default: train configs/NAME.json, then export), for models
    made by a chain of runs."""
    run = Path(run)
    cfg = TransformerTrainConfig.load(run / "config.json")
    model = load_transformer(run / "transformer")
    model.load_state_dict(stored(model.state_dict(), dtype))  # rounded, still computed in fp32
    if model.config.objective == "diffusion":
        return export_diffusion_run(run, cfg, model, out, name, notes, defaults, dtype, reproduce)
    ar = model.config.objective == "autoregressive"
    defaults = defaults or SamplerDefaults()
    if ar:  # one step per token
        defaults = dataclasses.replace(defaults, steps=model.config.grid ** 2)
    pipe = Pipeline(model, VQTokenizer.from_pretrained(cfg.tokenizer), load_text_encoder(cfg.text_encoder),
                    defaults)
    mc = model.config
    data, low = ((None, None) if not (micro_names(mc) or low_res_grid(mc)) else
                 training_data(cfg, pipe.tokenizer, pipe.text_encoder))
    if micro_names(mc) and pipe.defaults.micro is None:
        pipe.defaults = dataclasses.replace(pipe.defaults, micro=default_micro(mc, data, cfg))
    d = pipe.defaults
    grid, grid_line = super_res_grid(pipe, data, low, name) if low_res_grid(mc) else card_grid(pipe, name)
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines() if x]
    ev = heldout_accuracy(run / "transformer", run / "config.json", model)
    params = sum(p.numel() for p in model.parameters())
    last = next(r for r in reversed(records) if "loss" in r)
    order = ", raster order" if ar else f", {d.schedule} schedule"
    grid_line = grid_line.replace("{order}", order)
    kind, what, extra_id, objective, heldout = objective_text(mc, cfg, ar)
    card = f"""# {name}: {kind} (fastmuse)

{what}

![samples](grid.png)

{grid_line}
{conditions_text(mc, cfg, d, name)}
## Model
- {params / 1e6:.1f}M parameters: {mc.describe()}; {mc.codebook_size}-way logits (+1 {extra_id} id).
  Stored as {dtype} (computed in fp32 or the precision asked for).
- Text encoder: {encoder_text(mc)}
- Image tokenizer: `{mc.tokenizer}`, frozen.
- Sampling defaults (`sampler.json`): {json.dumps(vars(d))}.

## Training data
{", ".join(f"`{s}` x{k}" for s, k in zip(cfg.data, cfg.repeats, strict=True))} (repeats = times each
sample appears per epoch); shapes streams give {cfg.shapes_train} train scenes each. Emoji captions:
the CLDR name, or with probability {cfg.alt_caption_prob} one of its alternative names; captions
dropped to "" with probability {cfg.caption_dropout} (for classifier-free guidance).{views_text(cfg)}

## Training
{cfg.steps} steps x batch {cfg.batch_size} (x{cfg.grad_accum} accumulation), AdamW lr {cfg.lr}
({lr_text(cfg)}), weight decay {cfg.weight_decay}, label smoothing
{cfg.label_smoothing}, EMA {cfg.ema_decay} (these are the weights here), {objective}.
Last logged train loss {last['loss']:.3f}, accuracy {last['acc']:.3f}.
{notes}

![loss](loss.png) ![accuracy](accuracy.png)

## Held-out token accuracy
{heldout} on the val splits (never trained on); chance is {ev['chance_acc']:.4f}.
"no text" replaces every caption by "".

{heldout_table(ev, ar)}

Rerun: `fastmuse transformer eval --model {name} --config configs/{name}.json` (this folder's
`eval.json`).

{reproduce_text(name, reproduce)}"""
    return pipe.save_pretrained(out, card=card, extra_files=card_files(run, grid, ev, records), dtype=dtype)


def lr_text(cfg: TransformerTrainConfig) -> str:
    schedule = "constant" if cfg.min_lr_ratio == 1 else f"cosine to x{cfg.min_lr_ratio}"
    return f"warm-up {cfg.warmup_steps}, then {schedule}"


def reproduce_text(name: str, reproduce: str, export_args: str = "") -> str:
    """The card's Reproduce section: `reproduce`, or one training run of configs/NAME.json."""
    lines = reproduce.strip() or (
        f"fastmuse train transformer --config configs/{name}.json --out runs/{name}\n"
        f"fastmuse transformer export --run runs/{name} --out src/fastmuse/assets/{name}{export_args}")
    demo = "make demo                                   # builds data/emoji and the venv"
    return f"## Reproduce\n```\n{demo}\n{lines}\n```\n"


def card_files(run: Path, grid: Image.Image, ev: dict, records: list[dict]) -> dict[str, bytes]:
    """What the card shows and cites: the grid, eval.json, loss and accuracy curves, the log."""
    return {"grid.png": _png(grid), "eval.json": (json.dumps(ev, indent=2) + "\n").encode(),
            "loss.png": _png(plot_curves(records, ["loss", "val_loss"], "token cross-entropy")),
            "accuracy.png": _png(plot_curves(records, ["acc", "val_acc", "val_acc50"], "token accuracy")),
            "metrics.jsonl": (run / "metrics.jsonl").read_bytes()}


def objective_text(mc, cfg: TransformerTrainConfig, ar: bool) -> tuple[str, str, str, str, str]:
    """The card's wording for the model's objective: its kind, what it is, its extra token id,
    its training loss and what its held-out accuracy measures."""
    origin = (f"Warm-started from `{cfg.init_from}` (matching weights copied, position embeddings "
              "resampled to the grid; the new condition layers start as no-ops), then trained"
              if cfg.init_from else "Trained from scratch")
    return (
        ("autoregressive baseline", f"""\
A causal transformer of the same size, text conditioning and training as the masked
models, that writes {mc.grid}x{mc.grid} tokens of the `{mc.tokenizer}` VQ tokenizer ({mc.resolution} px)
one at a time in raster order (KV cache, classifier-free guidance): the baseline the
evaluation suite compares parallel decoding with. Trained from scratch on a 2-core CPU by fastmuse.""",
         "BOS", "next-token loss on every token (teacher forcing)",
         "Next-token accuracy with the true prefix (teacher forcing)") if ar else
        ("masked text-to-image transformer", f"""\
A Muse-style masked image transformer that turns a prompt into {mc.grid}x{mc.grid} tokens of
the `{mc.tokenizer}` VQ tokenizer ({mc.resolution} px), decoded by MaskGIT parallel decoding
with classifier-free guidance. {origin} on a 2-core CPU by fastmuse.""",
         "MASK", "cosine mask-ratio schedule, loss on masked tokens only",
         "Masked-token accuracy with fixed masks; `acc`: cosine-schedule mask ratios, `acc50`: half\n"
         "of each grid masked"))


def card_grid(pipe: Pipeline, name: str) -> tuple[Image.Image, str]:
    """The card's sample grid (4 images of each card prompt, seed 0) and the line under it
    ("{order}" is left for the caller: the decoding order)."""
    d = pipe.defaults
    images = pipe(list(CARD_PROMPTS), n=4, seed=0)
    grid = make_grid(images, ncols=8, captions=[p for p in CARD_PROMPTS for _ in range(4)])
    lo, hi = d.guidance_interval
    on = "" if (lo, hi) == (0.0, 1.0) else f" on the steps in [{lo:g}, {hi:g}) of the schedule"
    line = (f"Prompts above (seed 0, {d.steps} steps, guidance {d.guidance}{on}{{order}}, "
            f"{pipe.network_evaluations(d.steps, d.guidance)} network evaluations per image), "
            "4 images each:\n"
            f"`fastmuse generate {' '.join(repr(p) for p in CARD_PROMPTS[:2])} ... --n 4 --seed 0 "
            f"--model {name}`.")
    return grid, line


def encoder_text(mc) -> str:
    """The card's text encoder line, with the caption rule the model was trained with."""
    text = f"`{mc.text_encoder}` ({mc.text_dim}-d token states, {mc.pooled_dim}-d pooled), frozen."
    if not getattr(mc, "caption_rule", ""):  # public architectures have none
        return text
    return (f"{text}\n  Caption rule `{mc.caption_rule}` (src/fastmuse/text/captions.py), in training and "
            f"on every\n  prompt: {CAPTION_RULES[mc.caption_rule].__doc__}")


def heldout_table(ev: dict, ar: bool) -> str:
    """The card's held-out accuracy table from `heldout_accuracy`'s result (an autoregressive
    model has no acc50 column)."""
    w, e = ev["with_captions"], ev["empty_captions"]
    acc50 = (lambda k: "") if ar else (lambda k: f" {w[k]:.3f} |")  # noqa: E731
    lines = [f"| val set (images) | acc |{'' if ar else ' acc50 |'} loss | acc, no text |",
             f"|---|---|{'' if ar else '---|'}---|---|"]
    lines += [f"| {g} ({n}) | {w[f'val_acc_{g}']:.3f} |{acc50(f'val_acc50_{g}')} {w[f'val_loss_{g}']:.3f} | "
              f"{e[f'val_acc_{g}']:.3f} |" for g, n in ev["val_counts"].items()]
    lines.append(f"| all | {w['val_acc']:.3f} |{acc50('val_acc50')} {w['val_loss']:.3f} | "
                 f"{e['val_acc']:.3f} |")
    return "\n".join(lines)


def default_micro(mc, data, cfg: TransformerTrainConfig) -> dict[str, float]:
    """Sampling defaults of the micro-conditions: the whole image at the model's resolution, and
    the median score of the training images' whole views."""
    whole = data.train.micro[::1 + cfg.crops]
    values = {"orig_size": float(mc.resolution), "crop_top": 0.0, "crop_left": 0.0,
              "score": round(float(whole[:, 3].median()), 1)}
    return {k: values[k] for k in mc.micro_conds}


def views_text(cfg: TransformerTrainConfig) -> str:
    if not (cfg.read_resolution or cfg.crops):
        return ""
    read = cfg.read_resolution or cfg.model.resolution
    return (f"\nViews: every image read at {read} px and stored as its whole view plus {cfg.crops} random "
            f"crop(s) of 50-90% of its side, each resized to {cfg.model.resolution} px (data/tokens.py).")


def conditions_text(mc, cfg: TransformerTrainConfig, d: SamplerDefaults, name: str) -> str:
    """The card's section on micro-conditions / the super-resolution input ("" for neither)."""
    out = ""
    if micro_names(mc):
        out += f"""
## Micro-conditions
{", ".join(f"`{m}`" for m in mc.micro_conds)}: each a 64-d sinusoid, through an MLP added to the
pooled-text conditioning. `orig_size` is the px size of the whole image at the scale of what the
model sees, (`crop_top`, `crop_left`) the corner of the {mc.resolution} px window in it (a whole
view: {mc.resolution}, 0, 0); `score` is its colourfulness (Hasler & Suesstrunk 2003: 0 for grey,
higher for more vivid colour; data/tokens.py). Training dropped all of an image's to unknown with
probability {cfg.micro_dropout}, so `none` (unknown) is allowed too. Defaults (`sampler.json`):
{json.dumps(d.micro)}, the whole image at median colourfulness. Steer, e.g.:
`fastmuse generate 'red heart' --model {name} --micro score=100` (more vivid) or
`--micro orig_size=110 --micro crop_top=23 --micro crop_left=23` (a zoomed-in centre window).
"""
    if low_res_grid(mc):
        lo = mc.resolution * mc.low_res_grid // mc.grid
        out += f"""
## Super-resolution
Input: the {mc.low_res_grid}x{mc.low_res_grid} token grid of a {lo} px image (`low_res`), embedded and
added to the {mc.grid // mc.low_res_grid}x{mc.grid // mc.low_res_grid} block of positions each token
covers, plus the text (guidance drops the text only). Training pairs: every training image's
{mc.resolution} px tokens and the tokens of the same image downscaled to {lo} px (bicubic, antialiased).
Use it after a {lo} px base model: `fastmuse generate 'red heart' --stages BASE {name}`
(`fastmuse generate --help`); alone it refuses to run.
"""
    return out


def super_res_grid(pipe: Pipeline, data, low, name: str, n: int = 8):
    """Val images: low-res tokens decoded (upscaled for display) / this model's output / the
    full-resolution tokens decoded."""
    rows, prompts = grid_rows(data, n)
    out = pipe.generate_tokens(prompts, seed=0, low_res=low.val.tokens[rows])
    size = (pipe.resolution, pipe.resolution)
    small = [im.resize(size) for im in pipe.decode(low.val.tokens[rows])]
    images = small + pipe.decode(out) + pipe.decode(data.val.tokens[rows])
    captions = prompts + ["upsampled"] * n + ["original"] * n
    lo = pipe.transformer.config.low_res_grid * pipe.tokenizer.downsample
    line = (f"Top: {n} val images (never trained on) as {lo} px tokens, decoded (and resized for "
            f"display); middle: {name}'s upsampling of those tokens with their captions (seed 0, "
            f"{pipe.defaults.steps} steps, guidance {pipe.defaults.guidance}); bottom: the "
            f"{pipe.resolution} px originals' tokens decoded.")
    return make_grid(images, ncols=n, captions=captions), line


def export_diffusion_run(run: Path, cfg: TransformerTrainConfig, model: DiT, out: str | Path, name: str,
                         notes: str, defaults: SamplerDefaults | None, dtype: str, reproduce: str) -> Path:
    defaults = dataclasses.replace(defaults or SamplerDefaults(steps=16, guidance=1.0), sampler="ode")
    pipe = Pipeline(model, VQTokenizer.from_pretrained(cfg.tokenizer), load_text_encoder(cfg.text_encoder),
                    defaults)
    d, mc = pipe.defaults, model.config
    images = pipe(list(CARD_PROMPTS), n=4, seed=0)
    grid = make_grid(images, ncols=8, captions=[p for p in CARD_PROMPTS for _ in range(4)])
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines() if x]
    ev = heldout_accuracy(run / "transformer", run / "config.json", model)
    w = ev["with_captions"]
    rows = "\n".join(f"| {g} ({n}) | {w[f'val_loss_{g}']:.4f} |" for g, n in ev["val_counts"].items())
    last = next(r for r in reversed(records) if "loss" in r)
    params = sum(p.numel() for p in model.parameters())
    card = f"""# {name}: latent diffusion transformer (fastmuse)

A DiT-style text-conditioned diffusion transformer in the TrigFlow parameterisation
(x_t = cos(t) x0 + sin(t) z, sigma_d = {mc.sigma_d}, the network predicts the velocity) on the
continuous latent of the `{mc.tokenizer}` VQ tokenizer (its codebook vectors,
{mc.grid}x{mc.grid}x{mc.channels} at {mc.resolution} px, decoded by the same decoder as the masked
models), sampled by its probability-flow ODE with classifier-free guidance: the teacher that
`fastmuse distill dmd` (and sCM) distil. Trained from scratch on a 2-core CPU by fastmuse.

![samples](grid.png)

Prompts above (seed 0, {d.steps} {d.solver} steps, guidance {d.guidance}), 4 images each:
`fastmuse generate {' '.join(repr(p) for p in CARD_PROMPTS[:2])} ... --n 4 --seed 0 --model {name}`.
Network evaluations per image: {pipe.network_evaluations(d.steps, d.guidance)}.

## Model
- {params / 1e6:.1f}M parameters: {mc.describe()}.
- Data scale: codebook vectors x {mc.latent_scale:.4f} (standard deviation {mc.sigma_d} on the training set).
- Text encoder: `{mc.text_encoder}` ({mc.text_dim}-d token states, {mc.pooled_dim}-d pooled), frozen.
- Sampling defaults (`sampler.json`): {json.dumps(vars(d))}.

## Training data
{", ".join(f"`{s}` x{k}" for s, k in zip(cfg.data, cfg.repeats, strict=True))} (repeats = times each
sample appears per epoch), {mc.resolution} px, the same token cache as the masked models; captions
dropped to "" with probability {cfg.caption_dropout} (for classifier-free guidance).

## Training
{"" if not cfg.init_from else f"Warm-started from `{cfg.init_from}`, then "}{cfg.steps} steps x batch \
{cfg.batch_size}, AdamW lr {cfg.lr} ({lr_text(cfg)}), weight decay {cfg.weight_decay}, EMA {cfg.ema_decay} \
(these are the weights here); flow loss |v_pred - (cos(t) z - sin(t) x0)|^2 at times \
tan(t) = e^tau / sigma_d, tau ~ N({mc.time_mean}, {mc.time_std}).
Last logged train loss {last['loss']:.4f}.
{notes}

![loss](loss.png)

## Held-out flow loss
Val splits (never trained on), the same times and noise every time it is measured.

| val set (images) | flow loss |
|---|---|
{rows}
| all | {w['val_loss']:.4f} |

{reproduce_text(name, reproduce, f" --steps {d.steps} --guidance {d.guidance}")}"""
    files = {"grid.png": _png(grid), "eval.json": (json.dumps(ev, indent=2) + "\n").encode(),
             "loss.png": _png(plot_curves(records, ["loss", "val_loss"], "flow loss")),
             "metrics.jsonl": (run / "metrics.jsonl").read_bytes()}
    return pipe.save_pretrained(out, card=card, extra_files=files, dtype=dtype)
