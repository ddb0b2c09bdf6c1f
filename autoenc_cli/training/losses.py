"""Reconstruction losses (the ``loss`` group) and the objective that adds sparsity penalties."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from autoenc_cli.errors import ConfigError
from autoenc_cli.models.autoencoder import Autoencoder, AutoencoderOutput
from autoenc_cli.registry import register
from autoenc_cli.schema.root import GroupConfig
from autoenc_cli.sparsity.base import Sparsity

ReconstructionLoss = Callable[[AutoencoderOutput, torch.Tensor], torch.Tensor]


@dataclass
class LossConfig(GroupConfig):
    name: str = "mse"


@register("loss", "mse", LossConfig)
def build_mse(config: LossConfig, model: Autoencoder) -> ReconstructionLoss:
    """Mean squared error per pixel."""
    return lambda output, target: F.mse_loss(output.reconstruction, target)


@register("loss", "bce", LossConfig)
def build_bce(config: LossConfig, model: Autoencoder) -> ReconstructionLoss:
    """Binary cross-entropy per pixel, computed from logits for numerical stability."""
    if not isinstance(model.output_activation, nn.Sigmoid):
        raise ConfigError("loss.name", "bce", "needs a sigmoid output layer (model.output_activation=sigmoid)")
    return lambda output, target: F.binary_cross_entropy_with_logits(output.logits, target)


class LossTerms(NamedTuple):
    total: torch.Tensor
    reconstruction: torch.Tensor
    penalty: Optional[torch.Tensor]


class Objective:
    """Reconstruction loss against the clean target plus the sparsity option's penalty, if any."""

    def __init__(self, reconstruction: ReconstructionLoss, sparsity: Sparsity) -> None:
        self.reconstruction, self.sparsity = reconstruction, sparsity

    def __call__(self, output: AutoencoderOutput, target: torch.Tensor) -> LossTerms:
        reconstruction = self.reconstruction(output, target)
        penalty = self.sparsity.penalty(output.code)
        total = reconstruction if penalty is None else reconstruction + penalty
        return LossTerms(total, reconstruction, penalty)
