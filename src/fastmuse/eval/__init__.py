"""Evaluation: image metrics, the shapes checker and suite, FD/KID, and `fastmuse eval` (suite.py)."""

# in the order `fastmuse eval` runs them (here, not in suite.py, so that `--help` imports no torch)
SUITES = ("shapes", "emoji", "speed", "tokenizer")
