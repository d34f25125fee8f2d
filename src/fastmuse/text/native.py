"""BERT-like and CLIP text encoders in plain PyTorch, loading transformers' folders as saved
(config.json + model.safetensors + tokenizer.json), so that a process which only generates
never imports transformers: that import is ~1.5 s of a 2-core CPU's cold start, more than
loading the weights. Same parameter names and the same operations in the same order as
transformers' BertModel / CLIPTextModelWithProjection with SDPA attention, so the outputs are
bit-identical (tests/test_text.py). Folders these do not cover (T5, other architectures,
options such as relative positions, no tokenizer.json) load through transformers instead.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import torch
from safetensors.torch import load_file
from torch import nn
from torch.nn import functional as F

from ..hub import load_state_strict, no_init

ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
    "relu": F.relu,
}


def _heads(x: torch.Tensor, n: int) -> torch.Tensor:
    return x.view(*x.shape[:2], n, -1).transpose(1, 2)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, n: int, mask: torch.Tensor | None,
            causal: bool) -> torch.Tensor:
    q, k, v = _heads(q, n), _heads(k, n), _heads(v, n)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=q.shape[-1] ** -0.5,
                                         is_causal=causal)
    return out.transpose(1, 2).reshape(*out.shape[:1], out.shape[2], -1)


# ---- BERT (post-LayerNorm; all-MiniLM-L6-v2 is one) ----

class _Linear(nn.Module):  # a container so that state-dict names read "....dense.weight"
    def __init__(self, d_in: int, d_out: int, norm_eps: float | None = None) -> None:
        super().__init__()
        self.dense = nn.Linear(d_in, d_out)
        if norm_eps is not None:
            self.LayerNorm = nn.LayerNorm(d_out, eps=norm_eps)


class _BertSelf(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.query, self.key, self.value = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)


class _BertAttention(nn.Module):
    def __init__(self, d: int, eps: float) -> None:
        super().__init__()
        self.self, self.output = _BertSelf(d), _Linear(d, d, eps)


class _BertLayer(nn.Module):
    def __init__(self, cfg: SimpleNamespace) -> None:
        super().__init__()
        d, eps = cfg.hidden_size, cfg.layer_norm_eps
        self.attention = _BertAttention(d, eps)
        self.intermediate = _Linear(d, cfg.intermediate_size)
        self.output = _Linear(cfg.intermediate_size, d, eps)
        self.heads, self.act = cfg.num_attention_heads, ACTIVATIONS[cfg.hidden_act]

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        a, out = self.attention.self, self.attention.output
        h = _attend(a.query(x), a.key(x), a.value(x), self.heads, mask, causal=False)
        x = out.LayerNorm(out.dense(h) + x)
        h = self.output.dense(self.act(self.intermediate.dense(x)))
        return self.output.LayerNorm(h + x)


class _BertEmbeddings(nn.Module):
    def __init__(self, cfg: SimpleNamespace) -> None:
        super().__init__()
        d = cfg.hidden_size
        self.word_embeddings = nn.Embedding(cfg.vocab_size, d)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, d)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, d)
        self.LayerNorm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        zeros = torch.zeros(ids.shape[1], dtype=torch.long, device=ids.device)
        x = self.word_embeddings(ids) + self.token_type_embeddings(zeros)
        x = x + self.position_embeddings(torch.arange(ids.shape[1], device=ids.device))
        return self.LayerNorm(x)


class _BertEncoder(nn.Module):
    def __init__(self, cfg: SimpleNamespace) -> None:
        super().__init__()
        self.layer = nn.ModuleList(_BertLayer(cfg) for _ in range(cfg.num_hidden_layers))


class Bert(nn.Module):
    """BertModel without its pooler: input_ids (+ attention_mask) -> .last_hidden_state."""

    def __init__(self, cfg: SimpleNamespace) -> None:
        super().__init__()
        self.config = cfg
        self.embeddings, self.encoder = _BertEmbeddings(cfg), _BertEncoder(cfg)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                **_: object) -> SimpleNamespace:
        # as transformers: no mask at all when nothing is padded, else a boolean [B, 1, L, L]
        mask = None if attention_mask is None or bool(attention_mask.all()) else \
            attention_mask.bool()[:, None, None, :].expand(-1, 1, input_ids.shape[1], -1)
        x = self.embeddings(input_ids)
        for layer in self.encoder.layer:
            x = layer(x, mask)
        return SimpleNamespace(last_hidden_state=x)


# ---- CLIP text (pre-LayerNorm, causal) with its projection ----

class _ClipAttention(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(d, d) for _ in range(4))


class _ClipMLP(nn.Module):
    def __init__(self, d: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, hidden), nn.Linear(hidden, d)


class _ClipLayer(nn.Module):
    def __init__(self, cfg: SimpleNamespace) -> None:
        super().__init__()
        d = cfg.hidden_size
        self.self_attn, self.mlp = _ClipAttention(d), _ClipMLP(d, cfg.intermediate_size)
        self.layer_norm1 = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.layer_norm2 = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.heads, self.act = cfg.num_attention_heads, ACTIVATIONS[cfg.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, h = self.self_attn, self.layer_norm1(x)
        x = x + a.out_proj(_attend(a.q_proj(h), a.k_proj(h), a.v_proj(h), self.heads, None, causal=True))
        return x + self.mlp.fc2(self.act(self.mlp.fc1(self.layer_norm2(x))))


class _ClipEmbeddings(nn.Module):
    def __init__(self, cfg: SimpleNamespace) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embedding = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)


class _ClipEncoder(nn.Module):
    def __init__(self, cfg: SimpleNamespace) -> None:
        super().__init__()
        self.layers = nn.ModuleList(_ClipLayer(cfg) for _ in range(cfg.num_hidden_layers))


class _ClipTextModel(nn.Module):
    def __init__(self, cfg: SimpleNamespace) -> None:
        super().__init__()
        self.embeddings, self.encoder = _ClipEmbeddings(cfg), _ClipEncoder(cfg)
        self.final_layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)


class ClipText(nn.Module):
    """CLIPTextModelWithProjection: input_ids -> .hidden_states (embeddings, then each layer's
    output) and .text_embeds (the projected final state at the end-of-text token)."""

    def __init__(self, cfg: SimpleNamespace) -> None:
        super().__init__()
        self.config = cfg
        self.text_model = _ClipTextModel(cfg)
        self.text_projection = nn.Linear(cfg.hidden_size, cfg.projection_dim, bias=False)

    def forward(self, input_ids: torch.Tensor, **_: object) -> SimpleNamespace:
        m = self.text_model
        pos = m.embeddings.position_embedding(torch.arange(input_ids.shape[1], device=input_ids.device))
        states = [m.embeddings.token_embedding(input_ids) + pos]
        for layer in m.encoder.layers:
            states.append(layer(states[-1]))
        last = m.final_layer_norm(states[-1])
        # the first end-of-text token (the largest id in legacy configs whose eos id is 2)
        eos = input_ids.argmax(-1) if self.config.eos_token_id == 2 else \
            (input_ids == self.config.eos_token_id).int().argmax(-1)
        pooled = last[torch.arange(len(input_ids), device=input_ids.device), eos]
        return SimpleNamespace(hidden_states=tuple(states), last_hidden_state=last,
                               text_embeds=self.text_projection(pooled))


# ---- tokenizer.json through the `tokenizers` library ----

class FastTokenizer:
    """The parts of a transformers tokenizer call that TextEncoder uses, on a tokenizer.json:
    tok(prompts)["input_ids"] (lists, special tokens added) and tok(prompts, padding=
    "longest"|"max_length", truncation=True, max_length=N, return_tensors="pt")."""

    def __init__(self, path: Path, pad_token: str) -> None:
        from tokenizers import Tokenizer

        self.tok = Tokenizer.from_file(str(path))
        self.pad_token, self.pad_id = pad_token, self.tok.token_to_id(pad_token)

    def __call__(self, prompts: list[str], padding: bool | str = False, truncation: bool = False,
                 max_length: int | None = None, return_tensors: str | None = None) -> dict:
        tok = self.tok
        tok.no_truncation() if not truncation else tok.enable_truncation(max_length)
        if padding:
            tok.enable_padding(pad_id=self.pad_id, pad_token=self.pad_token,
                               length=max_length if padding == "max_length" else None)
        else:
            tok.no_padding()
        enc = tok.encode_batch(prompts)
        out = {"input_ids": [e.ids for e in enc], "attention_mask": [e.attention_mask for e in enc]}
        return {k: torch.tensor(v) for k, v in out.items()} if return_tensors == "pt" else out


def _pad_token(folder: Path) -> str | None:
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        f = folder / name
        if f.is_file():
            pad = json.loads(f.read_text(encoding="utf-8")).get("pad_token")
            pad = pad.get("content") if isinstance(pad, dict) else pad
            if pad:
                return pad
    return None


def load_native(path: Path, tok_dir: Path) -> tuple[nn.Module, FastTokenizer, str, int] | None:
    """(model, tokenizer, family, length limit) for a BERT-like or CLIP-text folder this module covers, or
    None (the caller falls back to transformers)."""
    cfg = json.loads((path / "config.json").read_text(encoding="utf-8"))
    weights, tok_json, pad = path / "model.safetensors", tok_dir / "tokenizer.json", _pad_token(tok_dir)
    kind = cfg.get("model_type")
    supported = {"bert": Bert, "clip_text_model": ClipText}
    if (kind not in supported or not weights.is_file() or not tok_json.is_file() or pad is None
            or cfg.get("hidden_act") not in ACTIVATIONS
            or cfg.get("position_embedding_type", "absolute") != "absolute"):
        return None
    tokenizer = FastTokenizer(tok_json, pad)
    if tokenizer.pad_id is None:  # checked before any weights are read
        return None
    ns = SimpleNamespace(**cfg)
    with no_init():
        model = supported[kind](ns)
    state = {k: v for k, v in load_file(weights).items()
             if not k.startswith("pooler.") and not k.endswith("position_ids")}
    if kind == "bert" and any(k.startswith("bert.") for k in state):
        state = {k.removeprefix("bert."): v for k, v in state.items()}
    load_state_strict(model, state, str(path), assign=True)
    family = "clip" if kind == "clip_text_model" else "mean"
    return model.eval(), tokenizer, family, ns.max_position_embeddings
