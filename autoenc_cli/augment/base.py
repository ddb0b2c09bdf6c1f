"""The interface every augmentation option implements, and the base of their configs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from autoenc_cli.schema import GroupConfig


@dataclass
class AugmentConfig(GroupConfig):
    group: ClassVar[str] = "augment"


class Augmentation:
    """Transforms a batch of training images on their device with the given generator. The transformed
    image is both the input and the target; validation and every reported number use the images as
    they are."""

    active = False  # True for options that transform: a stacked sweep then draws per member, as alone

    def __call__(self, batch: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return batch
