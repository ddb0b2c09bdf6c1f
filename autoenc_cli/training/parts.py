"""What a training run is made of once its config is built (see ``autoenc_cli.build``)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from autoenc_cli.augment import Augmentation
from autoenc_cli.data.tensors import DataBundle
from autoenc_cli.losses import Objective
from autoenc_cli.models.autoencoder import Autoencoder
from autoenc_cli.noise.base import Noise
from autoenc_cli.schedules import Phase
from autoenc_cli.schema import TrainConfig
from autoenc_cli.training.distributed import World


@dataclass
class RunParts:
    config: TrainConfig
    device: torch.device
    data: DataBundle
    model: Autoencoder
    objective: Objective
    noise: Noise
    phases: list[Phase]
    world: World = World()
    augment: Augmentation = field(default_factory=Augmentation)

    def validation_noise_generator(self) -> torch.Generator:
        """A fresh generator with a fixed seed: every validation pass sees the same corruption."""
        return validation_noise_generator(self.config.seed, self.device)


def validation_noise_generator(seed: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed + 2)
