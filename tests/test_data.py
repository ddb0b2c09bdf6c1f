"""Data sets as device tensors, the seeded split and the index-slicing batcher."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from autoenc_cli.data.embedded import Mnist5kConfig, load_mnist_5k
from autoenc_cli.data.tensors import Split, iterate_batches
from autoenc_cli.data.torchvision_sets import FashionMnistConfig, MnistConfig, load_torchvision
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


@pytest.mark.parametrize(("config_class", "folder"), [(MnistConfig, "MNIST"), (FashionMnistConfig, "FashionMNIST")])
def test_torchvision_loaders_read_idx_files_into_tensors(tmp_path, config_class, folder):
    root = fake_mnist_root(tmp_path, folder, train=50, test=20)
    bundle = load_torchvision(config_class(root=str(root), val_fraction=0.2))
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (40, 10, 20)
    assert bundle.input_shape == (1, 28, 28) and bundle.train.images.max() <= 1
    assert bundle.test.labels.tolist()[:3] == [0, 1, 2]


def test_missing_data_root_without_download_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="does not exist; .* data.download=true"):
        load_torchvision(MnistConfig(root=str(tmp_path / "nowhere")))
    with pytest.raises(DataError, match="Dataset not found"):
        load_torchvision(MnistConfig(root=str(tmp_path)))


def test_cifar10_loads_colour_images_channels_first(tmp_path, monkeypatch):
    import pickle

    from torchvision.datasets import cifar

    from autoenc_cli.data.torchvision_sets import Cifar10Config

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, count in [*((f"data_batch_{i}", 6) for i in range(1, 6)), ("test_batch", 4)]:
        batch = {"data": rng.integers(0, 256, size=(count, 3072), dtype=np.uint8), "labels": list(range(count))}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [str(i) for i in range(10)]}))
    # The fake files cannot match the real archive's checksums.
    monkeypatch.setattr(cifar, "check_integrity", lambda *args, **kwargs: True)
    bundle = load_torchvision(Cifar10Config(root=str(tmp_path), val_fraction=0.2))
    assert bundle.input_shape == (3, 32, 32) and (len(bundle.train), len(bundle.val), len(bundle.test)) == (24, 6, 4)
    raw = pickle.loads((folder / "test_batch").read_bytes())["data"][0]
    torch.testing.assert_close(bundle.test.images[0], torch.tensor(raw).view(3, 32, 32).float() / 255)


def test_npz_accepts_uint8_and_float_with_or_without_channels(tmp_path):
    from autoenc_cli.data.files import NpzConfig, load_npz

    rng = np.random.default_rng(0)
    cases = {
        "gray_uint8.npz": {"images": rng.integers(0, 256, (20, 6, 5), dtype=np.uint8), "labels": np.arange(20) % 3},
        "rgb_float.npz": {"images": rng.random((20, 3, 4, 4)).astype(np.float32)},
    }
    for name, arrays in cases.items():
        np.savez(tmp_path / name, **arrays)
    gray = load_npz(NpzConfig(path=str(tmp_path / "gray_uint8.npz")))
    assert gray.input_shape == (1, 6, 5) and len(gray.train) == 16 and gray.train.labels is not None
    rgb = load_npz(NpzConfig(path=str(tmp_path / "rgb_float.npz")))
    assert rgb.input_shape == (3, 4, 4) and rgb.train.labels is None and rgb.train.images.max() <= 1


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"pixels": np.zeros((4, 2, 2))}, "has no 'images' array (it has: pixels)"),
        ({"images": np.zeros((4, 4))}, "must be N x H x W or N x C x H x W"),
        ({"images": np.full((4, 2, 2), 255.0)}, "float images must lie in [0, 1]"),
        ({"images": np.full((4, 2, 2), 255.0)}, "16 of 16 values lie outside [0, 1] (first at index (0, 0, 0): 255;"),
        ({"images": np.full((4, 2, 2), np.nan)}, "16 NaN values (first at index (0, 0, 0)); float images must be"),
        ({"images": np.full((4, 2, 2), 7, dtype=np.int32)}, "got int32, values 7..7 (convert with"),
        ({"images": np.zeros((4, 8, 8, 3), dtype=np.uint8)}, "look channels-last"),
        ({"images": np.zeros((4, 2, 2), dtype=np.uint8), "labels": np.zeros(3)}, "labels must have shape (4,)"),
    ],
)
def test_malformed_npz_files_give_clear_errors(tmp_path, arrays, message):
    from autoenc_cli.data.files import NpzConfig, load_npz

    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError) as caught:
        load_npz(NpzConfig(path=str(tmp_path / "bad.npz")))
    assert message in str(caught.value)


def test_npz_uint16_images_are_scaled_by_their_full_range(tmp_path):
    from autoenc_cli.data.files import NpzConfig, load_npz

    np.savez(tmp_path / "deep.npz", images=np.full((10, 3, 3), 32768, dtype=np.uint16))
    bundle = load_npz(NpzConfig(path=str(tmp_path / "deep.npz")))
    torch.testing.assert_close(bundle.train.images, torch.full_like(bundle.train.images, 32768 / 65535))


def test_as_images_refuses_integers_without_a_known_scale():
    from autoenc_cli.data.tensors import as_images

    assert as_images(np.full((2, 2, 2), 255, dtype=np.uint8)).max().item() == 1.0
    with pytest.raises(DataError, match="images of type int64 have no known intensity scale"):
        as_images(np.zeros((2, 2, 2), dtype=np.int64))


def test_missing_or_corrupt_npz(tmp_path):
    from autoenc_cli.data.files import NpzConfig, load_npz

    with pytest.raises(DataError, match="is not a file"):
        load_npz(NpzConfig(path=str(tmp_path / "nope.npz")))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="is not a readable .npz file"):
        load_npz(NpzConfig(path=str(tmp_path / "junk.npz")))


def write_images(folder: Path, count: int, size: tuple[int, int]) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(str(folder)))
    for index in range(count):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / f"{index}.png")


def test_image_folder_resizes_and_labels_by_subfolder(tmp_path):
    from autoenc_cli.data.files import ImageFolderConfig, load_image_folder

    write_images(tmp_path / "cats", 5, (40, 30))
    write_images(tmp_path / "dogs", 5, (20, 25))
    bundle = load_image_folder(ImageFolderConfig(path=str(tmp_path), image_size=[16, 12], channels=3))
    assert bundle.input_shape == (3, 16, 12) and len(bundle.train) + len(bundle.val) == 10
    assert (
        bundle.num_classes == 2
        and sorted(torch.cat([bundle.train.labels, bundle.val.labels]).tolist()) == [0] * 5 + [1] * 5
    )
    gray = load_image_folder(ImageFolderConfig(path=str(tmp_path / "cats"), image_size=[8, 8], channels=1))
    assert gray.input_shape == (1, 8, 8) and gray.train.labels is None


def test_image_folder_errors(tmp_path):
    from autoenc_cli.data.files import ImageFolderConfig, load_image_folder

    with pytest.raises(DataError, match="is not a folder of images"):
        load_image_folder(ImageFolderConfig(path=str(tmp_path / "missing")))
    with pytest.raises(DataError, match="holds 0 image files"):
        load_image_folder(ImageFolderConfig(path=str(tmp_path)))
    write_images(tmp_path, 2, (4, 4))
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="broken.png' is not a readable image"):
        load_image_folder(ImageFolderConfig(path=str(tmp_path)))


def test_a_failed_download_is_a_clear_error(tmp_path, monkeypatch):
    from torchvision.datasets import MNIST

    def offline(self, *args, **kwargs):
        raise OSError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(MNIST, "download", offline)
    with pytest.raises(DataError, match="downloading into data.root=.* failed: .*name resolution"):
        load_torchvision(MnistConfig(root=str(tmp_path), download=True))
