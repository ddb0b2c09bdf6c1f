"""Convolutional autoencoders: a conv encoder (conv blocks, optional batch norm, max pooling, flatten,
optional linear code layer) with a fully-connected decoder or a mirrored transposed-convolution decoder.

``model=conv`` and ``model=conv_deconv`` are one model; they differ only in their default decoder
(``decoder_type``). Without ``code_dim`` the code size is inferred from the geometry of the input and
the layers (the pooled conv output is the code); nothing is typed by hand.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, Optional

from torch import nn

from autoenc_cli.errors import ConfigError, UserError
from autoenc_cli.models.autoencoder import Autoencoder, ModelConfig
from autoenc_cli.models.fc import decoder_layers
from autoenc_cli.models.layers import LayerSpec, activation, check_activation, mlp
from autoenc_cli.registry import register
from autoenc_cli.schema import choice, number
from autoenc_cli.schema.check import ModelFacts

NORMS = ("none", "batch")
DECODER_TYPES = ("fc", "deconv")


@dataclass
class ConvBlockSpec:
    """``num_layers`` convolutions with ``channels`` outputs each, every one followed by ``activation``."""

    channels: int = number(8, ge=1)  # output channels of each conv layer of the block
    num_layers: int = number(1, ge=1)  # conv layers in the block, all alike
    kernel: int = number(3, ge=1)  # square kernel size
    stride: int = number(1, ge=1)  # step of the kernel
    padding: int = number(0, ge=0)  # zero padding on each side
    activation: str = "leaky_relu"  # after each conv layer (relu, leaky_relu, sigmoid, tanh, ...)
    # none | batch: batch normalisation between each conv layer and its activation (mirrored in a
    # deconv decoder); it steadies training of wide, deep stacks.
    norm: str = choice("none", NORMS)
    # Added after runs were saved without it: left out of the model fingerprint while at its default.
    added_fields: ClassVar[tuple[str, ...]] = ("norm",)

    def check(self) -> None:
        check_activation("activation", self.activation)


def modern_blocks() -> list[ConvBlockSpec]:
    """Two stride-2 3x3 conv blocks with batch norm (32, 64 channels): 28x28 -> 64x7x7."""
    return [
        ConvBlockSpec(channels=32, kernel=3, stride=2, padding=1, norm="batch"),
        ConvBlockSpec(channels=64, kernel=3, stride=2, padding=1, norm="batch"),
    ]


# The tutorial's design, every conv model's default before code_dim, decoder_type and norm existed:
# Conv6x6 x4 (8 channels) + MaxPool2x2, the pooled 8x4x4 output as the code, a LeakyReLU code.
TUTORIAL_DESIGN = {
    "encoder": [{"channels": 8, "num_layers": 4, "kernel": 6, "stride": 1, "padding": 0, "activation": "leaky_relu"}],
    "pool": 2,
    "code_dim": None,
    "code_activation": "leaky_relu",
}


@dataclass
class ConvModelConfig(ModelConfig):
    name: str = "conv"
    # Conv blocks, input side first (default: two stride-2 blocks with batch norm, 28x28 -> 64x7x7).
    encoder: list[ConvBlockSpec] = field(default_factory=modern_blocks)
    pool: int = number(1, ge=1)  # max-pooling kernel and stride after the conv stack; 1 = none
    # Units of a linear code layer on the flattened conv features. null: no such layer, the pooled conv
    # output is the code (its size follows from the geometry).
    code_dim: Optional[int] = number(128, ge=1)
    # Of the code: the code layer's, or with code_dim null the last conv layer's.
    code_activation: str = "linear"
    # fc: fully-connected layers from the code to the image (``decoder``); deconv: the encoder mirrored,
    # transposed convolutions sized back exactly to the input (with code_dim, a linear layer first).
    decoder_type: str = choice("deconv", DECODER_TYPES)
    # decoder_type=fc only: fully-connected decoder layers, code side first; the last is the output layer
    # (width null = input size). null: one linear layer from the code to the image.
    decoder: Optional[list[LayerSpec]] = None
    output_activation: str = "sigmoid"  # of the decoder's output: sigmoid for pixels in [0, 1]
    # Runs saved before this design were the tutorial's with a fully-connected decoder: what a saved config
    # without a key loads with (code_dim, decoder_type), and what their fingerprints left out.
    former_defaults: ClassVar[dict] = {**TUTORIAL_DESIGN, "decoder_type": "fc"}

    def check(self) -> None:
        check_activation("code_activation", self.code_activation)
        check_activation("output_activation", self.output_activation)
        if not self.encoder:
            raise ConfigError("encoder", [], "give at least one conv block")
        if self.decoder is not None and self.decoder_type != "fc":
            raise ConfigError(
                "decoder",
                [dict(vars(spec)) for spec in self.decoder],
                f"fully-connected decoder layers need decoder_type=fc, not {self.decoder_type}; leave it null",
            )

    def describe(self, input_shape: tuple[int, ...]) -> ModelFacts:
        _, pooled = plan_layers(self, input_shape)
        output_activation = self.output_activation
        if self.decoder_type == "fc":
            _, output_activation = decoder_layers(self.decoder, math.prod(input_shape), self.output_activation)
        return ModelFacts(self.code_dim or math.prod(pooled), self.code_activation, output_activation)


def fully_convolutional_blocks() -> list[ConvBlockSpec]:
    """The modern blocks and a third stride-2 block of 8 channels: 28x28 -> an 8x4x4 map, the code."""
    return [*modern_blocks(), ConvBlockSpec(channels=8, kernel=3, stride=2, padding=1)]


@dataclass
class ConvDeconvModelConfig(ConvModelConfig):
    """The same model, fully convolutional by default: the last block's (spatial) output is the code, decoded
    by the blocks mirrored in transposed convolutions; no dense layer."""

    name: str = "conv_deconv"
    encoder: list[ConvBlockSpec] = field(default_factory=fully_convolutional_blocks)
    code_dim: Optional[int] = number(None, ge=1)
    former_defaults: ClassVar[dict] = {**TUTORIAL_DESIGN, "decoder_type": "deconv"}


@dataclass
class ConvLayer:
    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    padding: int
    activation: str
    norm: str
    in_size: tuple[int, int]
    out_size: tuple[int, int]


def conv_output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def plan_layers(config: ConvModelConfig, input_shape: tuple[int, ...]) -> tuple[list[ConvLayer], tuple[int, int, int]]:
    """Each conv layer with its input and output sizes, and the pooled feature shape; a layer whose
    output collapses to nothing is an error naming it."""
    if len(input_shape) != 3:
        raise ConfigError("name", config.name, f"needs images of shape C x H x W; the data gives {tuple(input_shape)}")
    channels, height, width = input_shape
    flat = [(block_index, spec) for block_index, spec in enumerate(config.encoder) for _ in range(spec.num_layers)]
    layers = []
    for position, (block_index, spec) in enumerate(flat):
        out = tuple(conv_output_size(size, spec.kernel, spec.stride, spec.padding) for size in (height, width))
        if min(out) < 1:
            raise UserError(
                f"model.encoder[{block_index}]: conv layer {position + 1} (kernel {spec.kernel}, stride {spec.stride}, "
                f"padding {spec.padding}) maps {height}x{width} to {out[0]}x{out[1]}; "
                "use fewer or smaller layers, or padding"
            )
        # Without a code layer, the last conv layer's (pooled) output is the code.
        is_code = position == len(flat) - 1 and config.code_dim is None
        layers.append(
            ConvLayer(
                channels,
                spec.channels,
                spec.kernel,
                spec.stride,
                spec.padding,
                config.code_activation if is_code else spec.activation,
                spec.norm,
                (height, width),
                out,
            )
        )
        channels, (height, width) = spec.channels, out
    if config.pool > 1 and min(height, width) < config.pool:
        raise ConfigError(
            "pool", config.pool, f"the conv output is only {height}x{width}; pool at most {min(height, width)}"
        )
    pooled = (channels, height // config.pool, width // config.pool)
    return layers, pooled


def normalised(conv: nn.Module, channels: int, norm: str, activation_name: str) -> list[nn.Module]:
    """A conv (or transposed conv) layer, its batch norm if asked for, and its activation."""
    return [conv, *([nn.BatchNorm2d(channels)] if norm == "batch" else []), activation(activation_name)]


def conv_encoder(layers: list[ConvLayer], pool: int, code_dim: Optional[int], code_activation: str) -> nn.Sequential:
    modules: list[nn.Module] = []
    for layer in layers:
        conv = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel, layer.stride, layer.padding)
        modules += normalised(conv, layer.out_channels, layer.norm, layer.activation)
    if pool > 1:
        modules.append(nn.MaxPool2d(pool))
    modules.append(nn.Flatten())
    if code_dim is not None:
        features = layers[-1].out_channels * math.prod(size // pool for size in layers[-1].out_size)
        modules += [nn.Linear(features, code_dim), activation(code_activation)]
    return nn.Sequential(*modules)


def deconv_decoder(layers: list[ConvLayer], pooled: tuple[int, int, int], code_dim: Optional[int]) -> nn.Sequential:
    """Mirror of the encoder: (with a code layer, a linear layer back to the features), unflatten, undo the
    pooling (nearest upsampling to the exact size), then a transposed convolution per conv layer in reverse,
    sized back exactly with ``output_padding``."""
    modules: list[nn.Module] = []
    if code_dim is not None:
        modules += [nn.Linear(code_dim, math.prod(pooled)), activation(layers[-1].activation)]
    modules += [nn.Unflatten(1, pooled), nn.Upsample(size=layers[-1].out_size, mode="nearest")]
    for position, layer in enumerate(reversed(layers)):
        produced = [(out - 1) * layer.stride - 2 * layer.padding + layer.kernel for out in layer.out_size]
        output_padding = tuple(want - got for want, got in zip(layer.in_size, produced))
        deconv = nn.ConvTranspose2d(
            layer.out_channels,
            layer.in_channels,
            layer.kernel,
            layer.stride,
            layer.padding,
            output_padding=output_padding,
        )
        if position == len(layers) - 1:
            modules.append(deconv)  # the output layer: logits, no norm or activation
        else:
            below = layers[len(layers) - 2 - position]  # the encoder layer whose output this one rebuilds
            modules += normalised(deconv, layer.in_channels, below.norm, below.activation)
    return nn.Sequential(*modules)


class ConvAutoencoder(Autoencoder):
    """Conv encoder (conv blocks, max pooling, flatten, optional linear code layer) and a
    fully-connected or mirrored transposed-convolution decoder."""

    def __init__(
        self, config: ConvModelConfig, input_shape: tuple[int, ...], code_transform: Optional[nn.Module] = None
    ) -> None:
        layers, pooled = plan_layers(config, input_shape)
        code_dim = config.code_dim or math.prod(pooled)
        if config.decoder_type == "deconv":
            decoder, output_activation = deconv_decoder(layers, pooled, config.code_dim), config.output_activation
        else:
            fc_layers, output_activation = decoder_layers(
                config.decoder, math.prod(input_shape), config.output_activation
            )
            decoder = mlp(code_dim, fc_layers)
        super().__init__(
            conv_encoder(layers, config.pool, config.code_dim, config.code_activation),
            decoder,
            input_shape,
            code_dim,
            config.code_activation,
            activation(output_activation),
            code_transform,
        )


register(ConvModelConfig)(ConvAutoencoder)
register(ConvDeconvModelConfig)(ConvAutoencoder)
