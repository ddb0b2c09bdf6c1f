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

    def extra_repr(self) -> str:
        return "order: " + " -> ".join(self.members) if self.members else "dense codes"
