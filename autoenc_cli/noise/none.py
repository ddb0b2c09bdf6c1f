"""``noise=none``: a plain (not denoising) autoencoder."""

from __future__ import annotations

from dataclasses import dataclass

from autoenc_cli.noise.base import Noise
from autoenc_cli.registry import register
from autoenc_cli.schema.root import GroupConfig


@dataclass
class NoNoiseConfig(GroupConfig):
    name: str = "none"


@register("noise", "none", NoNoiseConfig)
def build_no_noise(config: NoNoiseConfig) -> Noise:
    return Noise()
