"""Variational autoencoders (Kingma & Welling 2014): an encoder that gives each input a diagonal Gaussian
posterior q(z|x), a reparameterised sample z of it as the code, and the KL divergence from the standard
normal prior as the penalty. The decoder's output is the likelihood p(x|z) the loss group names (``loss=bce``:
Bernoulli, ``loss=mse``: Gaussian), summed over an input's values, so the objective is the negative ELBO in
nats per sample (``beta`` weighs its KL term: beta-VAE).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Optional

import torch
from torch import nn

from autoenc_cli.errors import ConfigError
from autoenc_cli.models.autoencoder import Autoencoder, ModelConfig
from autoenc_cli.models.conv import ConvBlockSpec, conv_encoder, deconv_decoder, plan_layers
from autoenc_cli.models.fc import check_layer_stack, decoder_layers
from autoenc_cli.models.layers import LayerSpec, activation, check_activation, expand, mlp
from autoenc_cli.registry import register
from autoenc_cli.schema import number
from autoenc_cli.schema.check import ModelFacts
from autoenc_cli.sparsity.base import Sparsity

if TYPE_CHECKING:
    from autoenc_cli.models.autoencoder import AutoencoderOutput
    from autoenc_cli.schema.check import Facts

LOG_2PI = math.log(2 * math.pi)


@dataclass
class VariationalConfig(ModelConfig):
    """What every variational model adds to its architecture: the size of its Gaussian code and the weight of
    the KL term."""

    variational: ClassVar[bool] = True
    code_dim: int = number(16, ge=1)  # latent dimensions of the Gaussian code
    # Weight of the KL term (beta-VAE, Higgins et al. 2017): 1 is the ELBO; above 1 trades reconstruction
    # for a code closer to the prior, below 1 the other way.
    beta: float = number(1.0, ge=0)
    # The KL weight rises linearly from 0 to beta over this many training steps (KL annealing, Bowman et
    # al. 2016), so the code carries information before the prior pulls on it; 0: beta from the first step.
    kl_warmup_steps: int = number(0, ge=0)

    def check_with(self, facts: "Facts") -> None:
        sparsity = list(facts.config.sparsity)
        if sparsity:
            raise ConfigError(
                "name",
                self.name,
                f"a variational model's code is a Gaussian sample, not a sparse one: use sparsity=none (got "
                f"sparsity={','.join(sparsity)})",
            )


@dataclass
class VAEConfig(VariationalConfig):
    """A fully-connected VAE: input -> hidden layers -> (mean, log-variance) -> code -> mirrored layers -> input."""

    name: str = "vae"
    # Hidden layers between input and code, input side first (the mean and log-variance layers are added).
    encoder: list[LayerSpec] = field(default_factory=lambda: [LayerSpec(width=400, activation="relu")])
    # null mirrors the encoder; a list gives every decoder layer, code side first, the last the output layer.
    decoder: Optional[list[LayerSpec]] = None
    output_activation: str = "sigmoid"  # of the mirrored decoder's output: the likelihood's mean

    def check(self) -> None:
        check_activation("output_activation", self.output_activation)
        check_layer_stack(self.encoder, self.decoder)

    def describe(self, input_shape: tuple[int, ...]) -> ModelFacts:
        _, output_activation = decoder_layers(self.decoder, math.prod(input_shape), self.output_activation)
        return ModelFacts(self.code_dim, "linear", output_activation, variational=True)


@dataclass
class ConvVAEConfig(VariationalConfig):
    """A convolutional VAE: conv blocks -> (mean, log-variance) -> code -> a linear layer back to the conv
    features -> the blocks mirrored in transposed convolutions -> input."""

    name: str = "conv_vae"
    # Conv blocks, input side first: two stride-2 convolutions halve the image twice (28x28 -> 7x7).
    encoder: list[ConvBlockSpec] = field(
        default_factory=lambda: [
            ConvBlockSpec(channels=32, kernel=4, stride=2, padding=1, activation="relu"),
            ConvBlockSpec(channels=64, kernel=4, stride=2, padding=1, activation="relu"),
        ]
    )
    pool: int = number(1, ge=1)  # max-pooling kernel and stride after the conv stack; 1 = none
    output_activation: str = "sigmoid"  # of the last transposed convolution: the likelihood's mean

    def check(self) -> None:
        check_activation("output_activation", self.output_activation)
        if not self.encoder:
            raise ConfigError("encoder", [], "give at least one conv block")

    def describe(self, input_shape: tuple[int, ...]) -> ModelFacts:
        plan_layers(self, input_shape)  # geometry that does not fit the input: a one-line error here
        return ModelFacts(self.code_dim, "linear", self.output_activation, variational=True)


def gaussian_kl(mean: torch.Tensor, log_variance: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(log_variance)) || N(0, I)) per sample, in nats: (batch, code_dim) -> (batch,)."""
    return 0.5 * (mean.pow(2) + log_variance.exp() - 1 - log_variance).sum(dim=1)


def gaussian_log_density(z: torch.Tensor, mean: torch.Tensor, log_variance: torch.Tensor) -> torch.Tensor:
    """log N(z; mean, exp(log_variance)) summed over the last dimension."""
    return -0.5 * ((z - mean).pow(2) / log_variance.exp() + log_variance + LOG_2PI).sum(dim=-1)


class GaussianCode(Sparsity):
    """The code of a VAE: the encoder's output is (mean, log-variance) of q(z|x); in training the code is
    the reparameterised sample mean + exp(log_variance / 2) * eps, in evaluation the mean (deterministic
    codes and reconstructions). Its penalty is the KL term, weighted by beta (ramped up over the warm-up)."""

    def __init__(self, code_dim: int, beta: float, kl_warmup_steps: int) -> None:
        super().__init__()
        self.code_dim, self.beta, self.kl_warmup_steps = code_dim, beta, kl_warmup_steps
        # Training steps seen, for the warm-up: saved with the model, so a resumed run continues the ramp.
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def split(self, raw_code: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The posterior's mean and log-variance from the encoder's output (batch, 2 x code_dim)."""
        return raw_code[:, : self.code_dim], raw_code[:, self.code_dim :]

    def forward(self, raw_code: torch.Tensor) -> torch.Tensor:
        mean, log_variance = self.split(raw_code)
        if not self.training:
            return mean
        return mean + torch.randn_like(mean) * (0.5 * log_variance).exp()

    def kl_weight(self) -> torch.Tensor | float:
        """beta, ramped up linearly over the warm-up (a tensor then: no host sync per step)."""
        if self.kl_warmup_steps == 0:
            return self.beta
        return self.beta * (self.steps / self.kl_warmup_steps).clamp(max=1.0)

    def penalty(self, output: "AutoencoderOutput", target: torch.Tensor, model: Autoencoder) -> torch.Tensor:
        weight = self.kl_weight()  # (read before counting this step: the first step's weight is 0)
        if self.training and torch.is_grad_enabled():
            self.steps += 1
        return weight * gaussian_kl(*self.split(output.raw_code)).mean()

    def extra_repr(self) -> str:
        warmup = f", KL warm-up {self.kl_warmup_steps} steps" if self.kl_warmup_steps else ""
        return f"Gaussian code of {self.code_dim} units, beta {self.beta:g}{warmup}"


class VariationalAutoencoder(Autoencoder):
    """An autoencoder whose encoder ends in the mean and log-variance of q(z|x) and whose code transform
    is a ``GaussianCode``; ``sample`` decodes draws from the prior."""

    variational = True

    def __init__(
        self,
        body: nn.Module,
        features: int,
        decoder: nn.Module,
        input_shape: tuple[int, ...],
        config: VariationalConfig,
        output_activation: nn.Module,
        code_transform: Optional[nn.Module] = None,
    ) -> None:
        if isinstance(code_transform, Sparsity) and getattr(code_transform, "members", None):
            raise ValueError("a variational model takes no sparsity options")  # (the config check refuses first)
        # One linear layer gives the mean and the log-variance side by side (batch, 2 x code_dim).
        encoder = nn.Sequential(body, nn.Linear(features, 2 * config.code_dim))
        code = GaussianCode(config.code_dim, config.beta, config.kl_warmup_steps)
        super().__init__(encoder, decoder, input_shape, config.code_dim, "linear", output_activation, code)

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The mean and log-variance of q(z|x), each (batch, code_dim)."""
        return self.code_transform.split(self.raw_code(x))

    def sample(self, count: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """``count`` inputs generated from the prior: the decoder's mean for z ~ N(0, I)."""
        device = next(self.parameters()).device
        z = torch.randn(count, self.code_dim, generator=generator, device=device)
        return self.decode(z)


@register(VAEConfig)
def fc_vae(
    config: VAEConfig, input_shape: tuple[int, ...], code_transform: Optional[nn.Module] = None
) -> VariationalAutoencoder:
    input_size = math.prod(input_shape)
    hidden = expand(config.encoder)
    body = nn.Sequential(nn.Flatten(), *mlp(input_size, hidden))
    layers, output_activation = decoder_layers(config.decoder, input_size, config.output_activation, config.encoder)
    features = hidden[-1][0] if hidden else input_size
    return VariationalAutoencoder(
        body,
        features,
        mlp(config.code_dim, layers),
        input_shape,
        config,
        activation(output_activation),
        code_transform,
    )


@register(ConvVAEConfig)
def conv_vae(
    config: ConvVAEConfig, input_shape: tuple[int, ...], code_transform: Optional[nn.Module] = None
) -> VariationalAutoencoder:
    layers, features = plan_layers(config, input_shape)
    return VariationalAutoencoder(
        conv_encoder(layers, config.pool, None, "linear"),  # the flattened conv features
        math.prod(features),
        deconv_decoder(layers, features, config.code_dim),
        input_shape,
        config,
        activation(config.output_activation),
        code_transform,
    )
