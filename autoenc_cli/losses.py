"""Reconstruction losses (the ``loss`` group) and the objective that adds sparsity penalties."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, NamedTuple, Optional

import torch
import torch.nn.functional as F

from autoenc_cli.errors import ConfigError
from autoenc_cli.models.autoencoder import Autoencoder, AutoencoderOutput
from autoenc_cli.registry import register
from autoenc_cli.schema import GroupConfig
from autoenc_cli.schema.check import Facts
from autoenc_cli.sparsity.base import Sparsity


@dataclass
class LossConfig(GroupConfig):
    group: ClassVar[str] = "loss"


@dataclass
class MSEConfig(LossConfig):
    name: str = "mse"


@register(MSEConfig)
class MSELoss:
    """Mean squared error per pixel."""

    def __init__(self, config: MSEConfig) -> None:
        pass

    def __call__(self, output: AutoencoderOutput, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(output.reconstruction, target)


@dataclass
class BCEConfig(LossConfig):
    name: str = "bce"

    def check_with(self, facts: Facts) -> None:
        if facts.model.output_activation != "sigmoid":
            raise ConfigError(
                "name",
                "bce",
                f"needs a sigmoid output layer (the model's is {facts.model.output_activation}): "
                "model.output_activation=sigmoid, or a sigmoid last layer in an explicit model.decoder",
            )


@register(BCEConfig)
class BCELoss:
    """Binary cross-entropy per pixel, computed from logits for numerical stability."""

    def __init__(self, config: BCEConfig) -> None:
        pass

    def __call__(self, output: AutoencoderOutput, target: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(output.logits, target)


class LossTerms(NamedTuple):
    total: torch.Tensor
    reconstruction: torch.Tensor
    penalty: Optional[torch.Tensor]


class Objective:
    """Reconstruction loss against the clean target plus the sparsity option's penalty, if any."""

    def __init__(self, reconstruction: MSELoss | BCELoss, network: Autoencoder) -> None:
        self.reconstruction, self.network = reconstruction, network

    def for_network(self, network: Autoencoder) -> "Objective":
        """The same loss with the penalty of ``network``'s own code transform (none for a greedy stage)."""
        return Objective(self.reconstruction, network)

    def __call__(self, output: AutoencoderOutput, target: torch.Tensor) -> LossTerms:
        reconstruction = self.reconstruction(output, target)
        transform = self.network.code_transform
        penalty = transform.penalty(output, target, self.network) if isinstance(transform, Sparsity) else None
        total = reconstruction if penalty is None else reconstruction + penalty
        return LossTerms(total, reconstruction, penalty)
