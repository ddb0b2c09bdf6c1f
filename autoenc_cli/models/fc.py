"""Fully-connected autoencoders built from layer descriptors."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
from torch import nn

from autoenc_cli.errors import ConfigError
from autoenc_cli.models.autoencoder import Autoencoder
from autoenc_cli.models.layers import LayerSpec, TiedLinear, activation, check_activation, expand, mlp
from autoenc_cli.registry import register
from autoenc_cli.schema import number
from autoenc_cli.schema.root import GroupConfig


@dataclass
class FCModelConfig(GroupConfig):
    name: str = "fc"
    code_dim: int = number(64, ge=1)
    # Hidden layers between input and code, input side first; the code layer itself is added.
    encoder: list[LayerSpec] = field(default_factory=list)
    code_activation: str = "leaky_relu"
    # null mirrors the encoder; a list gives every decoder layer, code side first. The last one is the
    # output layer: its width must be the data's input size (or null) and its activation is the output's.
    decoder: Optional[list[LayerSpec]] = None
    output_activation: str = "sigmoid"  # of the mirrored decoder's output layer
    tied: bool = False  # decoder layers use the transposed encoder weights (with biases of their own)

    def check(self) -> None:
        check_activation("code_activation", self.code_activation)
        check_activation("output_activation", self.output_activation)
        for index, spec in enumerate(self.encoder):
            if spec.width is None:
                raise ConfigError(f"encoder[{index}].width", None, "encoder layers need a width >= 1")
        if self.decoder is not None and not self.decoder:
            raise ConfigError("decoder", [], "give at least the output layer, or null to mirror the encoder")
        for index, spec in enumerate((self.decoder or [])[:-1]):
            if spec.width is None:
                raise ConfigError(f"decoder[{index}].width", None, "only the last decoder layer may omit its width")
        last = (self.decoder or [LayerSpec(width=1)])[-1]
        if last.width is None and last.num_layers != 1:
            raise ConfigError(
                f"decoder[{len(self.decoder or []) - 1}].num_layers", last.num_layers, "must be 1 when width is null"
            )


def fc_decoder(
    specs: Optional[list[LayerSpec]],
    code_dim: int,
    input_size: int,
    output_activation: str,
    mirror_of: Sequence[LayerSpec] = (),
) -> tuple[nn.Sequential, str]:
    """A fully-connected decoder producing logits, and the name of its output activation.

    With ``specs`` null the hidden layers mirror ``mirror_of`` (an encoder) and ``output_activation``
    applies. Explicit ``specs`` list every layer, code side first; the last is the output layer, whose
    width must be the data's input size (or null) and whose activation is the output's.
    """
    if specs is None:
        hidden = list(reversed(expand(mirror_of)))
        return mlp(code_dim, [*hidden, (input_size, "linear")]), output_activation
    layers = expand(specs)
    last_width, last_activation = layers[-1]
    if last_width is not None and last_width != input_size:
        raise ConfigError(
            f"model.decoder[{len(specs) - 1}].width",
            last_width,
            f"the decoder must end at the data's input size {input_size} (or leave it null)",
        )
    return mlp(code_dim, [*layers[:-1], (input_size, "linear")]), last_activation


class FCAutoencoder(Autoencoder):
    """A fully-connected autoencoder whose decoder mirrors its encoder layer for layer.

    ``encoder`` is (Flatten, block 1, ..., block n) and ``decoder`` (block n', ..., block 1'), block i'
    mapping layer i's output back to layer i's input. Greedy layer-wise training sets ``depth`` to
    use only the outer ``depth`` pairs; ``None`` uses the whole network.
    """

    depth: Optional[int] = None

    @property
    def num_layers(self) -> int:
        return len(self.encoder) - 1

    @property
    def is_tied(self) -> bool:
        return any(isinstance(module, TiedLinear) for module in self.decoder.modules())

    def layer_pair(self, index: int) -> tuple[nn.Module, nn.Module]:
        """Encoder layer ``index`` (0 = next to the input) and its mirror decoder layer."""
        return self.encoder[1 + index], self.decoder[self.num_layers - 1 - index]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        if self.depth is None:
            return super().encode(x)
        return self.encoder[: 1 + self.depth](x)  # an inner stage's code: no sparsity transform

    def decode_logits(self, code: torch.Tensor) -> torch.Tensor:
        decoder = self.decoder if self.depth is None else self.decoder[self.num_layers - self.depth :]
        return decoder(code).view(code.shape[0], *self.input_shape)

    def untie(self) -> None:
        """Give every tied decoder layer its own copy of the transposed weight, keeping its bias."""
        for block in self.decoder:
            if isinstance(block[0], TiedLinear):
                block[0] = block[0].untied()


def is_mirror(config: FCModelConfig) -> bool:
    if config.decoder is None:
        return True
    hidden = [width for width, _ in reversed(expand(config.encoder))]
    return [width for width, _ in expand(config.decoder)][:-1] == hidden


@register("model", "fc", FCModelConfig)
def build_fc(config: FCModelConfig, input_shape: tuple[int, ...]) -> FCAutoencoder:
    input_size = math.prod(input_shape)
    encoder_layers = expand(config.encoder) + [(config.code_dim, config.code_activation)]
    encoder = nn.Sequential(nn.Flatten(), *mlp(input_size, encoder_layers))
    decoder, output_activation = fc_decoder(
        config.decoder, config.code_dim, input_size, config.output_activation, config.encoder
    )
    if config.tied:
        if not is_mirror(config):
            raise ConfigError("model.tied", True, "needs a decoder that mirrors the encoder (leave model.decoder null)")
        for position, block in enumerate(decoder):
            block[0] = TiedLinear(encoder[len(encoder) - 1 - position][0])
    return FCAutoencoder(
        encoder, decoder, input_shape, config.code_dim, config.code_activation, activation(output_activation)
    )
