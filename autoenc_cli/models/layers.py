"""Layer descriptors, the activations they may name, and the tied linear layer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from autoenc_cli.errors import ConfigError
from autoenc_cli.schema import number

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "linear": nn.Identity,
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "elu": nn.ELU,
    "softplus": nn.Softplus,
}


def activation(name: str) -> nn.Module:
    return ACTIVATIONS[name]()


def activation_name(module: nn.Module) -> str:
    return next(name for name, kind in ACTIVATIONS.items() if type(module) is kind)


def check_activation(key: str, name: str) -> None:
    if name not in ACTIVATIONS:
        raise ConfigError(key, name, f"choose one of {', '.join(sorted(ACTIVATIONS))}")


@dataclass
class LayerSpec:
    """``num_layers`` fully-connected layers of ``width`` units, each followed by ``activation``.

    In an explicit decoder the last layer's ``width`` may be left null: it is the data's input size.
    """

    width: Optional[int] = number(None, ge=1)  # units of each layer; null: the layer's natural size
    num_layers: int = number(1, ge=1)  # layers of this width, all alike
    activation: str = "leaky_relu"  # after each layer (relu, leaky_relu, sigmoid, tanh, linear, ...)

    def check(self) -> None:
        check_activation("activation", self.activation)


def expand(specs: Iterable[LayerSpec]) -> list[tuple[Optional[int], str]]:
    """Flatten descriptors into one (width, activation) pair per layer."""
    return [(spec.width, spec.activation) for spec in specs for _ in range(spec.num_layers)]


def mlp(in_features: int, layers: list[tuple[int, str]]) -> nn.Sequential:
    """One block (Linear, activation) per (width, activation), chained from ``in_features``.

    Blocks, not a flat list of modules, so layer-wise training can slice the stack layer by layer.
    """
    blocks: list[nn.Module] = []
    for width, activation_name in layers:
        blocks.append(nn.Sequential(nn.Linear(in_features, width), activation(activation_name)))
        in_features = width
    return nn.Sequential(*blocks)


class TiedLinear(nn.Module):
    """A decoder layer that uses the transpose of an encoder layer's weight, with a bias of its own.

    The encoder layer is held outside the module tree, so the shared weight is registered (and counted,
    saved and optimised) once, as the encoder's.
    """

    def __init__(self, source: nn.Linear) -> None:
        super().__init__()
        self._source = (source,)
        self.bias = nn.Parameter(torch.zeros(source.in_features))

    @property
    def weight(self) -> torch.Tensor:
        return self._source[0].weight.t()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def untied(self) -> nn.Linear:
        """An ordinary layer with a copy of the transposed weight and this bias: bit-identical outputs.

        The copy keeps the transposed view's memory layout (a clone of the encoder weight, then
        transposed), so ``F.linear`` sees the same values with the same strides and runs the same
        kernel: exactness by construction, on any torch version and device, not by luck of the kernel.
        """
        source = self._source[0]
        layer = nn.Linear(source.out_features, source.in_features, device=source.weight.device)
        layer.weight = nn.Parameter(source.weight.detach().clone().t(), requires_grad=source.weight.requires_grad)
        layer.bias = nn.Parameter(self.bias.detach().clone(), requires_grad=self.bias.requires_grad)
        return layer

    def extra_repr(self) -> str:
        return f"tied to Linear({self._source[0].in_features}, {self._source[0].out_features}) transposed"
