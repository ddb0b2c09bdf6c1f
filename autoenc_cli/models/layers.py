"""Layer descriptors and the activations they may name."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from autoenc_cli.errors import ConfigError
from autoenc_cli.registry import REGISTRY, register
from autoenc_cli.schema import number

for _name, _module in {
    "linear": nn.Identity,
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "elu": nn.ELU,
    "softplus": nn.Softplus,
}.items():
    register("activation", _name)(_module)


def activation(name: str) -> nn.Module:
    return REGISTRY.entry("activation", name).builder()


def check_activation(key: str, name: str) -> None:
    if name not in REGISTRY.names("activation"):
        raise ConfigError(key, name, f"choose one of {', '.join(REGISTRY.names('activation'))}")


@dataclass
class LayerSpec:
    """``num_layers`` fully-connected layers of ``width`` units, each followed by ``activation``.

    In an explicit decoder the last layer's ``width`` may be left null: it is the data's input size.
    """

    width: Optional[int] = number(None, ge=1)
    num_layers: int = number(1, ge=1)
    activation: str = "leaky_relu"

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
        return F.linear(x, self._source[0].weight.t(), self.bias)

    def untied(self) -> nn.Linear:
        """An ordinary layer with a copy of the transposed weight and this bias: the same outputs."""
        source = self._source[0]
        layer = nn.Linear(
            source.out_features, source.in_features, device=source.weight.device, dtype=source.weight.dtype
        )
        with torch.no_grad():
            layer.weight.copy_(source.weight.t())
            layer.bias.copy_(self.bias)
        return layer

    def extra_repr(self) -> str:
        return f"tied to Linear({self._source[0].in_features}, {self._source[0].out_features}) transposed"
