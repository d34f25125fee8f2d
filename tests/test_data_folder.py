import json
import logging

import pytest
import torch
from PIL import Image

from fastmuse.data.folder import ImageFolder, read_records
from fastmuse.data.images import load_rgb, make_grid, resize_crop, to_pil, to_tensor
from fastmuse.data.sources import open_dataset
from fastmuse.errors import DataError
from helpers import tiny_dataset


def test_written_folder_reads_back(tmp_path):
    root = tiny_dataset(tmp_path / "d", n=12)
    card = json.loads((root / "dataset.json").read_text())
    assert card["count"] == 12 and card["splits"] == {"train": 9, "val": 3}
    assert (root / "preview.png").is_file() and "Images: 12" in (root / "README.md").read_text()
    ds = ImageFolder(root, resolution=16, split="val")
    assert len(ds) == 3
    item = ds[0]
    assert item["image"].shape == (3, 16, 16) and item["caption"] == "a red square 0"
    assert item["image"].min() >= -1 and item["image"].max() <= 1


def test_side_txt_captions_and_modes(tmp_path):
    Image.new("RGBA", (40, 30), (255, 0, 0, 0)).save(tmp_path / "clear.png")  # transparent
    Image.new("L", (30, 40), 0).save(tmp_path / "grey.png")
    Image.new("P", (32, 32)).save(tmp_path / "pal.png")
    for name in ("clear", "grey", "pal"):
        (tmp_path / f"{name}.txt").write_text(f" {name} \n")
    ds = ImageFolder(tmp_path, resolution=16)
    items = {ds.records[i]["file"]: ds[i] for i in range(len(ds))}
    assert {x["caption"] for x in items.values()} == {"clear", "grey", "pal"}
    assert torch.allclose(items["clear.png"]["image"], torch.ones(3, 16, 16))  # on white
    assert torch.allclose(items["grey.png"]["image"], -torch.ones(3, 16, 16))


def test_resize_crop_rule():
    im = Image.new("RGB", (200, 100), "white")
    im.paste((0, 0, 0), (0, 0, 50, 100))  # left quarter black
    out = resize_crop(im, 64, "center")
    assert out.size == (64, 64)
    assert out.getpixel((4, 32)) == (255, 255, 255)  # center crop drops the black left edge


def test_tensor_round_trip_and_grid():
    im = Image.new("RGB", (8, 8), (10, 128, 250))
    assert to_pil(to_tensor(im)).getpixel((3, 3)) == (10, 128, 250)
    grid = make_grid([im] * 5, ncols=3, captions=["a"] * 5)
    assert grid.size[0] > 3 * 8 and grid.size[1] > 2 * 8


@pytest.mark.parametrize("setup, needle", [
    (lambda p: None, "not found"),
    (lambda p: p.mkdir(), "no images"),
    (lambda p: (p.mkdir(), Image.new("RGB", (8, 8)).save(p / "a.png")), "no caption file"),
    (lambda p: (p.mkdir(), (p / "captions.jsonl").write_text(
        '{"file": "gone.png", "caption": "x"}\n')), "no such image"),
    (lambda p: (p.mkdir(), (p / "captions.jsonl").write_text("{oops\n")), "not valid JSON"),
    (lambda p: (p.mkdir(), (p / "captions.jsonl").write_text('{"file": 3}\n')), "'file' and 'caption'"),
    (lambda p: (p.mkdir(), (p / "captions.jsonl").write_text("\n")), "no records"),
])
def test_folder_errors(tmp_path, setup, needle):
    root = tmp_path / "ds"
    setup(root)
    with pytest.raises(DataError, match=needle):
        read_records(root)


def test_unreadable_images_are_counted_and_skipped(tmp_path, caplog):
    root = tiny_dataset(tmp_path / "d", n=6)
    (root / "images/000002.png").write_bytes(b"not a png")
    (root / "images/000004.png").write_bytes((root / "images/000005.png").read_bytes()[:40])
    with caplog.at_level(logging.WARNING):
        ds = ImageFolder(root, resolution=16)
    assert len(ds) == 4 and ds.skipped == ["images/000002.png", "images/000004.png"]
    assert "skipped 2 unreadable of 6" in caplog.text
    for i in range(len(ds)):
        ds[i]  # every remaining item loads
    for f in ds.records:
        (root / f["file"]).write_bytes(b"junk")
    with pytest.raises(DataError, match="none of the 6 images"):
        ImageFolder(root, resolution=16)


def test_load_rgb_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_rgb(tmp_path / "x.png")
    with pytest.raises(DataError, match="unreadable image"):
        load_rgb(b"\x89PNG broken")


def test_random_crop_depends_on_seed_epoch_index(tmp_path):
    Image.effect_noise((64, 48), 50).convert("RGB").save(tmp_path / "n.png")
    (tmp_path / "n.txt").write_text("noise")
    a = ImageFolder(tmp_path, 32, crop="random", seed=1)
    b = ImageFolder(tmp_path, 32, crop="random", seed=1)
    assert torch.equal(a[0]["image"], b[0]["image"])
    crops = set()
    for epoch in range(6):
        a.set_epoch(epoch)
        crops.add(a[0]["image"].sum().item())
    assert len(crops) > 1


def test_open_dataset_dispatch(tmp_path):
    root = tiny_dataset(tmp_path / "d", n=4)
    assert isinstance(open_dataset(str(root), 16), ImageFolder)
    with pytest.raises(DataError, match="shapes:SEED"):
        open_dataset("shapes:abc", 16)
    with pytest.raises(DataError, match="not found"):
        open_dataset(str(tmp_path / "nothing"), 16)


def test_spread():
    from fastmuse.data.images import spread

    assert spread(3, 32) == [0, 1, 2]
    assert spread(100, 5) == [0, 25, 50, 74, 99]
    assert spread(10, 1) == [0]
