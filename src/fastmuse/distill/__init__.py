"""Distillation into few-step students: Di[M]O (dimo.py) for masked models."""
