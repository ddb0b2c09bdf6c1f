"""Sparsity penalties added to the loss: L1 on the codes and the KL divergence to a target rate."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch

from autoenc_cli.errors import ConfigError
from autoenc_cli.registry import register
from autoenc_cli.schema import number
from autoenc_cli.schema.check import Facts
from autoenc_cli.sparsity.base import Sparsity, SparsityConfig
from autoenc_cli.sparsity.target_l0 import TargetL0Controller, TargetL0Fields, batch_l0

if TYPE_CHECKING:
    from autoenc_cli.models.autoencoder import Autoencoder, AutoencoderOutput

# Code activations whose outputs lie strictly inside (0, 1), as the KL penalty needs.
UNIT_INTERVAL_ACTIVATIONS = ("sigmoid",)


@dataclass
class L1Config(SparsityConfig, TargetL0Fields):
    name: str = "l1"
    # penalty weight (1e-3 collapses a 64-unit ReLU code to the mean on MNIST); with target_l0, its start
    lam: float = number(3e-4, ge=0)
    penalty_knob: ClassVar[str] = "lam"
    l0_field: ClassVar[str] = "target_l0"

    # (SparsityConfig comes first in the bases: its defaults would hide the target's)
    l0_asked = TargetL0Fields.l0_asked
    l0_miss_advice = TargetL0Fields.l0_miss_advice

    def check_with(self, facts: Facts) -> None:
        self.check_target_fits(facts)
        if self.target_l0 is None:
            return
        if facts.model.code_activation != "relu":
            raise ConfigError(
                "target_l0",
                self.target_l0,
                f"needs a code that is exactly zero when off, to count its l0: model.code_activation=relu (this "
                f"model's is {facts.model.code_activation}; model=sparse_fc has relu)",
            )
        if self.lam == 0:
            raise ConfigError("lam", 0, "target_l0 adapts lam by scaling it: give a starting weight > 0")


@register(L1Config)
class L1Penalty(Sparsity):
    """lam x mean over samples of the code's L1 norm; with ``target_l0``, lam adapts until l0 reaches it."""

    member_fields = ("lam", "target_l0")

    def __init__(self, config: L1Config, code_dim: int) -> None:
        super().__init__()
        self.lam, self.target_l0 = config.lam, config.target_l0
        self.adapts = config.target_l0 is not None  # (an attribute: stacks never mix the two kinds)
        if self.adapts:
            self.controller = TargetL0Controller(config.target_l0_rate)

    def penalty(self, output: "AutoencoderOutput", target: torch.Tensor, model: "Autoencoder") -> torch.Tensor:
        if not self.adapts:
            return self.lam * output.code.abs().sum(dim=1).mean()
        weighted = self.lam * self.controller.scale * output.code.abs().sum(dim=1).mean()
        self.controller.observe(batch_l0(output.code), self.target_l0)
        return weighted


@dataclass
class KLConfig(SparsityConfig):
    name: str = "kl"
    lam: float = number(0.1, ge=0)  # penalty weight
    penalty_knob: ClassVar[str] = "lam"
    rho: float = number(0.05, gt=0, lt=1)  # target mean activation of each unit

    def check_with(self, facts: Facts) -> None:
        if facts.model.code_activation not in UNIT_INTERVAL_ACTIVATIONS:
            raise ConfigError(
                "model.code_activation",
                facts.model.code_activation,
                "sparsity=kl needs codes in (0, 1): use model.code_activation=sigmoid",
                absolute=True,
            )


@register(KLConfig)
class KLPenalty(Sparsity):
    """lam x mean over units of KL(rho || rho_hat_j), rho_hat_j the unit's mean activation in the batch
    (the sparse autoencoder of Ng's CS294A notes). Not clamped: a saturated unit shows as inf."""

    member_fields = ("lam", "rho")

    def __init__(self, config: KLConfig, code_dim: int) -> None:
        super().__init__()
        self.lam, self.rho = config.lam, config.rho

    def penalty(self, output: "AutoencoderOutput", target: torch.Tensor, model: "Autoencoder") -> torch.Tensor:
        rho, rho_hat = self.rho, output.code.mean(dim=0)
        # rho is a number, or a 0-d tensor for stacked members (autoenc_cli.stacking).
        log, log1p = (torch.log, torch.log1p) if isinstance(rho, torch.Tensor) else (math.log, math.log1p)
        divergence = rho * (log(rho) - torch.log(rho_hat)) + (1 - rho) * (log1p(-rho) - torch.log1p(-rho_hat))
        return self.lam * divergence.mean()
