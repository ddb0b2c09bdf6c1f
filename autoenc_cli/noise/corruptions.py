"""Input corruptions for denoising autoencoders (Vincent et al. 2008, 2010).

Each works on a whole batch on its device with the caller's seeded generator; the target stays clean.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from autoenc_cli.errors import ConfigError
from autoenc_cli.noise.base import Corruption, NoiseConfig
from autoenc_cli.registry import register
from autoenc_cli.schema import number
from autoenc_cli.schema.check import Facts


def choose_pixels(batch: torch.Tensor, rate: float, generator: torch.Generator | None) -> torch.Tensor:
    """A (N, 1, H, W) boolean mask with exactly round(rate x H x W) pixels chosen in each image.

    A pixel is a spatial location (all its channels). Random scores per pixel, top-m per image: one
    batched draw and one ``topk``, no per-image loop.
    """
    count, pixels = batch.shape[0], batch.shape[-2] * batch.shape[-1]
    chosen = round(rate * pixels)
    scores = torch.rand(count, pixels, generator=generator, device=batch.device)
    mask = torch.zeros(count, pixels, dtype=torch.bool, device=batch.device)
    if chosen:
        mask.scatter_(1, scores.topk(chosen, dim=1, sorted=False).indices, True)
    return mask.view(count, 1, *batch.shape[-2:])


@dataclass
class PixelNoiseConfig(NoiseConfig):
    """Noise that picks whole pixels (all channels of a location): needs C x H x W images."""

    def check_with(self, facts: Facts) -> None:
        if len(facts.input_shape) != 3:
            raise ConfigError(
                "name", self.name, f"picks pixels of C x H x W images; the data gives {facts.input_shape}"
            )


@dataclass
class GaussianConfig(NoiseConfig):
    name: str = "gaussian"
    mean: float = 0.0  # of the Gaussian noise added to every pixel
    variance: float = number(0.5, ge=0)  # of the Gaussian noise (its standard deviation squared)
    clip: bool = False  # clip the noisy input to [0, 1]


@register(GaussianConfig)
class GaussianNoise(Corruption):
    """Additive Gaussian noise with the given mean and variance."""

    def __init__(self, config: GaussianConfig) -> None:
        self.mean, self.std, self.clip = config.mean, config.variance**0.5, config.clip

    def __call__(self, clean: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        noise = torch.randn(clean.shape, generator=generator, device=clean.device, dtype=clean.dtype)
        noisy = clean + self.mean + self.std * noise
        return noisy.clamp_(0, 1) if self.clip else noisy


@dataclass
class MaskConfig(PixelNoiseConfig):
    name: str = "mask"
    rate: float = number(0.5, ge=0, le=1)  # fraction of pixels per image set to value
    value: float = 0.0  # what a masked pixel is set to


@register(MaskConfig)
class MaskingNoise(Corruption):
    """Masking noise: exactly round(rate x pixels) pixels of each image set to a constant."""

    def __init__(self, config: MaskConfig) -> None:
        self.rate, self.value = config.rate, config.value

    def __call__(self, clean: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return clean.masked_fill(choose_pixels(clean, self.rate, generator), self.value)


@dataclass
class SaltPepperConfig(PixelNoiseConfig):
    name: str = "salt_pepper"
    rate: float = number(0.2, ge=0, le=1)  # fraction of pixels per image set to 0 or 1


@register(SaltPepperConfig)
class SaltPepperNoise(Corruption):
    """Salt-and-pepper noise: exactly round(rate x pixels) pixels per image set to 0 or 1, half each
    on average."""

    def __init__(self, config: SaltPepperConfig) -> None:
        self.rate = config.rate

    def __call__(self, clean: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        chosen = choose_pixels(clean, self.rate, generator)
        salt = torch.rand(chosen.shape, generator=generator, device=clean.device) < 0.5
        return torch.where(chosen, salt.to(clean.dtype), clean)
