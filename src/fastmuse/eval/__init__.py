"""Evaluation: image metrics now; the compositional suite, FD/KID and speed come later."""
