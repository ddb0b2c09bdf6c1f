"""What every data set shares: the common knobs, the input shape it promises, the seeded split."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

import torch

from autoenc_cli.data.tensors import DataBundle, Split, split_by_fraction
from autoenc_cli.schema import GroupConfig, number


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


def make_bundle(
    images: torch.Tensor,
    labels: Optional[torch.Tensor],
    config: DataConfig,
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
    return DataBundle(train=train, val=val, test=test, num_classes=num_classes)
