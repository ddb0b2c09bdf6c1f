"""Random transformations of every training batch (the ``augment`` config group): more images from few."""

from autoenc_cli.augment.base import Augmentation

__all__ = ["Augmentation"]
