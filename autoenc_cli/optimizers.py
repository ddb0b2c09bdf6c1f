"""Optimizers (the ``optimizer`` group)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Iterable

import torch
from torch import nn

from autoenc_cli.errors import ConfigError
from autoenc_cli.registry import register
from autoenc_cli.schema import GroupConfig, number


@dataclass
class OptimizerConfig(GroupConfig):
    group: ClassVar[str] = "optimizer"
    # Whether each weight's update depends only on that weight's gradient and state (no norms or other
    # reductions over a tensor): then a stacked sweep (autoenc_cli.stacking) may step many runs' weights
    # as one tensor. An option that does not say so trains alone in a stacked sweep.
    elementwise_update: ClassVar[bool] = False


@dataclass
class AdamConfig(OptimizerConfig):
    elementwise_update: ClassVar[bool] = True
    name: str = "adam"
    lr: float = number(1e-3, gt=0)  # learning rate (the schedule changes it from here)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # decay of the gradient's moments
    eps: float = number(1e-8, gt=0)  # added to the update's denominator, for stability
    weight_decay: float = number(0.0, ge=0)  # L2 penalty added to the gradient

    def check(self) -> None:
        if len(self.betas) != 2 or not all(0 <= beta < 1 for beta in self.betas):
            raise ConfigError("betas", self.betas, "two numbers in [0, 1)")


@dataclass
class AdamWConfig(AdamConfig):
    """Adam with decoupled weight decay (Loshchilov & Hutter 2019): the weights shrink by lr x weight_decay
    each step, apart from the gradient's adaptive scaling, which regularises where Adam's L2 term does not."""

    name: str = "adamw"
    weight_decay: float = number(1e-2, ge=0)  # decoupled weight decay (AdamW)


@dataclass
class SGDConfig(OptimizerConfig):
    elementwise_update: ClassVar[bool] = True
    name: str = "sgd"
    lr: float = number(0.1, gt=0)  # learning rate (the schedule changes it from here)
    momentum: float = number(0.9, ge=0, lt=1)  # of the update
    nesterov: bool = False  # Nesterov momentum
    weight_decay: float = number(0.0, ge=0)  # L2 penalty added to the gradient

    def check(self) -> None:
        if self.nesterov and self.momentum == 0:
            raise ConfigError("nesterov", True, "needs momentum > 0")


# Devices with PyTorch's fused optimizer kernels. Fused: one kernel per step instead of several per
# parameter, and each element's update computed alike however the parameters are grouped, which is
# what lets a stacked sweep's member (autoenc_cli.stacking) step exactly as its separate run does.
FUSED_DEVICES = ("cpu", "cuda", "mps")


def fused(parameters: list[nn.Parameter]) -> dict[str, bool]:
    devices = {parameter.device.type for parameter in parameters}
    return {"fused": True} if parameters and devices <= set(FUSED_DEVICES) else {}


@register(AdamConfig)
def adam(config: AdamConfig, parameters: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    parameters = list(parameters)
    return torch.optim.Adam(
        parameters,
        lr=config.lr,
        betas=tuple(config.betas),
        eps=config.eps,
        weight_decay=config.weight_decay,
        **fused(parameters),
    )


@register(AdamWConfig)
def adamw(config: AdamWConfig, parameters: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    parameters = list(parameters)
    return torch.optim.AdamW(
        parameters,
        lr=config.lr,
        betas=tuple(config.betas),
        eps=config.eps,
        weight_decay=config.weight_decay,
        **fused(parameters),
    )


@register(SGDConfig)
def sgd(config: SGDConfig, parameters: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    parameters = list(parameters)
    return torch.optim.SGD(
        parameters,
        lr=config.lr,
        momentum=config.momentum,
        nesterov=config.nesterov,
        weight_decay=config.weight_decay,
        **fused(parameters),
    )
