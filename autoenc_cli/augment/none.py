"""``augment=none``: train on the images as they are."""

from __future__ import annotations

from dataclasses import dataclass

from autoenc_cli.augment.base import Augmentation, AugmentConfig
from autoenc_cli.registry import register


@dataclass
class NoAugmentConfig(AugmentConfig):
    name: str = "none"


@register(NoAugmentConfig)
class NoAugmentation(Augmentation):
    def __init__(self, config: NoAugmentConfig) -> None:
        pass
