"""Input corruptions for denoising autoencoders (the ``noise`` config group)."""

from autoenc_cli.noise.base import Noise

__all__ = ["Noise"]
