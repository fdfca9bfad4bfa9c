"""Datasets: the embedded split is deterministic and disjoint; missing data says what to do."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from ggl.config import DataConfig
from ggl.data import DataError, load_dataset, load_part, write_split

DIGITS = DataConfig("digits", "data/raw", False, 32, 10, 1297, 300, 200, 0)
FILES = ("public.pt", "private.pt", "test.pt", "i.json")


def test_digits_split_is_seeded_disjoint_and_complete(tmp_path):
    a, b = load_dataset(DIGITS), load_dataset(DIGITS)
    assert torch.equal(a.private_images, b.private_images)
    assert a.public_images.shape == (1297, 3, 32, 32)
    assert a.private_images.shape == (300, 3, 32, 32)
    assert a.test_images.shape == (200, 3, 32, 32)
    pub, priv = set(a.source["public_indices"]), set(a.source["private_indices"])
    test = set(a.source["test_indices"])
    assert not pub & priv and not test & (pub | priv) and len(pub | priv | test) == 1797
    other = load_dataset(dataclasses.replace(DIGITS, split_seed=1))
    assert not torch.equal(a.private_images, other.private_images)
    write_split(a, DIGITS, *(tmp_path / name for name in FILES))
    images, labels = load_part(tmp_path / "private.pt")
    assert images.min() >= -1 and images.max() <= 1 and images.min() < -0.9
    assert torch.equal(labels, a.private_labels) and set(labels.tolist()) == set(range(10))
    assert torch.equal(load_part(tmp_path / "test.pt")[1], a.test_labels)


def test_the_test_part_leaves_the_public_and_private_images_as_they_were():
    """Results of runs before the test part existed keep their meaning: the same public
    images, and the first private images (every attacked one) the same."""
    before = load_dataset(dataclasses.replace(DIGITS, private_size=500, test_size=0))
    after = load_dataset(DIGITS)
    assert torch.equal(before.public_images, after.public_images)
    assert torch.equal(before.private_images[:300], after.private_images)
    assert torch.equal(before.private_images[300:], after.test_images)


def test_celeba_offline_says_what_to_download(tmp_path):
    cfg = DataConfig("celeba", str(tmp_path), False, 32, 2, 10, 10, 0, 0)
    with pytest.raises(DataError) as info:
        load_dataset(cfg)
    message = str(info.value)
    for word in ("data.download: true", "img_align_celeba.zip", "list_attr_celeba.txt",
                 f"{tmp_path}/celeba"):
        assert word in message


def test_imagenet_wrong_path_says_where_to_put_it(tmp_path):
    cfg = DataConfig("imagenet", str(tmp_path / "nowhere"), False, 224, 1000, 0, 10, 0, 0)
    with pytest.raises(DataError) as info:
        load_dataset(cfg)
    for word in ("ILSVRC2012_img_val.tar", "ILSVRC2012_devkit_t12.tar.gz", "nowhere"):
        assert word in str(info.value)


def test_imagefolder_resizes_the_users_images(tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(6):
            pixels = rng.integers(0, 255, (40 + i, 50, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / cls / f"{i}.png")
    split = load_dataset(DataConfig("imagefolder", str(tmp_path), False, 16, 2, 8, 2, 2, 0))
    assert split.public_images.shape == (8, 3, 16, 16)
    assert split.private_images.shape == split.test_images.shape == (2, 3, 16, 16)
    assert split.source["classes"] == ["cat", "dog"]


def test_imagefolder_missing_folder_names_the_key(tmp_path):
    with pytest.raises(DataError, match="data.root"):
        load_dataset(DataConfig("imagefolder", str(tmp_path / "x"), False, 16, 2, 8, 4, 0, 0))


def test_oversized_split_is_refused():
    with pytest.raises(DataError, match="public_size"):
        load_dataset(dataclasses.replace(DIGITS, public_size=1500, private_size=400))
