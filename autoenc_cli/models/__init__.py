"""Autoencoder models: a shared ``Autoencoder`` module and the builders that assemble it."""

from autoenc_cli.models.autoencoder import Autoencoder, AutoencoderOutput

__all__ = ["Autoencoder", "AutoencoderOutput"]
