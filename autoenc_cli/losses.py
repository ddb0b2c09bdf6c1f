"""Reconstruction losses (the ``loss`` group) and the objective that adds sparsity penalties."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, NamedTuple, Optional

import torch
import torch.nn.functional as F

from autoenc_cli.errors import ConfigError
from autoenc_cli.models.autoencoder import Autoencoder, AutoencoderOutput
from autoenc_cli.registry import register
from autoenc_cli.schema import GroupConfig, number
from autoenc_cli.schema.check import Facts
from autoenc_cli.sparsity.base import Sparsity


@dataclass
class LossConfig(GroupConfig):
    group: ClassVar[str] = "loss"


LOG_2PI = math.log(2 * math.pi)


@dataclass
class MSEConfig(LossConfig):
    name: str = "mse"
    # Variational models (model=vae): the standard deviation of the Gaussian likelihood p(x|z) = N(x; output,
    # sigma^2 I). Smaller trusts the reconstruction more against the KL term; 1 is pythae's "mse" VAE.
    sigma: float = number(1.0, gt=0)

    def check_with(self, facts: Facts) -> None:
        if self.sigma != 1.0 and not facts.model.variational:
            raise ConfigError(
                "sigma",
                self.sigma,
                "sets the Gaussian likelihood of a variational model (model=vae); leave it at 1 here",
            )


@register(MSEConfig)
class MSELoss:
    """Mean squared error per pixel; for a variational model, a Gaussian likelihood of std ``sigma``."""

    def __init__(self, config: MSEConfig) -> None:
        self.sigma = config.sigma

    def __call__(self, output: AutoencoderOutput, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(output.reconstruction, target)

    def negative_log_likelihood(self, output: AutoencoderOutput, target: torch.Tensor) -> torch.Tensor:
        """-log N(target; reconstruction, sigma^2 I) per sample, in nats: (batch, ...) -> (batch,)."""
        squared = (output.reconstruction - target).pow(2).flatten(1).sum(dim=1)
        values = target[0].numel()
        return squared / (2 * self.sigma**2) + values * (math.log(self.sigma) + 0.5 * LOG_2PI)


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

    def negative_log_likelihood(self, output: AutoencoderOutput, target: torch.Tensor) -> torch.Tensor:
        """-log Bernoulli(target; sigmoid(logits)) per sample, in nats (a proper likelihood for binary data;
        for grey levels in [0, 1], the cross-entropy the field reports as such): (batch, ...) -> (batch,)."""
        return F.binary_cross_entropy_with_logits(output.logits, target, reduction="none").flatten(1).sum(dim=1)


class LossTerms(NamedTuple):
    total: torch.Tensor
    reconstruction: torch.Tensor
    penalty: Optional[torch.Tensor]


class Objective:
    """Reconstruction loss against the clean target plus the sparsity option's penalty, if any.

    For a variational network the reconstruction term is the likelihood's -log p(x|z) summed over each
    input and the penalty the (beta-weighted) KL term: the total is the negative ELBO in nats per sample.
    """

    def __init__(self, reconstruction: MSELoss | BCELoss, network: Autoencoder) -> None:
        self.reconstruction, self.network = reconstruction, network

    def for_network(self, network: Autoencoder) -> "Objective":
        """The same loss with the penalty of ``network``'s own code transform (none for a greedy stage)."""
        return Objective(self.reconstruction, network)

    def __call__(self, output: AutoencoderOutput, target: torch.Tensor) -> LossTerms:
        if self.network.variational:
            reconstruction = self.reconstruction.negative_log_likelihood(output, target).mean()
        else:
            reconstruction = self.reconstruction(output, target)
        transform = self.network.code_transform
        penalty = transform.penalty(output, target, self.network) if isinstance(transform, Sparsity) else None
        total = reconstruction if penalty is None else reconstruction + penalty
        return LossTerms(total, reconstruction, penalty)
