"""The interface every noise option implements."""

from __future__ import annotations

import torch


class Noise:
    """Corrupts a batch of clean inputs on their device with the given generator; the target stays clean."""

    def __call__(self, clean: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return clean

    @property
    def active(self) -> bool:
        return False
