"""Small fixtures shared by the data tests."""

from pathlib import Path

from PIL import Image

from fastmuse.data.folder import DatasetCard, Sample, write_dataset

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "black", "gray"]


def tiny_dataset(root: Path, n: int = 12, size: int = 32) -> Path:
    """A folder dataset of solid-colour squares captioned with their colour."""
    samples = [Sample(Image.new("RGB", (size, size), COLOURS[i % len(COLOURS)]),
                      f"a {COLOURS[i % len(COLOURS)]} square {i}",
                      "val" if i % 4 == 0 else "train", {"index": i}) for i in range(n)]
    card = DatasetCard(name="tiny", description="test squares", source="tests", license="CC0",
                       command="tests/helpers.py", resolution=size)
    return write_dataset(root, samples, card, total=n)
