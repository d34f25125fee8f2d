"""Text encoders: the default MiniLM, local CLIP/T5/BERT folders, the embedding cache, caption rules."""

import pytest
import torch
from transformers import AutoModel, AutoTokenizer, CLIPTextModelWithProjection, T5EncoderModel

from fastmuse.errors import CheckpointError, ConfigError, DataError
from fastmuse.models.transformer import MaskedTransformerConfig
from fastmuse.text import EmbeddingCache, TextEmbedding, load_text_encoder
from fastmuse.text.captions import canonical_relations
from helpers import tiny_text_encoder

PROMPTS = ["a red heart", "two blue stars left of a green circle"]


@pytest.fixture(scope="module")
def minilm():
    return load_text_encoder("minilm")


def test_minilm_default(minilm):
    emb = minilm.encode(["red heart", "a red heart", "pizza"])
    assert emb.hidden.shape[0] == 3 and emb.hidden.shape[2] == 384 and emb.pooled.shape == (3, 384)
    assert torch.allclose(emb.pooled.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert emb.mask.dtype == torch.bool and emb.mask[0].sum() < emb.mask.shape[1]  # padded
    close, far = emb.pooled[0] @ emb.pooled[1], emb.pooled[0] @ emb.pooled[2]
    assert close > far  # meaning, not just shapes


def test_padding_does_not_change_states(minilm):
    alone = minilm.encode(["red heart"])
    batched = minilm.encode(["red heart", "a much longer prompt about a smiling face with sunglasses"])
    n = int(alone.mask.sum())
    assert torch.allclose(alone.hidden[0, :n], batched.hidden[0, :n], atol=1e-5)
    assert torch.allclose(alone.pooled[0], batched.pooled[0], atol=1e-5)


@pytest.mark.parametrize("model_type", ["clip", "t5", "bert"])
def test_local_folder_parity(tmp_path, model_type):
    path = tiny_text_encoder(tmp_path / model_type, model_type)
    enc = load_text_encoder(str(path))
    emb = enc.encode(PROMPTS)
    tok = AutoTokenizer.from_pretrained(path)
    if model_type == "clip":  # as aMUSEd: penultimate states of prompts padded to the limit, projected pooled
        ref = CLIPTextModelWithProjection.from_pretrained(path).eval()
        ids = tok(PROMPTS, padding="max_length", max_length=enc.max_length, truncation=True,
                  return_tensors="pt").input_ids
        out = ref(input_ids=ids, output_hidden_states=True)
        assert torch.equal(emb.hidden, out.hidden_states[-2])  # bit for bit (text/native.py)
        assert torch.equal(emb.pooled, out.text_embeds)
        assert emb.pooled.shape == (2, 24) and enc.pooled_dim == 24
    else:
        cls = T5EncoderModel if model_type == "t5" else AutoModel
        ref = cls.from_pretrained(path).eval()
        batch = tok(PROMPTS, padding=True, return_tensors="pt")
        kwargs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
        hidden = ref(**kwargs).last_hidden_state
        if model_type == "bert":  # text/native.py: bit for bit
            assert torch.equal(emb.hidden, hidden)
        torch.testing.assert_close(emb.hidden, hidden)
        m = batch.attention_mask.unsqueeze(-1).float()
        mean = (hidden * m).sum(1) / m.sum(1)
        want = mean if model_type == "t5" else torch.nn.functional.normalize(mean, dim=-1)
        torch.testing.assert_close(emb.pooled, want)
    assert enc.hidden_dim == 32
    assert (type(enc.model).__module__ == "fastmuse.text.native") == (model_type != "t5")


def test_minilm_loads_without_transformers_and_matches_it(minilm):
    """The default encoder (text/native.py) never imports transformers, and gives its
    states bit for bit, padded batches included."""
    import subprocess
    import sys

    code = ("import sys; from fastmuse.text import load_text_encoder; load_text_encoder().encode(['a cat']); "
            "print('transformers' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"
    from fastmuse.text.encoders import MINILM_MAX_LENGTH, TextEncoder, _load_transformers, minilm_path

    ref = TextEncoder(*_load_transformers(minilm_path(), minilm_path())[:3], "minilm", MINILM_MAX_LENGTH)
    prompts = [*PROMPTS, "smiling face with sunglasses", "Café naïve — ünïcode", "two yellow stars"]
    assert minilm.tokenizer(prompts)["input_ids"] == [list(x) for x in ref.tokenizer(prompts)["input_ids"]]
    for batch in (prompts[:1], prompts):
        a, b = minilm.encode(batch), ref.encode(batch)
        assert torch.equal(a.hidden, b.hidden) and torch.equal(a.pooled, b.pooled)
        assert torch.equal(a.mask, b.mask)


def test_long_prompt_truncated_with_warning(tmp_path):
    enc = load_text_encoder(str(tiny_text_encoder(tmp_path / "b", max_positions=8)))
    with pytest.warns(UserWarning, match="truncated"):
        emb = enc.encode(["a red square left of a green circle and two blue stars"])
    assert emb.hidden.shape[1] == 8


def test_unknown_encoder_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="never downloads"):
        load_text_encoder(str(tmp_path / "nope"))


def test_embedding_cache_roundtrip(tmp_path):
    enc = load_text_encoder(str(tiny_text_encoder(tmp_path / "b")))
    captions = ["a red heart", "", "two blue stars", "a red heart"]
    cache = EmbeddingCache.build(enc, captions, batch_size=2, progress=False)
    assert len(cache.captions) == 3  # each distinct caption once
    cache.save(tmp_path / "c.safetensors")
    back = EmbeddingCache.load(tmp_path / "c.safetensors")
    assert back.captions == cache.captions
    got = back.lookup(back.rows(["two blue stars"]))
    want = enc.encode(["two blue stars"])
    torch.testing.assert_close(got.hidden, want.hidden, atol=2e-3, rtol=1e-2)  # float16 on disk
    torch.testing.assert_close(got.pooled, want.pooled)
    with pytest.raises(DataError, match="not in the embedding cache"):
        back.rows(["pizza"])


def test_embedding_cat_pads():
    a = TextEmbedding(torch.ones(1, 2, 4), torch.ones(1, 3), torch.ones(1, 2, dtype=torch.bool))
    b = TextEmbedding(torch.ones(2, 5, 4), torch.ones(2, 3), torch.ones(2, 5, dtype=torch.bool))
    c = TextEmbedding.cat([a, b])
    assert c.hidden.shape == (3, 5, 4) and c.mask[0].tolist() == [True, True, False, False, False]


@pytest.mark.parametrize("caption, canonical", [
    ("a blue square right of a yellow star", "a yellow star left of a blue square"),
    ("a red circle below a green heart", "a green heart above a red circle"),
    ("a cat is to the right of a dog.", "a dog is to the left of a cat."),
    ("a blue square left of a yellow star", "a blue square left of a yellow star"),  # already canonical
    ("a cat above a dog below a tree", "a cat above a dog below a tree"),  # two relations: as written
    ("the right hand", "the right hand"),
    ("two yellow stars", "two yellow stars"),
])
def test_canonical_relations(caption, canonical):
    assert canonical_relations(caption) == canonical


def test_caption_rule_is_applied_by_the_encoder(minilm):
    enc = minilm
    canon = enc.with_caption_rule("canonical_relations")
    assert canon.model is enc.model and enc.caption_rule == ""  # same weights, the original untouched
    same = canon.encode(["a red circle below a green heart", "a green heart above a red circle"])
    torch.testing.assert_close(same.hidden[0], same.hidden[1])
    plain = enc.encode(["a red circle below a green heart", "a green heart above a red circle"])
    assert not torch.allclose(plain.hidden[0], plain.hidden[1])
    with pytest.raises(ConfigError, match="'caption_rule' is 'flip'; accepted: '', 'canonical_relations'"):
        enc.with_caption_rule("flip")
    with pytest.raises(ConfigError, match="caption_rule"):
        MaskedTransformerConfig(caption_rule="flip")
