"""The interface every sparsity option implements, the base of their configs, and the stack that
applies several of them at once (``sparsity=[topk,lifetime]``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Mapping, Optional

import torch
from torch import nn

from autoenc_cli.schema import GroupConfig

if TYPE_CHECKING:
    from autoenc_cli.models.autoencoder import Autoencoder, AutoencoderOutput


@dataclass
class SparsityConfig(GroupConfig):
    group: ClassVar[str] = "sparsity"
    # The key of the weight that sets how sparse the option's codes are (``lam``), where there is one:
    # a run whose code that weight left all-dead or dense says so (``collapse_note``).
    penalty_knob: ClassVar[Optional[str]] = None
    # The key that sets the option's l0 directly (top-k's k, JumpReLU's target_l0): what ``l0=`` sets.
    l0_field: ClassVar[Optional[str]] = None
    # Whether the option sets units exactly to zero itself (top-k, JumpReLU), whatever the code activation.
    zeroes_codes: ClassVar[bool] = False

    def l0_asked(self) -> Optional[float]:
        """The l0 the option asks for that its code at inference may miss (a target_l0, batch top-k's k)."""
        return None

    def l0_miss_advice(self, name: str) -> str:
        """What to change when the run's l0 missed ``l0_asked`` (``name``: the option's name in the run)."""
        return "train longer"

    def collapse_advice(self, direction: str) -> str:
        """What to do when the penalty weight left the code dead (``direction`` lower) or dense (raise)."""
        return f"{direction} it" + (", or set a target_l0 (l0=N) to let it adapt" if hasattr(self, "target_l0") else "")


# A code with fewer active units per sample than this, on average, counts as dead (it carries almost nothing).
DEAD_L0 = 0.1
# A code with at least this fraction of its units active per sample, on average, counts as dense.
DENSE_L0_FRACTION = 0.9
# How far a run's l0 on validation may miss its target_l0 (a fraction of it) before it says so.
TARGET_L0_TOLERANCE = 0.1


def collapse_note(
    options: Mapping[str, SparsityConfig], l0: float, dead_fraction: float, code_dim: int, code_activation: str
) -> Optional[str]:
    """One line when the run's l0 on validation missed the l0 an option asked for by more than 10% (a
    target_l0, batch top-k's k), or a penalty's weight left the code all but dead (l0 < 0.1) or dense (l0 >=
    90% of the code), naming the knob and what to change; None otherwise."""
    for name, option in options.items():
        asked = option.l0_asked()
        if asked is not None and abs(l0 / asked - 1) > TARGET_L0_TOLERANCE:
            return f"sparsity.{name}.{option.l0_field}={asked:g} was not reached (l0 {l0:.1f} on validation): " + (
                option.l0_miss_advice(name)
            )
    weighted = {
        name: option
        for name, option in options.items()
        if option.penalty_knob is not None and getattr(option, "target_l0", None) is None
    }
    if not weighted:
        return None
    knobs = " and ".join(
        f"sparsity.{name}.{o.penalty_knob}={getattr(o, o.penalty_knob):g}" for name, o in weighted.items()
    )
    if l0 < DEAD_L0:
        advice = "; ".join(option.collapse_advice("lower") for option in weighted.values())
        dead = f"l0 {l0:.2g}, {dead_fraction:.0%} of units never active"
        return f"{knobs} left the code all but dead on validation ({dead}): {advice}"
    can_be_zero = code_activation == "relu" or any(option.zeroes_codes for option in options.values())
    if l0 >= DENSE_L0_FRACTION * code_dim and can_be_zero:  # (a leaky or sigmoid code is dense whatever the weight)
        advice = "; ".join(option.collapse_advice("raise") for option in weighted.values())
        return f"{knobs} left the code dense (l0 {l0:.1f} of {code_dim} units on validation): {advice}"
    return None


@dataclass(frozen=True)
class InferenceRule:
    """What a sparsity option does to codes at inference, in terms other tools share (SAELens's formats):
    keep each sample's ``k`` largest units, or keep units above ``threshold`` (code_dim,)."""

    k: Optional[int] = None
    threshold: Optional[torch.Tensor] = None


class Sparsity(nn.Module):
    """Transforms codes in the forward pass and may add a penalty on them to the loss.

    ``forward`` is applied to the code (identity here); ``penalty`` returns the weighted term to add
    to the loss, or None when the option has none. It sees the whole step: the model's output (the
    encoder's raw code and the transformed one, the logits), the clean target and the model, so an
    auxiliary loss can decode codes of its own.
    """

    # Hyper-parameters that members of a stacked sweep may set each their own (``autoenc_cli.stacking``):
    # attributes holding a number, which the option's code must also accept as a 0-d tensor.
    member_fields: ClassVar[tuple[str, ...]] = ()
    # While stacked, the largest value of each member field among the members (a bound for shapes).
    largest: ClassVar[dict[str, float]] = {}

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        return code

    def penalty(
        self, output: "AutoencoderOutput", target: torch.Tensor, model: "Autoencoder"
    ) -> Optional[torch.Tensor]:
        return None

    def inference_rule(self) -> Optional[InferenceRule]:
        """What the option does to codes in evaluation mode; None: nothing (a penalty, a training-time rule)."""
        return None

    @property
    def wants_codes(self) -> bool:
        """Whether ``initialise_from_codes`` needs the raw codes of training data before training starts."""
        return False

    def initialise_from_codes(self, raw_code: torch.Tensor) -> None:
        """Data-dependent initialisation from the encoder's raw codes of a sample of training inputs."""


class SparsityStack(Sparsity):
    """Several sparsity options at once: transforms apply in the order listed, penalties add up.

    ``sparsity=[topk,lifetime]`` keeps each sample's top k units and then, in training, each unit's
    top activations across the batch; ``sparsity=[topk,l1]`` adds an L1 penalty to top-k codes. With
    no members (``sparsity=none``) codes pass unchanged.
    """

    def __init__(self, members: Mapping[str, Sparsity]) -> None:
        super().__init__()
        self.members = nn.ModuleDict(members)

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        for member in self.members.values():
            code = member(code)
        return code

    def penalty(
        self, output: "AutoencoderOutput", target: torch.Tensor, model: "Autoencoder"
    ) -> Optional[torch.Tensor]:
        terms = [
            term for member in self.members.values() if (term := member.penalty(output, target, model)) is not None
        ]
        return torch.stack(terms).sum() if terms else None

    @property
    def wants_codes(self) -> bool:
        return any(member.wants_codes for member in self.members.values())

    def initialise_from_codes(self, raw_code: torch.Tensor) -> None:
        for member in self.members.values():
            member.initialise_from_codes(raw_code)

    def inference_rules(self) -> dict[str, InferenceRule]:
        """The members that change codes in evaluation mode, by name, with what they do."""
        return {name: rule for name, member in self.members.items() if (rule := member.inference_rule()) is not None}

    def extra_repr(self) -> str:
        return "order: " + " -> ".join(self.members) if self.members else "dense codes"
