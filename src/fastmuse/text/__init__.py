from .cache import EmbeddingCache
from .encoders import DEFAULT_TEXT_ENCODER, TextEmbedding, TextEncoder, load_text_encoder

__all__ = ["DEFAULT_TEXT_ENCODER", "EmbeddingCache", "TextEmbedding", "TextEncoder", "load_text_encoder"]
