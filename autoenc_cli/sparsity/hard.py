"""Hard sparsity: keep the largest code values and zero the rest, along samples, units or the batch.

All three options share one autograd function: a top-k over one dimension of a (possibly reshaped)
code tensor, a boolean mask built with ``scatter``, and a backward pass that lets gradients through
the kept entries only. Everything is batched; there are no Python loops over samples or units.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Optional

import torch

from autoenc_cli.errors import ConfigError
from autoenc_cli.registry import register
from autoenc_cli.schema import number
from autoenc_cli.schema.check import Facts
from autoenc_cli.sparsity.auxk import AuxKFields, AuxKLoss, RevivesDeadUnits
from autoenc_cli.sparsity.base import InferenceRule, Sparsity, SparsityConfig


class KeepTopK(torch.autograd.Function):
    """``x`` with all but the ``k`` largest entries along ``dim`` set to zero.

    Ties are broken by ``torch.topk``, which is deterministic for a given input and device. Only the
    kept indices are saved for the backward pass (k per row, not a dense mask). Written in the
    ``setup_context`` form so it also runs under ``torch.func.vmap`` (stacked sweeps).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor, k: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
        values, indices = x.topk(k, dim=dim, sorted=False)
        return torch.zeros_like(x).scatter(dim, indices, values), indices

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(output[1])
        ctx.dim = inputs[2]

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor, _: Any) -> tuple[Optional[torch.Tensor], None, None]:
        (indices,) = ctx.saved_tensors
        kept = grad_output.gather(ctx.dim, indices)
        return torch.zeros_like(grad_output).scatter(ctx.dim, indices, kept), None, None


def keep_top_k(x: torch.Tensor, k: int | torch.Tensor, dim: int, largest: Optional[int] = None) -> torch.Tensor:
    """``x`` with all but its ``k`` largest entries along ``dim`` zeroed. ``k`` is a number, or a 0-d tensor
    when stacked members each keep their own (``autoenc_cli.stacking``), at most ``largest``: then the
    ``largest`` top entries are ranked and those ranked below k kept (the same entries, the same gradients)."""
    if not isinstance(k, torch.Tensor):
        return KeepTopK.apply(x, min(k, x.shape[dim]), dim)[0]
    values, indices = x.topk(min(largest or x.shape[dim], x.shape[dim]), dim=dim)
    shape = [-1 if axis == dim % x.dim() else 1 for axis in range(x.dim())]
    ranks = torch.arange(values.shape[dim], device=x.device).view(shape)
    return torch.zeros_like(x).scatter(dim, indices, values * (ranks < k))


def rounded(value: float | torch.Tensor) -> int | torch.Tensor:
    """Python's round (half to even) for a number, or for a stacked member's 0-d tensor."""
    return torch.round(value) if isinstance(value, torch.Tensor) else round(value)


def check_k_fits(k: int, facts: Facts) -> None:
    if k > facts.model.code_dim:
        raise ConfigError("k", k, f"must be <= the code size model.code_dim={facts.model.code_dim}")


@dataclass
class TopKConfig(SparsityConfig, AuxKFields):
    name: str = "topk"
    k: int = number(16, ge=1)  # code units kept per sample
    k_anneal_steps: int = number(0, ge=0)  # training steps over which k falls from the code size to k
    l0_field: ClassVar[str] = "k"
    zeroes_codes: ClassVar[bool] = True

    def check_with(self, facts: Facts) -> None:
        check_k_fits(self.k, facts)


@register(TopKConfig)
class TopK(RevivesDeadUnits):
    """Per-sample k-sparse codes (Makhzani & Frey, 2013): each sample keeps its k largest units.

    Dead units are revived by the AuxK loss; ``k_anneal_steps`` optionally starts with every unit
    kept and lowers k linearly, so no unit starts out starved of gradient.
    """

    member_fields = ("k",)

    def __init__(self, config: TopKConfig, code_dim: int) -> None:
        super().__init__()
        self.k, self.anneal_steps, self.code_dim = config.k, config.k_anneal_steps, code_dim
        self.auxk = AuxKLoss(config, code_dim)  # also counts the training steps annealing follows

    def current_k(self, k: Optional[int | torch.Tensor] = None) -> int | torch.Tensor:
        k = self.k if k is None else k
        if not (self.training and self.anneal_steps):
            return k
        done = min(self.auxk.steps_taken, self.anneal_steps) / self.anneal_steps
        return rounded(self.code_dim + (k - self.code_dim) * done)

    def inference_rule(self) -> InferenceRule:
        return InferenceRule(k=self.k)

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        largest = self.current_k(self.largest["k"]) if "k" in self.largest else None  # stacked: the members' largest
        kept = keep_top_k(code, self.current_k(), 1, largest)
        if self.training:
            self.auxk.observe(kept)
        return kept


@dataclass
class LifetimeConfig(SparsityConfig):
    name: str = "lifetime"
    k: Optional[int] = number(None, ge=1)  # samples kept per unit; overrides rate when set
    rate: float = number(0.05, gt=0, le=1)  # fraction of the batch kept per unit


@register(LifetimeConfig)
class Lifetime(Sparsity):
    """Lifetime winner-take-all (Makhzani & Frey, 2015): during training each unit keeps its k largest
    activations across the minibatch; at evaluation codes pass unchanged."""

    member_fields = ("rate",)

    def __init__(self, config: LifetimeConfig, code_dim: int) -> None:
        super().__init__()
        self.k, self.rate = config.k, config.rate

    def kept_per_unit(self, batch_size: int) -> int | torch.Tensor:
        if self.k is not None:
            return max(1, min(self.k, batch_size))  # a k larger than the batch keeps the whole batch
        k = rounded(self.rate * batch_size)
        return k.clamp(1, batch_size) if isinstance(k, torch.Tensor) else max(1, min(k, batch_size))

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return code
        largest = round(self.largest["rate"] * code.shape[0]) if "rate" in self.largest and self.k is None else None
        return keep_top_k(code, self.kept_per_unit(code.shape[0]), 0, largest)


@dataclass
class BatchTopKConfig(SparsityConfig, AuxKFields):
    name: str = "batch_topk"
    k: int = number(16, ge=1)  # average code units kept per sample: k x batch_size kept per batch
    # EMA weight of each batch's threshold. Bussmann et al.'s 0.01 lags codes that grow while training: on 250
    # MNIST steps it left the inference l0 at 22.9 for k=8; 0.2 left 8.2
    threshold_momentum: float = number(0.2, gt=0, le=1)
    l0_field: ClassVar[str] = "k"
    zeroes_codes: ClassVar[bool] = True
    # Defaults of earlier versions: a checkpoint written then left them out of its model fingerprint.
    former_defaults: ClassVar[dict] = {"threshold_momentum": 0.01}

    def l0_asked(self) -> Optional[float]:
        return self.k  # at inference the threshold, not k, decides

    def l0_miss_advice(self, name: str) -> str:
        return (
            "the inference threshold lags codes that still grow: train longer, or raise "
            f"sparsity.{name}.threshold_momentum={self.threshold_momentum:g}"
        )

    def check_with(self, facts: Facts) -> None:
        check_k_fits(self.k, facts)


@register(BatchTopKConfig)
class BatchTopK(RevivesDeadUnits):
    """BatchTopK (Bussmann et al., 2024): training keeps the k x batch_size largest activations of the
    whole batch. Evaluation keeps activations above a threshold estimated during training (an EMA of
    the smallest kept activation per batch), so it does not depend on batch composition."""

    member_fields = ("k",)

    def __init__(self, config: BatchTopKConfig, code_dim: int) -> None:
        super().__init__()
        self.k, self.momentum = config.k, config.threshold_momentum
        self.auxk = AuxKLoss(config, code_dim)
        self.register_buffer("threshold", torch.zeros(()))
        self.register_buffer("threshold_seen", torch.zeros((), dtype=torch.bool))

    def inference_rule(self) -> InferenceRule:
        """The threshold the batch top-k implies, for every unit (the field's inference form: a JumpReLU)."""
        return InferenceRule(threshold=self.threshold.detach().expand(self.auxk.samples_since_fired.shape).clone())

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return code * (code > self.threshold)
        flat = code.reshape(1, -1)
        largest = self.largest["k"] * code.shape[0] if "k" in self.largest else None
        kept = keep_top_k(flat, self.k * code.shape[0], 1, largest)
        self._update_threshold(flat.detach(), kept.detach())
        kept = kept.view_as(code)
        self.auxk.observe(kept)
        return kept

    @torch.no_grad()
    def _update_threshold(self, flat: torch.Tensor, kept: torch.Tensor) -> None:
        # The smallest kept value, computed on the device without a host sync.
        smallest = torch.where(kept != 0, flat, torch.full_like(flat, float("inf"))).min()
        smallest = torch.where(torch.isfinite(smallest), smallest, self.threshold)
        blended = torch.lerp(self.threshold, smallest, self.momentum)
        self.threshold.copy_(torch.where(self.threshold_seen, blended, smallest))
        self.threshold_seen.fill_(True)
