"""VQ image tokenizer: images <-> discrete tokens."""

from .model import VQConfig, VQTokenizer

__all__ = ["VQConfig", "VQTokenizer"]
