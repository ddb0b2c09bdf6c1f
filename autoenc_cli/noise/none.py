"""``noise=none``: a plain (not denoising) autoencoder."""

from __future__ import annotations

from dataclasses import dataclass

from autoenc_cli.noise.base import Noise, NoiseConfig
from autoenc_cli.registry import register


@dataclass
class NoNoiseConfig(NoiseConfig):
    name: str = "none"


@register(NoNoiseConfig)
class NoNoise(Noise):
    def __init__(self, config: NoNoiseConfig) -> None:
        pass
