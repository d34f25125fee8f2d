"""The aMUSEd-256 architecture with random weights in diffusers and in fastmuse, for `fastmuse
bench --reference amused-256`: the public model's shapes (U-ViT 22 x 1024, VQ-GAN f16 with
8192 codes, CLIP-L text; 873M parameters) without its download. Needs diffusers (the dev extra).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from ..errors import ConfigError
from ..models.from_diffusers import config_from_diffusers as transformer_config
from ..models.uvit import UViT
from ..pipeline import Pipeline, reference_defaults
from ..text.encoders import TextEncoder
from ..tokenizer import VQTokenizer
from ..tokenizer.diffusers_vq import config_from_diffusers
from .speed import Row, measure

PROMPT = "a photo of a cat"


def amused_256(tiny: bool = False):  # -> diffusers.AmusedPipeline
    """`tiny`: the same modules at toy widths and depths (scripts checked on a CPU)."""
    try:
        import diffusers
    except ImportError:
        raise ConfigError("--reference amused-256 needs diffusers: pip install 'fastmuse[dev]'") from None
    from transformers import BertTokenizerFast, CLIPTextConfig, CLIPTextModelWithProjection

    torch.manual_seed(0)
    channels, codes, width = ([32] * 5, 64, 32) if tiny else ([128, 256, 256, 512, 768], 8192, 768)
    vq = diffusers.VQModel(
        act_fn="silu", block_out_channels=channels,
        down_block_types=["DownEncoderBlock2D"] * 5, up_block_types=["UpDecoderBlock2D"] * 5,
        in_channels=3, out_channels=3, latent_channels=64,
        layers_per_block=2, norm_num_groups=32, num_vq_embeddings=codes, mid_block_add_attention=False,
        lookup_from_codebook=True)
    small = dict(hidden_size=64, block_out_channels=32, block_num_heads=4, num_hidden_layers=2,
                 num_attention_heads=4, intermediate_size=128, encoder_hidden_size=width,
                 cond_embed_dim=width, codebook_size=codes, vocab_size=codes + 2) if tiny else {}
    transformer = diffusers.UVit2DModel(sample_size=16, **small)  # the class defaults are aMUSEd's
    text = CLIPTextModelWithProjection(CLIPTextConfig(
        vocab_size=49408, hidden_size=width, intermediate_size=2 * width if tiny else 3072,
        num_hidden_layers=2 if tiny else 12, num_attention_heads=4 if tiny else 12,
        max_position_embeddings=77, projection_dim=width))
    with tempfile.TemporaryDirectory() as tmp:  # a word-level tokenizer: CLIP's BPE files are a download
        (Path(tmp) / "vocab.txt").write_text(
            "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "photo", "of", "cat", "red", "heart"]) + "\n")
        tok = BertTokenizerFast(vocab_file=str(Path(tmp) / "vocab.txt"), model_max_length=77)
    pipe = diffusers.AmusedPipeline(vqvae=vq.eval(), tokenizer=tok, text_encoder=text.eval(),
                                    transformer=transformer.eval(),
                                    scheduler=diffusers.AmusedScheduler(
                                        mask_token_id=transformer.config.vocab_size - 1))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def fastmuse_twin(ref, steps: int, guidance: float, device: torch.device | str = "cpu") -> Pipeline:
    """The same tensors in fastmuse's modules (on `device`), sampling as AmusedPipeline does at
    `guidance` (diffusers' scale; ours is one less)."""
    vq = VQTokenizer(config_from_diffusers(dict(ref.vqvae.config)))
    vq.load_state_dict(ref.vqvae.state_dict())
    uvit = UViT(transformer_config(UViT, dict(ref.transformer.config), vq.downsample))
    uvit.load_state_dict(ref.transformer.state_dict())
    text = TextEncoder(ref.text_encoder, ref.tokenizer, "clip", "clip-l", 77)
    return Pipeline(uvit, vq, text, reference_defaults(steps, guidance), device=device)


def diffusers_rows(ref, precisions: list[str], steps: int, guidance: float, repeats: int, flops: float,
                   device: torch.device, progress=print) -> list[Row]:
    """AmusedPipeline at batch 1: fp32, and under torch.autocast bf16 (what a user gets from one line)."""
    captured = {}
    step = ref.scheduler.step

    def keep_tokens(*args, **kwargs):  # the scheduler's last sample is the token grid it decodes
        out = step(*args, **kwargs)
        captured["tokens"] = out.prev_sample if hasattr(out, "prev_sample") else out[0]
        return out

    ref.scheduler.step = keep_tokens
    parts = {"text": ref.text_encoder, "transformer": ref.transformer, "decoder": ref.vqvae.decoder}
    rows = []
    for precision in precisions:
        progress(f"diffusers {precision} ...")
        if precision not in ("fp32", "bf16"):
            raise ConfigError(f"peer precision {precision!r}; accepted: fp32, bf16")

        def call(precision: str = precision):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                images = ref(PROMPT, num_inference_steps=steps, guidance_scale=guidance,
                             generator=torch.Generator().manual_seed(0)).images
            return captured["tokens"].clone(), images

        rows.append(measure(f"diffusers AmusedPipeline {precision}", precision, call, parts,
                            device, 1, repeats, flops))
        progress(f"  {rows[-1].seconds:.2f} s per call")
    ref.scheduler.step = step
    return rows
