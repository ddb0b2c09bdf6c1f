"""The ``Autoencoder`` module every model is, and the base of every model config."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, NamedTuple, Optional

import torch
from torch import nn

from autoenc_cli.schema import GroupConfig
from autoenc_cli.sparsity.base import Sparsity

if TYPE_CHECKING:
    from autoenc_cli.schema.check import ModelFacts


@dataclass
class ModelConfig(GroupConfig):
    group: ClassVar[str] = "model"

    def describe(self, input_shape: tuple[int, ...]) -> "ModelFacts":
        """Code size and activations this model would have for ``input_shape``, without building it;
        geometry that does not fit the input is a one-line error here."""
        raise NotImplementedError


class AutoencoderOutput(NamedTuple):
    code: torch.Tensor  # (batch, code_dim) after the sparsity transform
    logits: torch.Tensor  # decoder output before the output activation, in the input's shape
    reconstruction: torch.Tensor  # output_activation(logits)


class Autoencoder(nn.Module):
    """x -> encoder -> code transform (sparsity) -> code -> decoder -> output activation.

    The encoder maps a batch of inputs (batch, *input_shape) to flat codes (batch, code_dim); the
    decoder maps codes back to logits of shape (batch, *input_shape). Keeping the output activation
    separate lets losses such as BCE work on logits, which is stable under mixed precision.
    """

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
        # The sparsity option (see autoenc_cli.sparsity); the base class passes codes through, no penalty.
        self.code_transform = code_transform if code_transform is not None else Sparsity()
        self.output_activation = output_activation
        self.input_shape = tuple(input_shape)
        self.code_dim = code_dim
        self.code_activation = code_activation  # name of the code layer's activation

    @property
    def input_size(self) -> int:
        return math.prod(self.input_shape)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.code_transform(self.encoder(x))

    def decode_logits(self, code: torch.Tensor) -> torch.Tensor:
        return self.decoder(code).view(code.shape[0], *self.input_shape)

    def decode(self, code: torch.Tensor) -> torch.Tensor:
        return self.output_activation(self.decode_logits(code))

    def forward(self, x: torch.Tensor) -> AutoencoderOutput:
        code = self.encode(x)
        logits = self.decode_logits(code)
        return AutoencoderOutput(code, logits, self.output_activation(logits))

    @torch.no_grad()
    def dictionary(self) -> torch.Tensor:
        """The image each code unit writes: decoder logits for a one-hot code minus those for zero.

        For a single linear decoder layer this is exactly that unit's weight column; for deeper or
        convolutional decoders it is the unit's response around the zero code.
        """
        device = next(self.parameters()).device
        basis = torch.cat([torch.zeros(1, self.code_dim, device=device), torch.eye(self.code_dim, device=device)])
        logits = self.decode_logits(basis)
        return logits[1:] - logits[:1]
