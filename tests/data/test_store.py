"""PreparedStore, collate_uint8 and make_loader over a small prepared store."""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import SequentialSampler

from maco_cxr.data.datasets.base import ChestXrayDataset, Record
from maco_cxr.data.io import read_image
from maco_cxr.data.letterbox import Letterbox
from maco_cxr.data.prepare import prepare_dataset
from maco_cxr.data.store import PreparedStore, collate_uint8, make_loader
from maco_cxr.errors import ConfigError, DataError

SIZE = 16
N = 10


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("store")
    rng = np.random.default_rng(1)
    records = []
    for i in range(N):
        path = root / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (20 + i, 24), dtype=np.uint8)).save(path)
        records.append(
            Record(
                image_path=path,
                report=f"r{i}",
                patient_id=f"p{i}",
                labels=np.array([i % 2, math.nan], dtype=np.float32),
            )
        )
    records[3].boxes = np.array([[0.0, 0.0, 12.0, 23.0], [2.0, 4.0, 6.0, 8.0]], np.float32)
    records[3].box_labels = ["a", "b"]
    mask = np.zeros((27, 24), dtype=np.uint8)
    mask[:, :12] = 1
    Image.fromarray(mask * 255).save(root / "mask7.png")
    records[7].mask_paths = [root / "mask7.png"]
    prepare_dataset(ChestXrayDataset(records, ("x", "y")), root / "store", SIZE, shard_size=4)
    return root / "store"


def test_samples_hold_the_letterboxed_image_and_metadata(store_dir: Path) -> None:
    store = PreparedStore(store_dir)
    assert len(store) == N and store.size == SIZE and store.classes == ("x", "y")
    for i in range(N):
        sample = store[i]
        assert sample["image"].dtype == torch.uint8 and sample["image"].shape == (1, SIZE, SIZE)
        pixels = read_image(sample["path"])
        box = Letterbox.from_dict(sample["letterbox"])
        np.testing.assert_array_equal(sample["image"][0].numpy(), box.apply_image(pixels))
        assert sample["index"] == i and sample["report"] == f"r{i}"
        assert sample["labels"][0].item() == i % 2 and math.isnan(sample["labels"][1].item())
        assert sample["labels"].dtype == torch.float32
    boxed = store[3]
    # 23x24 (HxW) -> scale 16/24, content 15 rows, pad_top 0
    expected = np.array([[0.0, 0.0, 8.0, 23 * 2 / 3], [4 / 3, 8 / 3, 4.0, 16 / 3]], np.float32)
    torch.testing.assert_close(boxed["boxes"], torch.from_numpy(expected))
    assert boxed["box_labels"] == ["a", "b"] and "boxes" not in store[0]
    assert "mask" not in store[0]
    mask = store[7]["mask"]
    assert mask.dtype == torch.uint8 and mask.shape == (SIZE, SIZE)
    # 27x24 -> scale 16/27, content 14 columns from pad_left 1; columns 1..7 have centres
    # (j + 0.5) * 27 / 16 < 12 inside the mask's left half
    assert mask[:, 1:8].all() and not mask[:, :1].any() and not mask[:, 8:].any()


def test_collate_keeps_uint8_and_lists(store_dir: Path) -> None:
    store = PreparedStore(store_dir)
    batch = collate_uint8([store[i] for i in (6, 7, 3)])
    assert batch["image"].dtype == torch.uint8 and batch["image"].shape == (3, 1, SIZE, SIZE)
    assert torch.equal(batch["image"][1], store[7]["image"])
    assert batch["index"] == [6, 7, 3] and batch["report"] == ["r6", "r7", "r3"]
    assert batch["mask"][0] is None and batch["mask"][1].shape == (SIZE, SIZE)
    assert batch["boxes"][0] is None and batch["boxes"][2].shape == (2, 4)
    assert batch["labels"].dtype == torch.float32 and batch["labels"].shape == (3, 2)
    assert batch["labels"][:, 0].tolist() == [0.0, 1.0, 1.0] and batch["labels"][:, 1].isnan().all()
    partial = collate_uint8([store[0], {"image": store[1]["image"]}])
    assert partial["labels"][1] is None and partial["report"] == ["r0", None]


def _order(loader: torch.utils.data.DataLoader) -> list[int]:
    return [i for batch in loader for i in batch["index"]]


def test_loader_shuffles_reproducibly_from_seed(store_dir: Path) -> None:
    store = PreparedStore(store_dir)
    kwargs = dict(shuffle=True, workers=0, drop_last=False)
    a = _order(make_loader(store, 3, seed=5, **kwargs))
    b = _order(make_loader(store, 3, seed=5, **kwargs))
    c = _order(make_loader(store, 3, seed=6, **kwargs))
    assert a == b and a != c and sorted(a) == list(range(N))
    dropped = make_loader(store, 3, seed=5, **kwargs | {"drop_last": True})
    assert [len(batch["index"]) for batch in dropped] == [3, 3, 3]


def test_loader_with_workers_and_sampler(store_dir: Path) -> None:
    store = PreparedStore(store_dir)
    loader = make_loader(store, 4, shuffle=False, seed=0, workers=2, drop_last=False)
    batches = list(loader)
    assert _order(loader) == list(range(N))  # persistent workers serve a second epoch
    assert torch.equal(batches[2]["image"][1], store[9]["image"])
    sampled = make_loader(
        store, 4, shuffle=False, seed=0, workers=0, drop_last=False, sampler=SequentialSampler(range(3))
    )
    assert _order(sampled) == [0, 1, 2]
    with pytest.raises(ConfigError, match="sampler"):
        make_loader(store, 4, shuffle=True, seed=0, workers=0, drop_last=False, sampler=SequentialSampler(range(3)))


def test_pickle_drops_open_memory_maps(store_dir: Path) -> None:
    store = PreparedStore(store_dir)
    first = store[0]["image"]
    assert store._arrays  # opened lazily
    clone = pickle.loads(pickle.dumps(store))
    assert clone._arrays == {} and torch.equal(clone[0]["image"], first)


def test_incomplete_or_foreign_store_is_refused(store_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="store.json"):
        PreparedStore(tmp_path)
    (tmp_path / "store.json").write_text(json.dumps({"format": "other", "version": 9}))
    with pytest.raises(DataError, match="prepare the dataset again"):
        PreparedStore(tmp_path)
