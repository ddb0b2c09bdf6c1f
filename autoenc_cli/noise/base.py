"""The interface every noise option implements."""

from __future__ import annotations

import torch


class Noise:
    """Corrupts a batch of clean inputs on their device with the given generator; the target stays clean."""

    active = False  # True for options that corrupt: the run then reports denoising PSNRs and figures

    def __call__(self, clean: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return clean


class Corruption(Noise):
    """Base of the options that do corrupt the input."""

    active = True
