from .transformer import MaskedTransformer, MaskedTransformerConfig, TextContext

__all__ = ["MaskedTransformer", "MaskedTransformerConfig", "TextContext"]
