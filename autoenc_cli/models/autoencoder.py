"""The ``Autoencoder`` module every model builder returns: encoder, code transform, decoder."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn


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
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        # Replaced by the run's sparsity option (see experiment.build_model).
        self.code_transform: nn.Module = nn.Identity()
        self.output_activation = output_activation
        self.input_shape = tuple(input_shape)
        self.code_dim = code_dim
        self.code_activation = code_activation  # name of the code layer's activation, e.g. for range checks

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
