"""JumpReLU (Rajamanoharan et al. 2024): a learned threshold per unit and an L0 penalty, trained through
straight-through estimates of the step function's gradient.

A unit passes its value where it exceeds its threshold ``theta`` and is zero below it:
``f(z) = z * H(z - theta)``. The step ``H`` has no useful gradient, so the backward pass uses the
paper's pseudo-derivatives with a rectangle kernel ``K(u) = 1 for |u| < 1/2`` of width ``bandwidth``:

    d f / d z      = H(z - theta)                          (as a ReLU above the threshold)
    d f / d theta  = -(theta / bandwidth) K((z - theta) / bandwidth)
    d H / d theta  = -(1 / bandwidth) K((z - theta) / bandwidth),   d H / d z = 0

so the threshold learns from the reconstruction (which values are worth passing) and from the L0 penalty
``lam x mean over samples of sum_j H(z_j - theta_j)`` (which pushes it up), and the encoder from the
reconstruction only. The threshold is a plain parameter (not its log, as some implementations keep it):
Adam moves a parameter by about the learning rate per step, so a log-threshold starting at 0.01 needs
thousands of steps to reach the code's scale, and short runs never got sparse. A threshold below zero
passes every value of a ReLU code, as zero would.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Optional

import torch
from torch import nn

from autoenc_cli.registry import register
from autoenc_cli.schema import number
from autoenc_cli.schema.check import Facts
from autoenc_cli.sparsity.base import InferenceRule, Sparsity, SparsityConfig
from autoenc_cli.sparsity.target_l0 import TargetL0Controller, TargetL0Fields, batch_l0

# The threshold every unit starts at when neither initial_threshold nor a target_l0 says otherwise.
DEFAULT_THRESHOLD = 0.01

if TYPE_CHECKING:
    from autoenc_cli.models.autoencoder import Autoencoder, AutoencoderOutput


def kernel(z: torch.Tensor, theta: torch.Tensor, width: float) -> torch.Tensor:
    """The rectangle kernel K((z - theta) / width), K(u) = 1 for |u| < 1/2, at the values the encoder gave: a
    ReLU code's exact zeros are units it switched off, not values near a small threshold (the paper's kernel
    sees pre-activations, which have no mass at 0)."""
    return (((z - theta) / width).abs() < 0.5).to(z.dtype) * (z != 0).to(z.dtype)


def _threshold_gradient(grad: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """A per-sample gradient summed over the batch dimension(s) to the threshold's shape."""
    return grad.reshape(-1, *theta.shape).sum(dim=0)


class _ThresholdFunction(torch.autograd.Function):
    """What both straight-through functions keep for their backward pass: the code, the thresholds and the
    kernel's width (``setup_context`` form: runs under vmap)."""

    generate_vmap_rule = True

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Any) -> None:
        z, theta, bandwidth = inputs
        ctx.save_for_backward(z, theta)
        ctx.bandwidth = bandwidth


class JumpReLUFunction(_ThresholdFunction):
    """``z * (z > theta)`` with the straight-through gradients above."""

    @staticmethod
    def forward(z: torch.Tensor, theta: torch.Tensor, bandwidth: float) -> torch.Tensor:
        return z * (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        z, theta = ctx.saved_tensors
        width = ctx.bandwidth
        grad_z = grad * (z > theta).to(grad.dtype)
        grad_theta = grad * (-theta / width) * kernel(z, theta, width)
        return grad_z, _threshold_gradient(grad_theta, theta), None


class StepFunction(_ThresholdFunction):
    """``H(z - theta)`` (1 where a unit passes), with gradient to the threshold only."""

    @staticmethod
    def forward(z: torch.Tensor, theta: torch.Tensor, bandwidth: float) -> torch.Tensor:
        return (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        z, theta = ctx.saved_tensors
        width = ctx.bandwidth
        grad_theta = grad * (-1 / width) * kernel(z, theta, width)
        return torch.zeros_like(z), _threshold_gradient(grad_theta, theta), None


@dataclass
class JumpReLUConfig(SparsityConfig, TargetL0Fields):
    name: str = "jumprelu"
    # weight of the L0 penalty (mean active units per sample). Adam normalises each threshold's step, so only
    # the penalty's size against the reconstruction's (small, straight-through) pull matters: on MNIST lam
    # 0.001 and 1000 gave the same run. target_l0 is how to choose the sparsity
    lam: float = number(1e-3, ge=0)
    # every unit's threshold at the start, in the code's units; null: with target_l0, the one threshold that
    # leaves target_l0 units active per sample on a sample of the training data (else DEFAULT_THRESHOLD)
    initial_threshold: Optional[float] = number(None, gt=0)
    bandwidth: float = number(0.05, gt=0)  # width of the rectangle kernel of the straight-through gradients
    # the most the thresholds' log scale moves per training step (faster than L1's weight: thresholds act on
    # l0 at once, where a weight acts through the encoder's training; 0.02 overshot to 49 for a target of 8)
    target_l0_rate: float = number(0.05, gt=0, le=1)
    penalty_knob: ClassVar[str] = "lam"
    l0_field: ClassVar[str] = "target_l0"
    zeroes_codes: ClassVar[bool] = True

    # (SparsityConfig comes first in the bases: its defaults would hide the target's)
    l0_asked = TargetL0Fields.l0_asked
    l0_miss_advice = TargetL0Fields.l0_miss_advice

    def check_with(self, facts: Facts) -> None:
        self.check_target_fits(facts)

    def collapse_advice(self, direction: str) -> str:
        # Adam scales each threshold's step to about optimizer.lr: the weight decides little (see lam's comment).
        return "set a target_l0 (l0=N): under Adam the thresholds move about optimizer.lr per step whatever lam is"


@register(JumpReLUConfig)
class JumpReLU(Sparsity):
    """A learned threshold per code unit and an L0 penalty; with ``target_l0``, the thresholds are scaled
    together (``TargetL0Controller``) until the l0 reaches it."""

    member_fields = ("lam", "target_l0")

    def __init__(self, config: JumpReLUConfig, code_dim: int) -> None:
        super().__init__()
        self.lam, self.target_l0, self.bandwidth = config.lam, config.target_l0, config.bandwidth
        self.adapts = config.target_l0 is not None  # (an attribute: stacks never mix the two kinds)
        start = DEFAULT_THRESHOLD if config.initial_threshold is None else config.initial_threshold
        self.threshold = nn.Parameter(torch.full((code_dim,), start))
        self.starts_from_data = config.initial_threshold is None and self.adapts
        if self.adapts:
            self.controller = TargetL0Controller(config.target_l0_rate)

    @property
    def wants_codes(self) -> bool:
        return self.starts_from_data

    @torch.no_grad()
    def initialise_from_codes(self, raw_code: torch.Tensor) -> None:
        """Every threshold at the value that keeps target_l0 units per sample of ``raw_code`` on average (the
        threshold batch top-k at that l0 would have): training starts at the target, not from a dense code
        whose thresholds move only about optimizer.lr per step."""
        if not self.starts_from_data:
            return
        kept = min(max(round(self.target_l0 * raw_code.shape[0]), 1), raw_code.numel())
        self.threshold.fill_(float(raw_code.flatten().topk(kept).values[-1]))

    def thresholds(self) -> torch.Tensor:
        """Each unit's threshold as applied: the learned one, scaled by the target-l0 controller if any."""
        return self.threshold * self.controller.scale if self.adapts else self.threshold

    def inference_rule(self) -> InferenceRule:
        return InferenceRule(threshold=self.thresholds().detach().clone())

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        return JumpReLUFunction.apply(code, self.thresholds(), self.bandwidth)

    def penalty(self, output: "AutoencoderOutput", target: torch.Tensor, model: "Autoencoder") -> torch.Tensor:
        l0 = StepFunction.apply(output.raw_code, self.thresholds(), self.bandwidth).sum(dim=1).mean()
        if self.adapts:
            self.controller.observe(batch_l0(output.code), self.target_l0)
        return self.lam * l0

    def extra_repr(self) -> str:
        return f"bandwidth={self.bandwidth}" + (f", target_l0={self.target_l0}" if self.adapts else "")
