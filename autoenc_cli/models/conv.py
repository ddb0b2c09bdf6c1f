"""Convolutional autoencoders: a conv encoder (conv blocks, max pooling, flatten) with a
fully-connected decoder (``conv``) or a mirrored transposed-convolution decoder (``conv_deconv``).

The code size is inferred from the geometry of the input and the layers; nothing is typed by hand.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

from torch import nn

from autoenc_cli.errors import ConfigError, UserError
from autoenc_cli.models.autoencoder import Autoencoder, ModelConfig
from autoenc_cli.models.fc import decoder_layers
from autoenc_cli.models.layers import LayerSpec, activation, check_activation, mlp
from autoenc_cli.registry import register
from autoenc_cli.schema import number
from autoenc_cli.schema.check import ModelFacts


@dataclass
class ConvBlockSpec:
    """``num_layers`` convolutions with ``channels`` outputs each, every one followed by ``activation``."""

    channels: int = number(8, ge=1)  # output channels of each conv layer of the block
    num_layers: int = number(1, ge=1)  # conv layers in the block, all alike
    kernel: int = number(3, ge=1)  # square kernel size
    stride: int = number(1, ge=1)  # step of the kernel
    padding: int = number(0, ge=0)  # zero padding on each side
    activation: str = "leaky_relu"  # after each conv layer (relu, leaky_relu, sigmoid, tanh, ...)

    def check(self) -> None:
        check_activation("activation", self.activation)


@dataclass
class ConvEncoderConfig(ModelConfig):
    # The classic Conv6x6 x4 (8 channels) + MaxPool2x2: 28x28 -> 8 x 4 x 4 = a 128-unit code.
    encoder: list[ConvBlockSpec] = field(default_factory=lambda: [ConvBlockSpec(channels=8, num_layers=4, kernel=6)])
    pool: int = number(2, ge=1)  # max-pooling kernel and stride after the conv stack; 1 = none
    code_activation: str = "leaky_relu"  # activation of the last conv layer, whose pooled output is the code
    output_activation: str = "sigmoid"  # of the decoder's output: sigmoid for pixels in [0, 1]

    def check(self) -> None:
        check_activation("code_activation", self.code_activation)
        check_activation("output_activation", self.output_activation)
        if not self.encoder:
            raise ConfigError("encoder", [], "give at least one conv block")

    def describe(self, input_shape: tuple[int, ...]) -> ModelFacts:
        _, pooled = plan_layers(self, input_shape)
        return ModelFacts(math.prod(pooled), self.code_activation, self.output_activation)


@dataclass
class ConvModelConfig(ConvEncoderConfig):
    name: str = "conv"
    # Fully-connected decoder layers, code side first; the last is the output layer (width null = input
    # size). null: one linear layer from the code to the image.
    decoder: Optional[list[LayerSpec]] = None

    def describe(self, input_shape: tuple[int, ...]) -> ModelFacts:
        _, pooled = plan_layers(self, input_shape)
        _, output_activation = decoder_layers(self.decoder, math.prod(input_shape), self.output_activation)
        return ModelFacts(math.prod(pooled), self.code_activation, output_activation)


@dataclass
class ConvDeconvModelConfig(ConvEncoderConfig):
    name: str = "conv_deconv"


@dataclass
class ConvLayer:
    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    padding: int
    activation: str
    in_size: tuple[int, int]
    out_size: tuple[int, int]


def conv_output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def plan_layers(
    config: ConvEncoderConfig, input_shape: tuple[int, ...]
) -> tuple[list[ConvLayer], tuple[int, int, int]]:
    """Each conv layer with its input and output sizes, and the pooled code shape; a layer whose output
    collapses to nothing is an error naming it."""
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
        is_last = position == len(flat) - 1
        layers.append(
            ConvLayer(
                channels,
                spec.channels,
                spec.kernel,
                spec.stride,
                spec.padding,
                config.code_activation if is_last else spec.activation,
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


def conv_encoder(layers: list[ConvLayer], pool: int) -> nn.Sequential:
    modules: list[nn.Module] = []
    for layer in layers:
        modules += [
            nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel, layer.stride, layer.padding),
            activation(layer.activation),
        ]
    if pool > 1:
        modules.append(nn.MaxPool2d(pool))
    return nn.Sequential(*modules, nn.Flatten())


def deconv_decoder(layers: list[ConvLayer], pooled: tuple[int, int, int]) -> nn.Sequential:
    """Mirror of the encoder: unflatten, undo the pooling (nearest upsampling to the exact size), then a
    transposed convolution per conv layer in reverse, sized back exactly with ``output_padding``."""
    modules: list[nn.Module] = [nn.Unflatten(1, pooled), nn.Upsample(size=layers[-1].out_size, mode="nearest")]
    for position, layer in enumerate(reversed(layers)):
        produced = [(out - 1) * layer.stride - 2 * layer.padding + layer.kernel for out in layer.out_size]
        output_padding = tuple(want - got for want, got in zip(layer.in_size, produced))
        modules.append(
            nn.ConvTranspose2d(
                layer.out_channels,
                layer.in_channels,
                layer.kernel,
                layer.stride,
                layer.padding,
                output_padding=output_padding,
            )
        )
        if position < len(layers) - 1:
            modules.append(activation(layers[len(layers) - 2 - position].activation))
    return nn.Sequential(*modules)


class ConvAutoencoder(Autoencoder):
    """Conv encoder (conv blocks, max pooling, flatten) and a fully-connected decoder."""

    def __init__(
        self, config: ConvModelConfig, input_shape: tuple[int, ...], code_transform: Optional[nn.Module] = None
    ) -> None:
        layers, pooled = plan_layers(config, input_shape)
        code_dim = math.prod(pooled)
        fc_layers, output_activation = decoder_layers(config.decoder, math.prod(input_shape), config.output_activation)
        super().__init__(
            conv_encoder(layers, config.pool),
            mlp(code_dim, fc_layers),
            input_shape,
            code_dim,
            config.code_activation,
            activation(output_activation),
            code_transform,
        )


class ConvDeconvAutoencoder(Autoencoder):
    """Conv encoder and a mirrored transposed-convolution decoder."""

    def __init__(
        self, config: ConvDeconvModelConfig, input_shape: tuple[int, ...], code_transform: Optional[nn.Module] = None
    ) -> None:
        layers, pooled = plan_layers(config, input_shape)
        super().__init__(
            conv_encoder(layers, config.pool),
            deconv_decoder(layers, pooled),
            input_shape,
            math.prod(pooled),
            config.code_activation,
            activation(config.output_activation),
            code_transform,
        )


register(ConvModelConfig)(ConvAutoencoder)
register(ConvDeconvModelConfig)(ConvDeconvAutoencoder)
