"""Data sets as device tensors, the seeded split and the index-slicing batcher."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from autoenc_cli.data.embedded import Mnist5kConfig, load_mnist_5k
from autoenc_cli.data.tensors import Split, iterate_batches
from autoenc_cli.data.torchvision_sets import TorchvisionConfig, load_fashion_mnist, load_mnist
from autoenc_cli.errors import DataError


def test_embedded_mnist_splits_4000_1000_deterministically():
    first, second = load_mnist_5k(Mnist5kConfig()), load_mnist_5k(Mnist5kConfig())
    assert (len(first.train), len(first.val)) == (4000, 1000)
    assert first.input_shape == (1, 28, 28) and first.train.images.dtype == torch.float32
    assert 0 <= first.train.images.min() and first.train.images.max() <= 1
    torch.testing.assert_close(first.val.images, second.val.images)
    # Shuffled before splitting: every class is in the validation split, roughly balanced.
    counts = torch.bincount(first.val.labels, minlength=10)
    assert counts.min() > 70 and counts.sum() == 1000
    other = load_mnist_5k(Mnist5kConfig(split_seed=1))
    assert not torch.equal(other.val.labels, first.val.labels)


def test_limit_keeps_a_seeded_subset_with_every_class():
    bundle = load_mnist_5k(Mnist5kConfig(limit=200))
    assert len(bundle.train) + len(bundle.val) == 200 and len(bundle.val) == 40
    assert torch.unique(bundle.train.labels).numel() == 10


def test_batches_cover_every_sample_once_in_a_seeded_order():
    split = Split(torch.arange(10, dtype=torch.float32).view(10, 1, 1, 1))
    epoch = [batch.flatten().tolist() for batch in iterate_batches(split, 4, torch.Generator().manual_seed(0))]
    assert [len(batch) for batch in epoch] == [4, 4, 2]
    assert sorted(sum(epoch, [])) == list(range(10))
    again = [batch.flatten().tolist() for batch in iterate_batches(split, 4, torch.Generator().manual_seed(0))]
    assert epoch == again
    assert [batch.flatten().tolist() for batch in iterate_batches(split, 4)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def write_idx(path: Path, array: np.ndarray) -> None:
    """A gzip-free IDX file as torchvision's MNIST reader expects (magic: 0x08 = uint8, ndim)."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def fake_mnist_root(root: Path, folder: str, train: int, test: int) -> Path:
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, count in (("train", train), ("t10k", test)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, size=(count, 28, 28)))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(count) % 10)
    return root


@pytest.mark.parametrize(("loader", "folder"), [(load_mnist, "MNIST"), (load_fashion_mnist, "FashionMNIST")])
def test_torchvision_loaders_read_idx_files_into_tensors(tmp_path, loader, folder):
    root = fake_mnist_root(tmp_path, folder, train=50, test=20)
    bundle = loader(TorchvisionConfig(name="x", root=str(root), val_fraction=0.2))
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (40, 10, 20)
    assert bundle.input_shape == (1, 28, 28) and bundle.train.images.max() <= 1
    assert bundle.test.labels.tolist()[:3] == [0, 1, 2]


def test_missing_data_root_without_download_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="does not exist; .* data.download=true"):
        load_mnist(TorchvisionConfig(root=str(tmp_path / "nowhere")))
    with pytest.raises(DataError, match="Dataset not found"):
        load_mnist(TorchvisionConfig(root=str(tmp_path)))
