"""Data sets read through torchvision from ``data.root``: MNIST, Fashion-MNIST and CIFAR-10.

Each is loaded once into tensors; the validation split is held out of the training images.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from autoenc_cli.data.base import ImageDataConfig, make_bundle
from autoenc_cli.data.tensors import DataBundle, Split, as_images
from autoenc_cli.errors import DataError
from autoenc_cli.registry import register
from autoenc_cli.schema import number


@dataclass
class TorchvisionConfig(ImageDataConfig):
    dataset: ClassVar[str] = "?"  # the torchvision.datasets class
    shape: ClassVar[tuple[int, ...]] = ()
    root: str = "data"  # the folder torchvision reads the data set from (its raw files)
    download: bool = False  # let torchvision download it into root (needs the internet)
    batch_size: int = number(128, ge=1)  # training samples per step
    val_fraction: float = number(0.1, gt=0, lt=1)  # held out from the training source, seeded

    def input_shape(self) -> tuple[int, ...]:
        return self.shape


@dataclass
class MnistConfig(TorchvisionConfig):
    """MNIST: 60,000 train + 10,000 test digits, 1 x 28 x 28."""

    dataset: ClassVar[str] = "MNIST"
    shape: ClassVar[tuple[int, ...]] = (1, 28, 28)
    name: str = "mnist"


@dataclass
class FashionMnistConfig(TorchvisionConfig):
    """Fashion-MNIST: 60,000 train + 10,000 test clothing images, 1 x 28 x 28."""

    dataset: ClassVar[str] = "FashionMNIST"
    shape: ClassVar[tuple[int, ...]] = (1, 28, 28)
    name: str = "fashion_mnist"


@dataclass
class Cifar10Config(TorchvisionConfig):
    """CIFAR-10: 50,000 train + 10,000 test colour images, 3 x 32 x 32."""

    dataset: ClassVar[str] = "CIFAR10"
    shape: ClassVar[tuple[int, ...]] = (3, 32, 32)
    name: str = "cifar10"


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


@register(MnistConfig)
@register(FashionMnistConfig)
@register(Cifar10Config)
def load_torchvision(config: TorchvisionConfig) -> DataBundle:
    from torchvision import datasets

    if not config.download and not Path(config.root).is_dir():
        raise DataError(
            f"data.root='{config.root}' does not exist; point data.root at a folder holding {config.dataset} "
            "in torchvision's layout, or set data.download=true"
        )
    dataset_class = getattr(datasets, config.dataset)
    images, labels = _torchvision_split(dataset_class, config, train=True)
    test = Split(*_torchvision_split(dataset_class, config, train=False))
    return make_bundle(images, labels, config, num_classes=10, test=test)
