"""Small fixtures shared by the data tests."""

from pathlib import Path

from PIL import Image

from fastmuse.data.folder import DatasetCard, Sample, write_dataset

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "black", "gray"]


def tiny_dataset(root: Path, n: int = 12, size: int = 32) -> Path:
    """A folder dataset of solid-colour squares captioned with their colour."""
    samples = [Sample(Image.new("RGB", (size, size), COLOURS[i % len(COLOURS)]),
                      f"a {COLOURS[i % len(COLOURS)]} square {i}",
                      "val" if i % 4 == 0 else "train", {"index": i}) for i in range(n)]
    card = DatasetCard(name="tiny", description="test squares", source="tests", license="CC0",
                       command="tests/helpers.py", resolution=size)
    return write_dataset(root, samples, card, total=n)


WORDS = ["a", "an", "red", "green", "blue", "yellow", "purple", "orange", "black", "gray", "square",
         "circle", "heart", "two", "three", "stars", "star", "left", "of", "pizza", "face"]


def tiny_text_encoder(root: Path, model_type: str = "bert", max_positions: int = 32) -> Path:
    """A random 1-layer transformers encoder folder (bert / t5 / clip text) with a word-level
    BERT tokenizer; what load_text_encoder reads from a local folder."""
    import torch
    from transformers import (
        BertConfig,
        BertModel,
        BertTokenizerFast,
        CLIPTextConfig,
        CLIPTextModelWithProjection,
        T5Config,
        T5EncoderModel,
    )

    root.mkdir(parents=True, exist_ok=True)
    vocab = root / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *map(str, range(24))])
                     + "\n")
    tok = BertTokenizerFast(vocab_file=str(vocab), model_max_length=max_positions)
    n = len(tok)
    torch.manual_seed(0)
    if model_type == "bert":
        model = BertModel(BertConfig(vocab_size=n, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=37, max_position_embeddings=max_positions))
    elif model_type == "t5":
        model = T5EncoderModel(T5Config(vocab_size=n, d_model=32, d_kv=16, d_ff=37, num_layers=1,
                                        num_heads=2))
    else:
        model = CLIPTextModelWithProjection(CLIPTextConfig(
            vocab_size=n, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2,
            max_position_embeddings=max_positions, projection_dim=24, pad_token_id=0, bos_token_id=2,
            eos_token_id=3))
    model.save_pretrained(root)
    tok.save_pretrained(root)
    return root


def tiny_tokenizer(root: Path) -> Path:
    """A random f2 VQ tokenizer with 16 codes (32 px images -> 16x16 tokens)."""
    import torch

    from fastmuse.tokenizer import VQConfig, VQTokenizer

    torch.manual_seed(0)
    cfg = VQConfig(block_out_channels=(8, 16), norm_num_groups=8, latent_channels=4, vq_embed_dim=4,
                   num_vq_embeddings=16)
    return VQTokenizer(cfg).save_pretrained(root)


def tiny_pipeline(root: Path, autoregressive: bool = False) -> Path:
    """A random text-to-image model folder: tiny tokenizer (32 px -> 16x16 tokens), tiny
    text encoder, 2-block transformer (masked: 3 sampling steps; or autoregressive), guidance 2."""
    import torch

    from fastmuse.models import ARTransformer, ARTransformerConfig, MaskedTransformer, MaskedTransformerConfig
    from fastmuse.pipeline import Pipeline, SamplerDefaults
    from fastmuse.text import load_text_encoder
    from fastmuse.tokenizer import VQTokenizer

    tok, te = tiny_tokenizer(root / "tok"), tiny_text_encoder(root / "te")
    torch.manual_seed(0)
    config, model_class = ((ARTransformerConfig, ARTransformer) if autoregressive else
                           (MaskedTransformerConfig, MaskedTransformer))
    cfg = config(codebook_size=16, grid=16, dim=32, depth=2, heads=2, text_dim=32,
                 pooled_dim=32, resolution=32, tokenizer=str(tok), text_encoder=str(te))
    model = model_class(cfg)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    pipe = Pipeline(model, VQTokenizer.from_pretrained(tok), load_text_encoder(str(te)),
                    SamplerDefaults(steps=256 if autoregressive else 3, guidance=2.0))
    return pipe.save_pretrained(root / "model", card="# tiny test model\n")


def assert_resumes_exactly(train, cfg, root: Path, names: tuple[str, ...]):
    """`train(cfg, out, stop_at=, resume=)` stopped after step 2 and resumed ends at step 4 with
    the same tensors under every checkpoint name in `names` as one uninterrupted run; returns
    the uninterrupted run's result."""
    import torch

    from fastmuse.hub import load_checkpoint

    result = train(cfg, root / "a")
    assert train(cfg, root / "b", stop_at=2) == root / "b"
    train(cfg, root / "b", resume=True)
    for name in names:
        wa, wb = (load_checkpoint(root / f"{r}/checkpoints/step-000004").weights(name) for r in "ab")
        assert all(torch.equal(wa[k], wb[k]) for k in wa), name
    return result


def png(image, fmt: str = "PNG") -> bytes:
    """A PIL image's encoded bytes (an upload body)."""
    import io

    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()
