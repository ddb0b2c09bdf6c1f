"""Layer descriptors and the activations they may name."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional

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
    """Linear + activation for each (width, activation), chained from ``in_features``."""
    modules: list[nn.Module] = []
    for width, activation_name in layers:
        modules += [nn.Linear(in_features, width), activation(activation_name)]
        in_features = width
    return nn.Sequential(*modules)
