import io
import logging
import tarfile

import pytest
import torch

from fastmuse.data.shards import ShardDataset, write_shards
from fastmuse.data.sources import open_dataset
from fastmuse.errors import DataError
from helpers import tiny_dataset


@pytest.fixture
def shards(tmp_path):
    root = tiny_dataset(tmp_path / "d", n=20)
    paths = write_shards(root, tmp_path / "shards", maxcount=6)
    return root, paths


def test_round_trip(shards, tmp_path):
    root, paths = shards
    assert [p.name for p in paths] == [f"shard-{i:06d}.tar" for i in range(4)]
    items = list(ShardDataset(tmp_path / "shards", resolution=16, shuffle_buffer=0, crop="center"))
    assert [x["caption"] for x in items] == [f"a {c} square {i}" for i, c in enumerate(
        ["red", "green", "blue", "yellow", "purple", "orange", "black", "gray"] * 3)][:20]
    from fastmuse.data.folder import ImageFolder
    ref = ImageFolder(root, resolution=16)
    for i in (0, 7, 19):
        assert torch.equal(items[i]["image"], ref[i]["image"])


def test_shards_are_reproducible(shards, tmp_path):
    root, paths = shards
    again = write_shards(root, tmp_path / "again", maxcount=6)
    assert [p.read_bytes() for p in paths] == [p.read_bytes() for p in again]


def test_brace_pattern_and_shuffle(shards, tmp_path):
    pattern = str(tmp_path / "shards/shard-{000000..000003}.tar")
    a = [x["key"] for x in ShardDataset(pattern, 16, shuffle_buffer=8, seed=3)]
    b = [x["key"] for x in ShardDataset(pattern, 16, shuffle_buffer=8, seed=3)]
    assert a == b and sorted(a) == [f"{i:08d}" for i in range(20)]
    assert a != sorted(a)
    ds = ShardDataset(pattern, 16, shuffle_buffer=8, seed=3)
    ds.set_epoch(1)
    assert [x["key"] for x in ds] != a


def test_workers_split_shards(shards, tmp_path):
    ds = ShardDataset(tmp_path / "shards", 16, shuffle_buffer=0)
    keys = [x["key"] for x in torch.utils.data.DataLoader(ds, num_workers=2, batch_size=None)]
    assert sorted(keys) == [f"{i:08d}" for i in range(20)]


def test_repeat_streams_past_one_epoch(shards, tmp_path):
    ds = ShardDataset(tmp_path / "shards", 16, shuffle_buffer=4, repeat=True)
    it = iter(ds)
    assert len([next(it) for _ in range(45)]) == 45


def _add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_broken_members_are_counted_and_skipped(shards, tmp_path, caplog):
    root, paths = shards
    good = (root / "images/000000.png").read_bytes()
    bad = tmp_path / "shards/shard-000009.tar"
    with tarfile.open(bad, "w") as tar:
        _add(tar, "a.png", b"not an image")
        _add(tar, "a.txt", b"broken image")
        _add(tar, "b.png", good)  # no caption
        _add(tar, "c.txt", b"caption without image")
        _add(tar, "d.png", good)
        _add(tar, "d.txt", b"the good one")
    truncated = tmp_path / "shards/shard-000010.tar"
    truncated.write_bytes(paths[0].read_bytes()[:2000])
    ds = ShardDataset(tmp_path / "shards", 16, shuffle_buffer=0)
    with caplog.at_level(logging.WARNING):
        items = list(ds)
    caps = [x["caption"] for x in items]
    assert "the good one" in caps and "broken image" not in caps
    assert len(items) >= 21  # the 20 good samples + d; a truncated shard may yield a prefix
    assert ds.skipped >= 4  # a, b, c and the truncated shard's damage
    assert "unreadable image" in caplog.text and "no caption" in caplog.text


def test_missing_shards(tmp_path):
    with pytest.raises(DataError, match="shard not found"):
        ShardDataset(str(tmp_path / "s-{0..3}.tar"), 16)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .tar shards"):
        ShardDataset(tmp_path / "empty", 16)
    with pytest.raises(DataError, match="shuffle_buffer"):
        ShardDataset(str(tmp_path), 16, shuffle_buffer=-1)


def test_open_dataset_finds_shards(shards, tmp_path):
    assert isinstance(open_dataset(str(tmp_path / "shards"), 16), ShardDataset)
    assert isinstance(open_dataset(str(tmp_path / "shards/shard-{000000..000001}.tar"), 16),
                      ShardDataset)


def _as_rank(monkeypatch, rank: int, world: int) -> None:
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: rank)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: world)


def test_ddp_ranks_read_disjoint_parts(shards, tmp_path, monkeypatch):
    import itertools

    from fastmuse.data.shapes import ShapesStream

    seen, scenes = [], []
    for rank in (0, 1):
        _as_rank(monkeypatch, rank, 2)
        seen.append({x["key"] for x in ShardDataset(tmp_path / "shards", 16, shuffle_buffer=4)})
        scenes.append({x["index"] for x in itertools.islice(ShapesStream(0, 32), 6)})
    assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == 20
    assert not scenes[0] & scenes[1]
