"""Registered data sets: the embedded MNIST subset and torchvision's MNIST and Fashion-MNIST."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from autoenc_cli.data.tensors import DataBundle, Split, as_images, split_by_fraction
from autoenc_cli.errors import DataError
from autoenc_cli.registry import register
from autoenc_cli.schema import number
from autoenc_cli.schema.root import GroupConfig

EMBEDDED_MNIST = "mnist_5k.npz"


@dataclass
class DataConfig(GroupConfig):
    batch_size: int = number(32, ge=1)
    val_fraction: float = number(0.2, gt=0, lt=1)  # held out from the training source, seeded
    split_seed: int = number(0, ge=0)  # fixed apart from the run seed so seeds share one split
    limit: Optional[int] = number(None, ge=2)  # keep only this many samples (smoke runs)


@dataclass
class Mnist5kConfig(DataConfig):
    name: str = "mnist_5k"


@dataclass
class TorchvisionConfig(DataConfig):
    name: str = "mnist"
    root: str = "data"
    download: bool = False


def _bundle(images: torch.Tensor, labels: Optional[torch.Tensor], config: DataConfig, num_classes: Optional[int], test: Optional[Split] = None) -> DataBundle:
    if config.limit is not None:
        # A seeded subset, so a small limit still has every class even from a label-sorted file.
        keep = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(config.split_seed))[: config.limit]
        images, labels = images[keep], labels[keep] if labels is not None else None
    train, val = split_by_fraction(images, labels, config.val_fraction, config.split_seed)
    return DataBundle(train=train, val=val, test=test, num_classes=num_classes)


@register("data", "mnist_5k", Mnist5kConfig)
def load_mnist_5k(config: Mnist5kConfig) -> DataBundle:
    """5,000 MNIST digits shipped inside the package (500 per class); see MNIST_5K_README.md."""
    with resources.as_file(resources.files("autoenc_cli.data") / EMBEDDED_MNIST) as path, np.load(path) as arrays:
        images, labels = as_images(arrays["images"]), torch.as_tensor(arrays["labels"]).long()
    return _bundle(images, labels, config, num_classes=10)


def _torchvision_split(dataset_class: type, config: TorchvisionConfig, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        dataset = dataset_class(root=config.root, train=train, download=config.download)
    except RuntimeError as error:
        raise DataError(f"data.root='{config.root}': {str(error).splitlines()[0]}") from None
    return as_images(dataset.data), torch.as_tensor(dataset.targets).long()


def _load_torchvision(dataset_name: str, config: TorchvisionConfig) -> DataBundle:
    from torchvision import datasets

    if not config.download and not Path(config.root).is_dir():
        raise DataError(
            f"data.root='{config.root}' does not exist; point data.root at a folder holding {dataset_name} "
            "in torchvision's layout, or set data.download=true"
        )
    dataset_class = getattr(datasets, dataset_name)
    images, labels = _torchvision_split(dataset_class, config, train=True)
    test = Split(*_torchvision_split(dataset_class, config, train=False))
    return _bundle(images, labels, config, num_classes=10, test=test)


@register("data", "mnist", TorchvisionConfig)
def load_mnist(config: TorchvisionConfig) -> DataBundle:
    return _load_torchvision("MNIST", config)


@register("data", "fashion_mnist", TorchvisionConfig)
def load_fashion_mnist(config: TorchvisionConfig) -> DataBundle:
    return _load_torchvision("FashionMNIST", config)
