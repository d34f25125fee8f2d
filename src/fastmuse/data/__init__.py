"""Datasets: emoji, the shapes world, image folders and WebDataset shards."""
