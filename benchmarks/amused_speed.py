"""aMUSEd-256 on this CPU: diffusers' AmusedPipeline vs fastmuse on the same weights, side by side.

    cd benchmarks && ../.venv/bin/python amused_speed.py [--steps 12] [--repeats 2]

Builds the public aMUSEd-256 architecture with random weights (U-ViT 22 x 1024, VQ-GAN
f16 with 8192 codes, CLIP-L text; about 0.9 B parameters, 3.5 GB of fp32 memory per copy)
in diffusers, loads the same tensors into fastmuse's modules, and times one 256 px image at
batch 1 end to end (text, 12 steps with guidance 10 = fastmuse guidance 9, VQ decode),
best of `--repeats` after a warm-up. Both run fp32 on the same threads; the faster modes
(bf16, int8, ...) are the inference-speed issue's. Rows of one run compare; absolute
numbers vary between machines and runs.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from tokenizer_speed import cpu_flags, timed  # noqa: I001 - sibling script

from fastmuse.models.from_diffusers import config_from_diffusers as transformer_config
from fastmuse.models.uvit import UViT
from fastmuse.pipeline import REFERENCE_DEFAULTS, Pipeline
from fastmuse.text.encoders import TextEncoder
from fastmuse.tokenizer import VQTokenizer
from fastmuse.tokenizer.diffusers_vq import config_from_diffusers


def amused_256() -> diffusers.AmusedPipeline:  # noqa: F821
    import diffusers
    from transformers import BertTokenizerFast, CLIPTextConfig, CLIPTextModelWithProjection

    torch.manual_seed(0)
    vq = diffusers.VQModel(
        act_fn="silu",
        block_out_channels=[128, 256, 256, 512, 768],
        down_block_types=["DownEncoderBlock2D"] * 5,
        up_block_types=["UpDecoderBlock2D"] * 5,
        in_channels=3,
        out_channels=3,
        latent_channels=64,
        layers_per_block=2,
        norm_num_groups=32,
        num_vq_embeddings=8192,
        mid_block_add_attention=False,
        lookup_from_codebook=True,
    )
    transformer = diffusers.UVit2DModel(sample_size=16)  # the class defaults are aMUSEd's
    text = CLIPTextModelWithProjection(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            max_position_embeddings=77,
            projection_dim=768,
        )
    )
    with tempfile.TemporaryDirectory() as tmp:  # a word-level tokenizer: CLIP's BPE files are a download
        (Path(tmp) / "vocab.txt").write_text(
            "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "photo", "of", "cat", "red", "heart"]) + "\n"
        )
        tok = BertTokenizerFast(vocab_file=str(Path(tmp) / "vocab.txt"), model_max_length=77)
    return diffusers.AmusedPipeline(
        vqvae=vq.eval(),
        tokenizer=tok,
        text_encoder=text.eval(),
        transformer=transformer.eval(),
        scheduler=diffusers.AmusedScheduler(mask_token_id=8255),
    )


def fastmuse_pipeline(ref) -> Pipeline:
    """The same tensors in fastmuse's modules (what Pipeline.from_pretrained does from a folder)."""
    vq = VQTokenizer(config_from_diffusers(dict(ref.vqvae.config)))
    vq.load_state_dict(ref.vqvae.state_dict())
    uvit = UViT(transformer_config(UViT, dict(ref.transformer.config), vq.downsample))
    uvit.load_state_dict(ref.transformer.state_dict())
    text = TextEncoder(ref.text_encoder, ref.tokenizer, "clip", "clip-l", 77)
    return Pipeline(uvit, vq, text, REFERENCE_DEFAULTS["UViT"])


@torch.no_grad()
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--repeats", type=int, default=2)
    a = p.parse_args()
    ref = amused_256()
    ref.set_progress_bar_config(disable=True)
    ours = fastmuse_pipeline(ref)
    prompt, steps = "a photo of a cat", a.steps
    params = sum(q.numel() for m in (ref.transformer, ref.vqvae, ref.text_encoder) for q in m.parameters())
    print(
        f"aMUSEd-256 random weights: {params / 1e6:.0f}M parameters; {steps} steps, guidance 10, batch 1, "
        f"256 px, {torch.get_num_threads()} threads; CPU flags: {cpu_flags()}"
    )
    rows = {
        "diffusers AmusedPipeline fp32": timed(
            lambda: ref(
                prompt,
                num_inference_steps=steps,
                guidance_scale=10.0,
                generator=torch.Generator().manual_seed(0),
            ),
            a.repeats,
        ),
        "fastmuse fp32": timed(
            lambda: ours(prompt, steps=steps, guidance=9.0, noise=2 * steps / (steps - 1)), a.repeats
        ),
    }
    base = rows["diffusers AmusedPipeline fp32"]
    for name, s in rows.items():
        print(f"{name:32s} {s:7.2f} s/img   speed-up vs diffusers {base / s:5.2f}x")
    print(json.dumps({"steps": steps, "s_per_image": rows, "ratio": base / rows["fastmuse fp32"]}))


if __name__ == "__main__":
    main()
