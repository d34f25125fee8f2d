"""fastmuse: fast text-to-image with masked generative transformers and few-step distillation."""

__version__ = "0.1.0"
