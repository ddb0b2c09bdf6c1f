"""The interface every noise option implements, and the base of their configs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from autoenc_cli.schema import GroupConfig


@dataclass
class NoiseConfig(GroupConfig):
    group: ClassVar[str] = "noise"


class Noise:
    """Corrupts a batch of clean inputs on their device with the given generator; the target stays clean."""

    active = False  # True for options that corrupt: the run then reports denoising PSNRs and figures

    def __call__(self, clean: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return clean


class Corruption(Noise):
    """Base of the options that do corrupt the input."""

    active = True
