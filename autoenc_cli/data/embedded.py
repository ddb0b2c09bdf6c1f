"""The embedded default data set: 5,000 MNIST digits shipped inside the package."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

import numpy as np
import torch

from autoenc_cli.data.base import ImageDataConfig, make_bundle
from autoenc_cli.data.tensors import DataBundle, as_images
from autoenc_cli.registry import register

EMBEDDED_MNIST = "mnist_5k.npz"


@dataclass
class Mnist5kConfig(ImageDataConfig):
    name: str = "mnist_5k"

    def input_shape(self) -> tuple[int, ...]:
        return (1, 28, 28)


@register(Mnist5kConfig)
def load_mnist_5k(config: Mnist5kConfig) -> DataBundle:
    """5,000 MNIST digits shipped inside the package (500 per class); see MNIST_5K_README.md."""
    with resources.as_file(resources.files("autoenc_cli.data") / EMBEDDED_MNIST) as path, np.load(path) as arrays:
        images, labels = as_images(arrays["images"]), torch.as_tensor(arrays["labels"]).long()
    return make_bundle(images, labels, config, num_classes=10)
