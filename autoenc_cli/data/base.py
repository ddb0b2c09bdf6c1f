"""What every data set shares: the common knobs, the input shape it promises, the seeded split."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar, Optional

import torch

from autoenc_cli.data.tensors import DataBundle, Split, split_by_fraction
from autoenc_cli.schema import GroupConfig, choice, number


@dataclass
class DataConfig(GroupConfig):
    group: ClassVar[str] = "data"
    batch_size: int = number(32, ge=1)  # training samples per step
    val_fraction: float = number(0.2, gt=0, lt=1)  # held out from the training source, seeded
    split_seed: int = number(0, ge=0)  # fixed apart from the run seed so seeds share one split
    limit: Optional[int] = number(None, ge=2)  # keep only this many samples (smoke runs)

    def input_shape(self) -> tuple[int, ...]:
        """One sample's shape (C x H x W; (D,) for vectors), known without loading the data (a file header at most)."""
        raise NotImplementedError


@dataclass
class ImageDataConfig(DataConfig):
    """Images with pixel intensities in [0, 1] (every loader that builds its data with ``make_bundle``)."""

    # dynamic: binary pixels drawn from the intensities (Salakhutdinov & Murray 2008, the binarised MNIST of
    # VAE papers): every training batch a fresh Bernoulli draw, inputs and targets alike; the validation and
    # test splits drawn once, seeded by split_seed (the same binary images in every run). none: as they are.
    binarize: str = choice("none", ("none", "dynamic"))


def make_bundle(
    images: torch.Tensor,
    labels: Optional[torch.Tensor],
    config: ImageDataConfig,
    num_classes: Optional[int],
    test: Optional[Split] = None,
) -> DataBundle:
    if config.limit is not None:
        # A seeded subset, so a small limit still has every class even from a label-sorted file.
        keep = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(config.split_seed))[
            : config.limit
        ]
        images, labels = images[keep], labels[keep] if labels is not None else None
    train, val = split_by_fraction(images, labels, config.val_fraction, config.split_seed)
    bundle = DataBundle(train=train, val=val, test=test, num_classes=num_classes)
    return binarized(bundle, config.split_seed) if config.binarize == "dynamic" else bundle


def binarized(bundle: DataBundle, seed: int) -> DataBundle:
    """``bundle`` with its validation and test images drawn once as binary pixels (a seeded Bernoulli draw of
    each intensity) and its training images kept as intensities, drawn anew for every batch (``draw_batch``)."""
    generator = torch.Generator().manual_seed(seed + 1)
    val = Split(torch.bernoulli(bundle.val.images, generator=generator), bundle.val.labels)
    test = bundle.test and Split(torch.bernoulli(bundle.test.images, generator=generator), bundle.test.labels)
    return replace(bundle, val=val, test=test, binary_training_draws=True)
