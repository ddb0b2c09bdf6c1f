"""Reaching a chosen l0 (``target_l0``, for L1 and JumpReLU): the knob that sets the option's sparsity
adapts while training, so the user names the sparsity they want instead of searching for the coefficient
that gives it (a fixed coefficient gives an l0 that depends on the data, the width and the training length,
and small changes of it swing the code from dense to all-dead).

The knob is scaled by ``exp(s)``: each training step moves ``s`` by ``rate x log(l0 / target)`` (clamped to
one ``rate`` per step), an integral controller on the log of the knob. It settles where the batches' l0
equals the target, with no host sync (``s`` is a buffer, saved with the model, so a resumed run continues
from the scale it had). L1 scales its weight: the encoder follows a larger weight at the optimizer's full
rate. JumpReLU scales its thresholds, not its penalty weight: a threshold moves only about optimizer.lr
per step under Adam whatever the weight, far slower than the codes grow early in training, so a weight
alone never caught up (measured: l0 58-63 of 64 for targets 5-32 on MNIST).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from autoenc_cli.errors import ConfigError
from autoenc_cli.schema import number
from autoenc_cli.schema.check import Facts


@dataclass
class TargetL0Fields:
    """The knobs of an option whose penalty can aim at an l0 (mixed into L1Config and JumpReLUConfig)."""

    # active code units per sample to reach: the penalty weight then adapts while training, starting at lam
    target_l0: Optional[float] = number(None, gt=0)
    target_l0_rate: float = number(0.02, gt=0, le=1)  # the most the adapted knob's log moves per training step

    def l0_asked(self) -> Optional[float]:
        return self.target_l0

    def l0_miss_advice(self, name: str) -> str:
        return f"train longer, or raise sparsity.{name}.target_l0_rate={self.target_l0_rate:g}"

    def check_target_fits(self, facts: Facts) -> None:
        if self.target_l0 is not None and self.target_l0 >= facts.model.code_dim:
            raise ConfigError(
                "target_l0", self.target_l0, f"must be below the code size model.code_dim={facts.model.code_dim}"
            )


# Added to l0 and target before their ratio, so an all-zero batch gives a finite step.
SMOOTHING = 0.5


# The log of the scale stays within +-LOG_SCALE_BOUND (e^20): beyond, it would only wind up.
LOG_SCALE_BOUND = 20.0


class TargetL0Controller(nn.Module):
    """A scale ``exp(log_scale)`` on the knob that sets an option's sparsity (L1's weight, JumpReLU's
    thresholds), moved after each training step towards the scale at which the batches' l0 is the target."""

    def __init__(self, rate: float) -> None:
        super().__init__()
        self.rate = rate
        self.register_buffer("log_scale", torch.zeros(()))

    @property
    def scale(self) -> torch.Tensor:
        return self.log_scale.exp()

    @torch.no_grad()
    def observe(self, l0: torch.Tensor, target: float | torch.Tensor) -> None:
        """In training, move the scale by a batch's ``l0`` (up while it is above ``target``)."""
        if not self.training:
            return
        error = torch.log((l0 + SMOOTHING) / (target + SMOOTHING)).clamp(-1, 1)
        self.log_scale.copy_((self.log_scale + self.rate * error).clamp(-LOG_SCALE_BOUND, LOG_SCALE_BOUND))


def batch_l0(code: torch.Tensor) -> torch.Tensor:
    """Mean number of nonzero units per sample of a batch of codes (no gradient)."""
    return (code.detach() != 0).sum(dim=1).to(code.dtype).mean()
