"""Text -> image: text encoder + masked transformer + MaskGIT sampler + VQ decoder
(or, for the autoregressive baseline, + raster-order sampler; for a Di[M]O student, the
one-step sampler that `sampler.json` names). For a diffusion transformer (DiT, the DMD/sCM
teacher) the "tokens" are continuous latents of the same VQ decoder, sampled by the
probability-flow ODE, or for a distilled student by its few-step sampler.

    pipe = Pipeline.from_pretrained("muse-128")          # a bundled name or a folder
    images = pipe("red heart", n=4, steps=12, guidance=3.0, seed=0)   # list of PIL images
    fast = Pipeline.from_pretrained("muse-128", precision="int8")     # fast modes: fast.py

Two stages (Muse): a base model makes a low-res token grid, a super-resolution model turns it
(+ the text) into the high-res grid, decoded by the shared tokenizer:

    pipe = Pipeline.from_stages(["muse-64", "muse-sr-128"])          # 64 px -> 128 px
    images = pipe("red heart", n=4, micro={"score": 90})   # micro-conditions of the base

A model folder is a transformer checkpoint whose config names its image tokenizer and
text encoder (`tokenizer/` inside the folder wins over the named one) plus `sampler.json`,
the sampling defaults it was tuned with; or an aMUSEd / Meissonic folder as the reference
code writes it (`transformer/`, `vqvae/`, `text_encoder/`, `tokenizer/`), loaded into our
modules with the reference's sampling defaults.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from PIL import Image

from .editing import EditingMixin
from .errors import CheckpointError, ConfigError
from .fast import check_precision, compile_forward, inference, resolve_device
from .hub import BUNDLED_DIR, bundled_models, resolve, save_checkpoint, stored
from .int8 import QUANT_FILE, int8_state, is_int8_folder, is_quantized, quant_file, quantize_int8
from .models import DiT, MaskedTransformer, TextContext, load_transformer
from .models.from_diffusers import load_diffusers_transformer
from .models.transformer import low_res_grid, micro_names
from .sampling.families import SAMPLER_FILE, Family, SamplerDefaults, SamplingRun, family_for
from .sampling.maskgit import guidance_context, token_logprob
from .text.encoders import TextEncoder, check_prompts, load_text_encoder
from .tokenizer import VQTokenizer

MAX_IMAGES = 64  # per call: n * len(prompts)


def reference_defaults(steps: int, guidance: float) -> SamplerDefaults:
    """The aMUSEd / Meissonic pipelines' sampling settings in our sampler's terms: their guidance
    g is our g - 1 (they guide from the unconditional logits, we from the conditional ones);
    their confidence temperature (2, 0), linear over steps 0..N-1, is our noise x (1 - (i+1)/N)
    with noise = 2N / (N - 1)."""
    return SamplerDefaults(steps=steps, guidance=guidance - 1, noise=2 * steps / (steps - 1))


# defaults of the reference code: AmusedPipeline's arguments; Meissonic's inference.py
REFERENCE_DEFAULTS = {"UViT": reference_defaults(12, 10.0), "MMDiT": reference_defaults(48, 9.0)}
DIFFUSERS_PARTS = ("transformer", "vqvae", "text_encoder")


class Pipeline(EditingMixin):
    """`precision` ("auto", "fp32", "bf16", "int8") and `compile` are the fast modes (fast.py);
    `device` ("cpu", "cuda", "cuda:N", "auto"; None: where the modules are) where it all runs."""

    def __init__(self, transformer: MaskedTransformer | DiT, tokenizer: VQTokenizer,
                 text_encoder: TextEncoder, defaults: SamplerDefaults | None = None,
                 precision: str = "fp32", compile: bool = False,
                 device: str | torch.device | None = None) -> None:
        cfg = transformer.config
        self.defaults = defaults or SamplerDefaults()
        if family_for(transformer, self.defaults).makes_latents:
            if tokenizer.config.vq_embed_dim != cfg.channels:
                raise ConfigError(f"tokenizer codes are {tokenizer.config.vq_embed_dim}-d, the diffusion "
                                  f"model's latent {cfg.channels}-d")
        elif tokenizer.codebook_size != cfg.codebook_size:
            raise ConfigError(f"tokenizer has {tokenizer.codebook_size} codes, the transformer predicts "
                              f"{cfg.codebook_size}")
        if device is not None:
            device = resolve_device(device)
            transformer, tokenizer, text_encoder = (m.to(device) for m in
                                                    (transformer, tokenizer, text_encoder))
        self.precision = check_precision(precision, next(transformer.parameters()).device)
        if is_quantized(transformer) and self.precision != "int8":
            raise ConfigError(f"precision is {precision!r} but the transformer holds int8 weights "
                              f"(stored pre-quantized); accepted: int8 or auto")
        if self.precision == "int8" and not is_quantized(transformer):
            transformer = quantize_int8(transformer)
        transformer = transformer.eval()
        self.transformer = compile_forward(transformer) if compile else transformer
        # channels-last convolutions: the VQ decoder runs 15% faster on CPU, same result to rounding
        self.tokenizer = tokenizer.eval().to(memory_format=torch.channels_last)
        # the caption rule the transformer was trained with (a shared encoder may carry another)
        self.text_encoder = text_encoder.with_caption_rule(getattr(cfg, "caption_rule", ""))
        self._uncond = None
        self.upsamplers: list[Pipeline] = []  # super-resolution stages run after this one (from_stages)

    @property
    def family(self) -> Family:
        """How this model samples (sampling/families.py): derived from the transformer and the
        current defaults, so callers may replace `defaults`."""
        return family_for(self.transformer, self.defaults)

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    def to(self, device: str | torch.device) -> Pipeline:
        """This pipeline on `device` (the modules move in place, as nn.Module.to does), with the
        same precision, sampler defaults and super-resolution stages."""
        moved = Pipeline(self.transformer, self.tokenizer, self.text_encoder, self.defaults,
                         precision=self.precision, device=device)
        moved.upsamplers = [stage.to(device) for stage in self.upsamplers]
        return moved

    @classmethod
    def from_pretrained(cls, name_or_dir: str | os.PathLike, text_encoder: TextEncoder | None = None,
                        **fast) -> Pipeline:
        """`fast`: precision / compile, as for the constructor. A folder stored as int8
        (`fastmuse convert --precision int8`) loads as int8 unless another precision is asked for."""
        folder = resolve(name_or_dir)
        if (folder / "transformer").is_dir():
            return cls._from_diffusers(folder, text_encoder, **fast)
        if is_int8_folder(folder):
            if fast.get("precision") not in (None, "int8", "auto"):
                raise ConfigError(f"{folder} holds int8 weights (fastmuse convert --precision int8): it "
                                  f"loads with precision int8 or auto, not {fast['precision']!r}; for "
                                  f"{fast['precision']} load the folder it was converted from")
            fast["precision"] = "int8"
        transformer = load_transformer(folder)
        cfg = transformer.config
        tokenizer = VQTokenizer.from_pretrained(folder / "tokenizer" if (folder / "tokenizer").is_dir()
                                                else cfg.tokenizer)
        inside = folder / cfg.text_encoder  # a converted model carries its encoder (text_encoder/)
        encoder = text_encoder or load_text_encoder(inside if inside.is_dir() else cfg.text_encoder)
        return cls(transformer, tokenizer, encoder, SamplerDefaults.load(folder), **fast)

    @classmethod
    def _from_diffusers(cls, folder: Path, text_encoder: TextEncoder | None, **fast) -> Pipeline:
        """An aMUSEd or Meissonic folder as the reference code writes it."""
        missing = [c for c in DIFFUSERS_PARTS if not (folder / c).is_dir()]
        if missing:
            parts = ", ".join(p + "/" for p in DIFFUSERS_PARTS)
            raise CheckpointError(f"{folder}: an aMUSEd or Meissonic folder holds {parts} and tokenizer/; "
                                  f"{missing[0]}/ is missing")
        tokenizer = VQTokenizer.from_pretrained(folder / "vqvae")
        transformer = load_diffusers_transformer(folder / "transformer", tokenizer.downsample)
        return cls(transformer, tokenizer, text_encoder or load_text_encoder(folder / "text_encoder"),
                   REFERENCE_DEFAULTS[type(transformer).__name__], **fast)

    @classmethod
    def from_stages(cls, names: list[str], text_encoder: TextEncoder | None = None, **fast) -> Pipeline:
        """A base model followed by super-resolution stages (e.g. ["muse-64", "muse-sr-128"]): each
        upsamples the previous stage's tokens. Errors list the bundled chains."""
        if isinstance(names, str) or not names:
            raise ConfigError(f"stages is {names!r}; accepted: a list of model names or folders, "
                              f"e.g. {' '.join(supported_stages()[0]) if supported_stages() else 'BASE SR'}")
        base = cls.from_pretrained(names[0], text_encoder, **fast)
        stages = [base] + [cls.from_pretrained(n, base.text_encoder, **fast) for n in names[1:]]
        check_stages([p.transformer.config for p in stages], [str(n) for n in names])
        base.upsamplers = stages[1:]
        return base

    @property
    def resolution(self) -> int:
        last = self.upsamplers[-1] if self.upsamplers else self
        return last.transformer.config.grid * last.tokenizer.downsample

    def uncond(self, micro: torch.Tensor | None = None) -> TextContext:
        """The "" context: what caption dropout trained against (with `micro` [1, K], the
        micro-conditions of a model that has them: guidance drops the text only)."""
        if micro is not None:
            return self.transformer.prepare_text(self.text_encoder.encode([""]), micro)
        if self._uncond is None:
            self._uncond = self.transformer.prepare_text(self.text_encoder.encode([""]))
        return self._uncond

    @torch.no_grad()
    def caption_logprob(self, tokens: torch.Tensor, prompts: list[str], guidance: float,
                        generator: torch.Generator | None = None, passes: int = 4) -> torch.Tensor:
        """[B, H, W] log-likelihood of each token of masked-model grids under its prompt
        (token_logprob, guided when guidance > 0): how plausible the model finds an image for a
        caption, e.g. a distillation student's output or a true vs a false caption."""
        m = self.transformer
        cond = m.prepare_text(self.text_encoder.encode(prompts))
        ctx = guidance_context(cond, self.uncond().repeat(len(prompts)), guidance) if guidance > 0 else cond
        return token_logprob(m, tokens, ctx, guidance if guidance > 0 else None, generator, passes)

    def micro_values(self, micro: dict[str, float | None] | None) -> torch.Tensor | None:
        """[1, K] micro-conditions: `micro` over the model's defaults (None = unknown); None for
        a model without them."""
        names = micro_names(self.transformer.config)
        if not names:
            if micro:
                raise ConfigError("micro: this model has no micro-conditions")
            return None
        values = {**(self.defaults.micro or {}), **(micro or {})}
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ConfigError(f"micro-condition {unknown[0]!r}; accepted: {', '.join(names)}")
        bad = [k for k, v in values.items() if v is not None and not isinstance(v, int | float)]
        if bad:
            raise ConfigError(f"micro-condition {bad[0]!r} is {values[bad[0]]!r}; accepted: a number, "
                              "or None (unknown)")
        return torch.tensor([[float("nan") if values.get(n) is None else float(values[n]) for n in names]])

    def sampling(self, prompts: list[str], n: int | list[int] = 1, steps: int | None = None,
                 guidance: float | None = None, seed: int | list[int] = 0,
                 micro: dict[str, float | None] | None = None, low_res: torch.Tensor | None = None,
                 **sampler) -> SamplingRun:
        """Checked options + text contexts for len(prompts) * n images (prompt-major), encoded
        once; editing samples several times (windows, iterations) from one run.

        `n` and `seed` may also be lists, one entry per prompt: prompt i's n[i] images then come
        from their own random stream seeded seed[i], the same images it gets alone
        (`pipe(prompt_i, n=n[i], seed=seed[i])`): how the server batches requests.

        `micro`: micro-condition values by name (the model card lists them); `low_res`: a
        super-resolution model's input grids [len(prompts) * n, g, g]."""
        counts = [n] * len(prompts) if isinstance(n, int) else n
        if (not isinstance(counts, list | tuple) or len(counts) != len(prompts)
                or not all(isinstance(c, int) and c >= 1 for c in counts)
                or not 1 <= sum(counts) <= MAX_IMAGES):
            raise ConfigError(f"n is {n!r}; accepted: an integer (or one per prompt) >= 1 with at most "
                              f"{MAX_IMAGES} images in all")
        if isinstance(seed, int):
            generator = torch.Generator().manual_seed(seed)
        elif isinstance(seed, list | tuple) and len(seed) == len(prompts) and \
                all(isinstance(x, int) for x in seed):
            generator = [(torch.Generator().manual_seed(x), c) for x, c in zip(seed, counts, strict=True)]
        else:
            raise ConfigError(f"seed is {seed!r}; accepted: an integer, or one integer per prompt")
        d, m, family = self.defaults, self.transformer, self.family
        guidance = d.guidance if guidance is None else guidance
        steps = family.steps(m, d, steps)
        opts = family.options(d)
        unknown = sorted(set(sampler) - set(opts))
        if unknown:
            raise ConfigError(f"sampler option {unknown[0]!r} does not apply to this model; accepted: "
                              f"{', '.join(opts)}")
        opts = family.check(d, steps, guidance, {**opts, **sampler})
        values = self.micro_values(micro)
        text = self.text_encoder.encode(prompts)
        if values is None:
            cond = m.prepare_text(text).repeat(counts)
        else:
            cond = m.prepare_text(text, values.expand(len(prompts), -1)).repeat(counts)
        uncond = self.uncond(values).repeat(sum(counts)) if guidance > 0 else None
        if low_res_grid(m.config) or low_res is not None:
            cond, uncond = self._with_low_res(cond, uncond, low_res)
        return SamplingRun(family, m, cond, uncond, steps, guidance, opts, generator)

    def _with_low_res(self, cond: TextContext, uncond: TextContext | None,
                      low_res: torch.Tensor | None) -> tuple[TextContext, TextContext | None]:
        m = self.transformer
        if low_res is None:
            chains = "; ".join(" ".join(c) for c in supported_stages()) or "none bundled"
            raise ConfigError(f"this is a super-resolution stage: it upsamples a base model's tokens "
                              f"(low_res); run it after one (stages: {chains})")
        if not low_res_grid(m.config):
            raise ConfigError("low_res given, but this is not a super-resolution model")
        return m.with_low_res(cond, low_res), None if uncond is None else m.with_low_res(uncond, low_res)

    def network_evaluations(self, steps: int, guidance: float,
                            guidance_interval: tuple[float, float] | None = None) -> int:
        """Forward passes per image (a guided pass counts twice: it runs the batch twice)."""
        return self.family.network_evaluations(self.defaults, steps, guidance, guidance_interval)

    @inference
    def generate_tokens(self, prompts: str | list[str], n: int | list[int] = 1, steps: int | None = None,
                        guidance: float | None = None, seed: int | list[int] = 0,
                        init: torch.Tensor | None = None, micro: dict[str, float | None] | None = None,
                        low_res: torch.Tensor | None = None, **sampler) -> torch.Tensor:
        """Token grids [len(prompts) * n, h, w], prompt-major. `init` (optional, editing): a
        starting canvas [h, w] or [len(prompts) * n, h, w] with MASK where to generate; other
        tokens are kept. Canvases larger than the model grid are sampled in windows.
        With `upsamplers`, each then upsamples the grids with its own sampler defaults
        (steps, guidance and the sampler options apply to the first stage)."""
        prompts = check_prompts(prompts)
        if self.upsamplers and init is not None:
            raise ConfigError("editing (init) needs a single-stage model; this pipeline has "
                              f"{1 + len(self.upsamplers)} stages")
        tokens = self._generate(prompts, n, steps, guidance, seed, init, micro, low_res, **sampler)
        for up in self.upsamplers:
            tokens = up._generate(prompts, n, None, None, seed, None, None, tokens)
        return tokens

    def _generate(self, prompts: list[str], n, steps, guidance, seed, init, micro, low_res,
                  **sampler) -> torch.Tensor:
        run = self.sampling(prompts, n, steps, guidance, seed, micro, low_res, **sampler)
        b = run.cond.c.shape[0]
        if init is None:
            return run.fill(self.family.start(self.transformer, b, run.generator, self.device))
        if self.family.makes_latents:
            raise ConfigError("init (a token canvas) needs a masked model; this is a diffusion model")
        return run.fill(self._check_init(init, b))

    def _check_init(self, init: torch.Tensor, b: int) -> torch.Tensor:
        k = self.transformer.config.codebook_size
        if not isinstance(init, torch.Tensor) or init.ndim not in (2, 3) or init.is_floating_point():
            raise ConfigError("init must be an integer token tensor [h, w] or [B, h, w]")
        init = init.to(self.device, torch.long)
        init = init.expand(b, *init.shape[-2:]) if init.ndim == 2 else init
        if init.shape[0] != b:
            raise ConfigError(f"init has {init.shape[0]} rows; accepted: 1 or {b} (prompts x n)")
        mask_id = self.transformer.mask_id
        if init.min() < 0 or bool(((init >= k) & (init != mask_id)).any()):
            raise ConfigError(f"init holds ids outside the codes 0..{k - 1} and MASK ({mask_id})")
        return init

    @inference
    def decode(self, tokens: torch.Tensor) -> list[Image.Image]:
        from .data.images import to_pil

        images = self.family.decode(self.tokenizer, self.transformer, tokens)
        return [to_pil(im) for im in images.clamp(-1, 1)]

    def __call__(self, prompts: str | list[str], n: int | list[int] = 1, steps: int | None = None,
                 guidance: float | None = None, seed: int | list[int] = 0, **sampler) -> list[Image.Image]:
        return self.decode(self.generate_tokens(prompts, n, steps, guidance, seed, **sampler))

    def save_pretrained(self, folder: str | os.PathLike, card: str | None = None,
                        extra_files: dict[str, bytes] | None = None, dtype: str = "fp32") -> Path:
        """The transformer (floating weights stored as `dtype`; an int8 one as its int8 weights
        and quantization.json), sampler.json, card, extras."""
        files = {SAMPLER_FILE: self.defaults.to_json().encode(), **(extra_files or {})}
        if card is not None:
            files["README.md"] = card.encode()
        if is_quantized(self.transformer):
            state = int8_state(self.transformer)  # the scales stay fp64: the int8 values depend on them
            state = stored(state, dtype) | {k: v for k, v in state.items() if k.endswith(".weight_scale")}
            return save_checkpoint(folder, self.transformer.config, {"model": state},
                                   files | {QUANT_FILE: quant_file()})
        return self.transformer.save_pretrained(folder, files, dtype)


def _stage_configs() -> dict[str, object]:
    """Bundled masked models' configs by name (what chains can be formed from)."""
    from .models import MaskedTransformerConfig

    out = {}
    for name in bundled_models():
        path = BUNDLED_DIR / name / "config.json"
        if json.loads(path.read_text(encoding="utf-8")).get("kind") == MaskedTransformerConfig.kind:
            out[name] = MaskedTransformerConfig.load(path)
    return out


def supported_stages() -> list[tuple[str, ...]]:
    """The bundled two-stage chains: (base, super-resolution) pairs whose grids and tokenizer match."""
    cfgs = _stage_configs()
    return [(b, u) for b, cb in cfgs.items() for u, cu in cfgs.items()
            if not cb.low_res_grid and cu.low_res_grid == cb.grid and cu.tokenizer == cb.tokenizer]


def check_stages(configs: list, names: list[str]) -> None:
    """A chain must start with a text-to-image token model; each next stage must be a
    super-resolution model of the previous one's grid and tokenizer."""
    chains = "; ".join(" ".join(c) for c in supported_stages()) or "none bundled"
    for i, (cfg, name) in enumerate(zip(configs, names, strict=True)):
        low = low_res_grid(cfg)
        if i == 0:
            if low:
                raise ConfigError(f"stages: {name} is a super-resolution model; a chain starts with a "
                                  f"text-to-image model (supported: {chains})")
            if not hasattr(cfg, "codebook_size"):
                raise ConfigError(f"stages: {name} makes latents, not tokens; supported: {chains}")
            continue
        prev, prev_name = configs[i - 1], names[i - 1]
        if not low or low != prev.grid or cfg.tokenizer != prev.tokenizer:
            what = f"upsamples {low}x{low} grids of {cfg.tokenizer}" if low else \
                "is not a super-resolution model"
            raise ConfigError(f"stages: {name} {what}; {prev_name} makes {prev.grid}x{prev.grid} grids of "
                              f"{prev.tokenizer}. Supported: {chains}")
        if cfg.text_encoder != configs[0].text_encoder:
            raise ConfigError(f"stages: {name} reads {cfg.text_encoder} text, {names[0]} "
                              f"{configs[0].text_encoder}; the stages share one text encoder")
