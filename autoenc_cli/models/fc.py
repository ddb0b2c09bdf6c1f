"""Fully-connected autoencoders built from layer descriptors."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

from torch import nn

from autoenc_cli.errors import ConfigError
from autoenc_cli.models.autoencoder import Autoencoder
from autoenc_cli.models.layers import LayerSpec, activation, check_activation, expand, mlp
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
            raise ConfigError(f"decoder[{len(self.decoder or []) - 1}].num_layers", last.num_layers, "must be 1 when width is null")


def decoder_layers(config: FCModelConfig, input_size: int) -> list[tuple[int, str]]:
    """The decoder's (width, activation) per layer: mirrored, or explicit and checked to end at the input."""
    if config.decoder is None:
        hidden = [(width, act) for width, act in reversed(expand(config.encoder))]
        return hidden + [(input_size, config.output_activation)]
    layers = expand(config.decoder)
    last_width = layers[-1][0]
    if last_width is not None and last_width != input_size:
        raise ConfigError(
            f"model.decoder[{len(config.decoder) - 1}].width",
            last_width,
            f"the decoder must end at the data's input size {input_size} (or leave it null)",
        )
    layers[-1] = (input_size, layers[-1][1])
    # The output layer's activation is the model's output activation (kept apart for logit losses).
    return layers


@register("model", "fc", FCModelConfig)
def build_fc(config: FCModelConfig, input_shape: tuple[int, ...]) -> Autoencoder:
    input_size = math.prod(input_shape)
    encoder = nn.Sequential(
        nn.Flatten(), mlp(input_size, expand(config.encoder) + [(config.code_dim, config.code_activation)])
    )
    layers = decoder_layers(config, input_size)
    output_activation = layers[-1][1] if config.decoder is not None else config.output_activation
    decoder = mlp(config.code_dim, [*layers[:-1], (input_size, "linear")])
    return Autoencoder(encoder, decoder, input_shape, config.code_dim, config.code_activation, activation(output_activation))
