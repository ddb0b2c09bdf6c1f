"""The ``Autoencoder`` module every model is, and the base of every model config."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, NamedTuple, Optional

import torch
from torch import nn

from autoenc_cli.schema import GroupConfig

if TYPE_CHECKING:
    from autoenc_cli.schema.check import ModelFacts


@dataclass
class ModelConfig(GroupConfig):
    group: ClassVar[str] = "model"
    variational: ClassVar[bool] = False  # a Gaussian code (autoenc_cli.models.vae)

    def describe(self, input_shape: tuple[int, ...]) -> "ModelFacts":
        """Code size and activations this model would have for ``input_shape``, without building it;
        geometry that does not fit the input is a one-line error here."""
        raise NotImplementedError


class AutoencoderOutput(NamedTuple):
    code: torch.Tensor  # (batch, code_dim) after the sparsity transform
    logits: torch.Tensor  # decoder output before the output activation, in the input's shape
    reconstruction: torch.Tensor  # output_activation(logits)
    raw_code: torch.Tensor  # (batch, code_dim) the encoder's output, before the sparsity transform


class Autoencoder(nn.Module):
    """x -> (minus the input bias) -> encoder -> code transform (sparsity) -> code -> decoder -> output activation.

    The encoder maps a batch of inputs (batch, *input_shape) to flat codes (batch, code_dim); the
    decoder maps codes back to logits of shape (batch, *input_shape). Keeping the output activation
    separate lets losses such as BCE work on logits, which is stable under mixed precision.
    """

    # Whether the code is a sample of a Gaussian posterior (``autoenc_cli.models.vae``): the objective is
    # then the negative ELBO, its reconstruction term the loss's likelihood summed over each input.
    variational: ClassVar[bool] = False

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        input_shape: tuple[int, ...],
        code_dim: int,
        code_activation: str,
        output_activation: nn.Module,
        code_transform: Optional[nn.Module] = None,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        # The sparsity options (autoenc_cli.sparsity builds them); models only apply the transform.
        self.code_transform = code_transform if code_transform is not None else nn.Identity()
        self.output_activation = output_activation
        self.input_shape = tuple(input_shape)
        self.code_dim = code_dim
        self.code_activation = code_activation  # name of the code layer's activation
        # The pre-encoder bias (Bricken et al. 2023): a learned offset removed from every input, so the
        # encoder sees data centred on its mean. None: inputs go to the encoder as they are.
        self.input_bias: Optional[nn.Parameter] = None

    @property
    def input_size(self) -> int:
        return math.prod(self.input_shape)

    def raw_code(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's output, before the sparsity transform."""
        return self.encoder(x - self.input_bias if self.input_bias is not None else x)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.code_transform(self.raw_code(x))

    def decode_logits(self, code: torch.Tensor) -> torch.Tensor:
        return self.decoder(code).view(code.shape[0], *self.input_shape)

    def decode(self, code: torch.Tensor) -> torch.Tensor:
        return self.output_activation(self.decode_logits(code))

    def forward(self, x: torch.Tensor) -> AutoencoderOutput:
        raw_code = self.raw_code(x)
        code = self.code_transform(raw_code)
        logits = self.decode_logits(code)
        return AutoencoderOutput(code, logits, self.output_activation(logits), raw_code)

    def affine_decoder(self) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
        """The decoder's weight (input size, code_dim) and bias when it is one affine map from the code to the
        logits (a sparse autoencoder's dictionary); None for deeper or convolutional decoders."""
        return None

    @property
    def wants_data_mean(self) -> bool:
        """Whether ``initialise_from_data`` needs the training data's mean before training starts."""
        return False

    def initialise_from_data(self, mean: torch.Tensor) -> None:
        """Data-dependent initialisation from the training split's mean image (nothing by default)."""

    def after_step(self) -> None:
        """Called after every optimizer step: re-impose constraints on the parameters (none by default)."""

    @torch.no_grad()
    def dictionary(self, activation_scale: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The image each code unit writes: the decoder's response to that unit alone minus the response
        to the zero code.

        Without ``activation_scale``, in logits for a unit value of 1: exactly that unit's weight column
        for a single linear decoder layer, its response around the zero code for deeper or convolutional
        decoders. With ``activation_scale`` (code_dim,), in output space for each unit at that value
        (e.g. its mean when active): what it adds to a reconstruction, so weights a saturated output
        activation ignores (an image's always-black border) do not show as features.
        """
        device = next(self.parameters()).device
        scale = torch.ones(self.code_dim, device=device) if activation_scale is None else activation_scale.to(device)
        basis = torch.cat([torch.zeros(1, self.code_dim, device=device), torch.diag(scale)])
        response = self.decode_logits(basis) if activation_scale is None else self.decode(basis)
        return response[1:] - response[:1]
