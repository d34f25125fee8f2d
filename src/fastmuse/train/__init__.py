"""Training utilities shared by every trainer: resumable state, sampling order, logs."""
