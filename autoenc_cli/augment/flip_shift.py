"""``augment=flip_shift``: random mirror images and translations, drawn per image.

The classic augmentation for small image sets (Krizhevsky et al. 2012; Hinton & Salakhutdinov 2006 made
103,500 training faces out of 400 by transforming them). One batched draw per batch, no loop over images.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from autoenc_cli.augment.base import Augmentation, AugmentConfig
from autoenc_cli.errors import ConfigError
from autoenc_cli.registry import register
from autoenc_cli.schema import choice, number
from autoenc_cli.schema.check import Facts

# F.pad's mode for each ``padding`` value: what the pixels shifted in from outside the image are.
PAD_MODES = {"reflect": "reflect", "edge": "replicate", "zeros": "constant"}


@dataclass
class FlipShiftConfig(AugmentConfig):
    name: str = "flip_shift"
    flip: float = number(0.5, ge=0, le=1)  # probability that an image is mirrored left to right (0: never)
    shift: int = number(2, ge=0)  # largest translation in pixels, drawn per image for each axis in [-shift, shift]
    padding: str = choice("reflect", tuple(PAD_MODES))  # the pixels shifted in: reflect | edge | zeros

    def check_with(self, facts: Facts) -> None:
        if len(facts.input_shape) != 3:
            raise ConfigError("name", self.name, f"transforms C x H x W images; the data gives {facts.input_shape}")
        smallest = min(facts.input_shape[1:])
        if self.shift >= smallest:  # further would move images wholly out (and reflect padding cannot)
            raise ConfigError("shift", self.shift, f"must be below the images' smallest side ({smallest})")


@register(FlipShiftConfig)
class FlipShift(Augmentation):
    active = True

    def __init__(self, config: FlipShiftConfig) -> None:
        self.flip, self.shift, self.mode = config.flip, config.shift, PAD_MODES[config.padding]

    def __call__(self, batch: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        count, device = batch.shape[0], batch.device
        if self.flip > 0:
            mirrored = torch.rand(count, generator=generator, device=device) < self.flip
            batch = torch.where(mirrored[:, None, None, None], batch.flip(-1), batch)
        if self.shift > 0:
            batch = self._translate(batch, generator)
        return batch

    def _translate(self, batch: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Each image moved by its own (dy, dx): a crop of the padded batch at a random offset, gathered
        for all images with one index."""
        count, _, height, width = batch.shape
        reach, device = self.shift, batch.device
        padded = F.pad(batch, (reach, reach, reach, reach), mode=self.mode)
        offsets = torch.randint(0, 2 * reach + 1, (2, count, 1), generator=generator, device=device)
        rows = offsets[0] + torch.arange(height, device=device)  # (count, height)
        columns = offsets[1] + torch.arange(width, device=device)  # (count, width)
        images = torch.arange(count, device=device)[:, None, None]
        crops = padded.permute(0, 2, 3, 1)[images, rows[:, :, None], columns[:, None, :]]  # (count, H, W, C)
        return crops.permute(0, 3, 1, 2).contiguous()
