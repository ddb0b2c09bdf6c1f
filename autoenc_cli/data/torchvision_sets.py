"""Data sets read through torchvision from ``data.root``: MNIST, Fashion-MNIST and CIFAR-10.

Each is loaded once into tensors; the validation split is held out of the training images.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from autoenc_cli.data.base import DataConfig, make_bundle
from autoenc_cli.data.tensors import DataBundle, Split, as_images
from autoenc_cli.errors import DataError
from autoenc_cli.registry import register


@dataclass
class TorchvisionConfig(DataConfig):
    name: str = "mnist"
    root: str = "data"
    download: bool = False


def _torchvision_split(
    dataset_class: type, config: TorchvisionConfig, train: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        dataset = dataset_class(root=config.root, train=train, download=config.download)
    except RuntimeError as error:
        raise DataError(f"data.root='{config.root}': {str(error).splitlines()[0]}") from None
    except OSError as error:  # a download that could not reach its server, or an unwritable root
        action = "downloading into" if config.download else "reading"
        raise DataError(f"{action} data.root='{config.root}' failed: {error}") from None
    images = torch.as_tensor(np.asarray(dataset.data))
    if images.ndim == 4:  # CIFAR keeps N x H x W x C
        images = images.permute(0, 3, 1, 2)
    return as_images(images), torch.as_tensor(dataset.targets).long()


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
    return make_bundle(images, labels, config, num_classes=10, test=test)


@register("data", "mnist", TorchvisionConfig)
def load_mnist(config: TorchvisionConfig) -> DataBundle:
    return _load_torchvision("MNIST", config)


@register("data", "fashion_mnist", TorchvisionConfig)
def load_fashion_mnist(config: TorchvisionConfig) -> DataBundle:
    return _load_torchvision("FashionMNIST", config)


@register("data", "cifar10", TorchvisionConfig)
def load_cifar10(config: TorchvisionConfig) -> DataBundle:
    """CIFAR-10 through torchvision: 50,000 train + 10,000 test colour images, 3 x 32 x 32."""
    return _load_torchvision("CIFAR10", config)
