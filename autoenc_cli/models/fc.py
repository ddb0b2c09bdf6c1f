"""Fully-connected autoencoders built from layer descriptors, with tied weights and layer-wise stages."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

from torch import nn

from autoenc_cli.errors import ConfigError
from autoenc_cli.models.autoencoder import Autoencoder, ModelConfig
from autoenc_cli.models.layers import (
    LayerSpec,
    TiedLinear,
    activation,
    activation_name,
    check_activation,
    expand,
    mlp,
)
from autoenc_cli.registry import register
from autoenc_cli.schema import number
from autoenc_cli.schema.check import ModelFacts


@dataclass
class FCModelConfig(ModelConfig):
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
        if self.tied and not self.is_mirror():
            raise ConfigError("tied", True, "needs a decoder that mirrors the encoder (leave model.decoder null)")

    def is_mirror(self) -> bool:
        if self.decoder is None:
            return True
        hidden = [width for width, _ in reversed(expand(self.encoder))]
        return [width for width, _ in expand(self.decoder)][:-1] == hidden

    def describe(self, input_shape: tuple[int, ...]) -> ModelFacts:
        _, output_activation = decoder_layers(self.decoder, math.prod(input_shape), self.output_activation)
        widths = tuple(width for width, _ in expand(self.encoder)) + (self.code_dim,)
        return ModelFacts(self.code_dim, self.code_activation, output_activation, widths, self.tied)


@dataclass
class SparseFCModelConfig(FCModelConfig):
    """784-64-784 with a ReLU code, so inactive units are exactly zero: the base of sparse autoencoders."""

    name: str = "sparse_fc"
    code_activation: str = "relu"


def decoder_layers(
    specs: Optional[list[LayerSpec]], input_size: int, output_activation: str, mirror_of: Sequence[LayerSpec] = ()
) -> tuple[list[tuple[int, str]], str]:
    """The decoder's (width, activation) layers, its last producing logits of the input size, and the
    name of the output activation.

    With ``specs`` null the hidden layers mirror ``mirror_of`` (an encoder) and ``output_activation``
    applies. Explicit ``specs`` list every layer, code side first; the last is the output layer, whose
    width must be the data's input size (or null) and whose activation is the output's.
    """
    if specs is None:
        return [*reversed(expand(mirror_of)), (input_size, "linear")], output_activation
    layers = expand(specs)
    last_width, last_activation = layers[-1]
    if last_width is not None and last_width != input_size:
        raise ConfigError(
            f"decoder[{len(specs) - 1}].width",
            last_width,
            f"the decoder must end at the data's input size {input_size} (or leave it null)",
        )
    return [*layers[:-1], (input_size, "linear")], last_activation


class FCAutoencoder(Autoencoder):
    """A fully-connected autoencoder whose decoder mirrors its encoder layer for layer.

    ``encoder`` is (Flatten, block 1, ..., block n) and ``decoder`` (block n', ..., block 1'), block i'
    mapping layer i's output back to layer i's input. ``stage(depth)`` is the view that greedy
    layer-wise training trains and evaluates: the outer ``depth`` layer pairs, with their own code.
    """

    def __init__(
        self, config: FCModelConfig, input_shape: tuple[int, ...], code_transform: Optional[nn.Module] = None
    ) -> None:
        input_size = math.prod(input_shape)
        encoder_layers = expand(config.encoder) + [(config.code_dim, config.code_activation)]
        encoder = nn.Sequential(nn.Flatten(), *mlp(input_size, encoder_layers))
        layers, output_activation = decoder_layers(config.decoder, input_size, config.output_activation, config.encoder)
        decoder = mlp(config.code_dim, layers)
        if config.tied:
            for position, block in enumerate(decoder):
                block[0] = TiedLinear(encoder[len(encoder) - 1 - position][0])
        super().__init__(
            encoder,
            decoder,
            input_shape,
            config.code_dim,
            config.code_activation,
            activation(output_activation),
            code_transform,
        )

    @property
    def num_layers(self) -> int:
        return len(self.encoder) - 1

    @property
    def is_tied(self) -> bool:
        return any(isinstance(module, TiedLinear) for module in self.decoder.modules())

    def layer_pair(self, index: int) -> tuple[nn.Module, nn.Module]:
        """Encoder layer ``index`` (0 = next to the input) and its mirror decoder layer."""
        return self.encoder[1 + index], self.decoder[self.num_layers - 1 - index]

    def stage(self, depth: int) -> "LayerwiseStage":
        return LayerwiseStage(self, depth)

    def untie(self) -> None:
        """Give every tied decoder layer its own copy of the transposed weight, keeping its bias and
        every output bit for bit (the schedule's switch from layer-wise stages to fine-tuning)."""
        for block in self.decoder:
            if isinstance(block[0], TiedLinear):
                block[0] = block[0].untied()


register(FCModelConfig)(FCAutoencoder)
register(SparseFCModelConfig)(FCAutoencoder)


class LayerwiseStage(Autoencoder):
    """The outer ``depth`` layer pairs of a fully-connected autoencoder, as an autoencoder of its own:
    its code is layer ``depth``'s output (no sparsity transform), its target the input image.

    The layers are the full model's (shared, not copied), so training the stage trains the model.
    """

    def __init__(self, model: FCAutoencoder, depth: int) -> None:
        if not 1 <= depth <= model.num_layers:
            raise ValueError(f"depth must be in 1..{model.num_layers}; got {depth}")
        code_block = model.encoder[depth]
        super().__init__(
            nn.Sequential(*model.encoder[: 1 + depth]),
            nn.Sequential(*model.decoder[model.num_layers - depth :]),
            model.input_shape,
            code_block[0].out_features,
            activation_name(code_block[1]),
            model.output_activation,
        )
        self.depth = depth

    def extra_repr(self) -> str:
        return f"layer-wise stage: the outer {self.depth} layer pairs"
