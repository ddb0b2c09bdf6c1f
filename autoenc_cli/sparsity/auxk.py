"""The auxiliary loss that revives dead units (AuxK, Gao et al. 2024), shared by the hard options.

A unit that has not fired for ``dead_after`` training samples counts as dead. Each step, the
``aux_k`` largest encoder outputs among the dead units form an auxiliary code; the loss asks what
that code adds to the (detached) reconstruction to explain the residual, so dead units get gradient
towards what the live ones miss. It is zero when no unit is dead, and there is no host sync.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

import torch
from torch import nn

from autoenc_cli.schema import number
from autoenc_cli.sparsity.base import Sparsity

if TYPE_CHECKING:
    from autoenc_cli.models.autoencoder import Autoencoder, AutoencoderOutput


@dataclass
class AuxKFields:
    """The AuxK knobs of an option's config (mixed into TopKConfig and BatchTopKConfig)."""

    aux_k: int = number(32, ge=1)  # dead units allowed into the auxiliary code of each sample
    aux_coef: float = number(1 / 32, ge=0)  # weight of the auxiliary loss (Gao et al.'s 1/32); 0 turns it off
    dead_after: int = number(1600, ge=1)  # training samples without firing after which a unit counts as dead


# Training steps between host reads of "is any unit dead?". The auxiliary loss, which costs a second
# decoder pass, is computed only while one is: one device sync per CHECK_EVERY steps instead of an
# auxiliary pass on every step (most runs have no dead unit most of the time).
CHECK_EVERY = 32


class AuxKLoss(nn.Module):
    # Stacked members (autoenc_cli.stacking) each weigh the loss their own: ``coef`` is then a 0-d tensor,
    # and the host-side shortcuts give way to device-side gates (the host cannot read one member's state).
    member_fields = ("coef",)

    def __init__(self, fields: AuxKFields, code_dim: int) -> None:
        super().__init__()
        self.aux_k, self.coef, self.dead_after = min(fields.aux_k, code_dim), fields.aux_coef, fields.dead_after
        # Saved with the model, so a resumed run knows which units were dead and continues bit for bit.
        self.register_buffer("samples_since_fired", torch.zeros(code_dim, dtype=torch.long))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))  # training steps observed
        self.register_buffer("any_dead", torch.zeros((), dtype=torch.bool))  # as of the last check
        self._host: Optional[list] = None  # [steps, any_dead] mirrored on the host; read once after a load
        self._stacked, self._check_due = False, False  # see begin_stacked

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._host = None

    def _mirror(self) -> list:
        if self._host is None:
            self._host = [int(self.steps), bool(self.any_dead)]
        return self._host

    # A stacked epoch (autoenc_cli.stacking) runs this module as the template of all members, inside
    # ``vmap``, where the host cannot read a member's tensors: the engine brackets it with these calls,
    # passing the members' buffers stacked. A check then runs on each member's device tensors, and the
    # host learns after the step whether any member has a dead unit (the auxiliary pass then runs for
    # all, gated per member on the device).
    def begin_stacked(self, stacked_buffers: dict[str, torch.Tensor]) -> None:
        self._host = [int(stacked_buffers["steps"][0]), bool(stacked_buffers["any_dead"].any())]
        self._stacked, self._check_due = True, False

    def after_stacked_step(self, stacked_buffers: dict[str, torch.Tensor]) -> None:
        if self._check_due:
            self._host[1] = bool(stacked_buffers["any_dead"].any())
            self._check_due = False

    def end_stacked(self) -> None:
        self._stacked, self._host = False, None  # the member's own buffers are read again when next needed

    @property
    def steps_taken(self) -> int:
        """Training steps observed, without a device sync (k annealing reads it every step)."""
        return self._mirror()[0]

    @torch.no_grad()
    def observe(self, code: torch.Tensor) -> None:
        """Count, per unit, the training samples since it last fired in ``code``."""
        fired = (code != 0).any(dim=0)
        self.samples_since_fired.add_(code.shape[0]).masked_fill_(fired, 0)
        host = self._mirror()  # read before the count moves on (read after, it ran one step ahead)
        self.steps += 1
        host[0] += 1
        if host[0] % CHECK_EVERY == 0:
            if self.stacked:  # each member's check on the device; the host reads them after the step
                self.any_dead.copy_((self.samples_since_fired >= self.dead_after).any())
                self._check_due = True
            elif self.coef:
                self.check_dead_units()

    @property
    def stacked(self) -> bool:
        """Whether this module runs as the template of a stacked epoch (its buffers are the members')."""
        return self._stacked

    @torch.no_grad()
    def check_dead_units(self) -> bool:
        any_dead = bool((self.samples_since_fired >= self.dead_after).any())  # the one device sync
        self.any_dead.fill_(any_dead)
        self._mirror()[1] = any_dead
        return any_dead

    def forward(
        self, output: "AutoencoderOutput", target: torch.Tensor, model: "Autoencoder"
    ) -> Optional[torch.Tensor]:
        # (A stacked member's check that came due in this step is read by the host only after it.)
        maybe_dead = self._mirror()[1] or (self.stacked and self._check_due)
        off = not isinstance(self.coef, torch.Tensor) and self.coef == 0  # (a tensor: members' own weights)
        if not self.training or not maybe_dead or off:
            return None
        dead = self.samples_since_fired >= self.dead_after
        values, indices = (output.raw_code * dead).topk(self.aux_k, dim=1)
        aux_code = torch.zeros_like(output.raw_code).scatter(1, indices, values)
        # What the dead units write: the decoder's response to the auxiliary code around the zero code
        # (exactly W @ aux_code for a linear decoder), added to the reconstruction it should complete.
        added = model.decode_logits(aux_code) - model.decode_logits(torch.zeros_like(aux_code[:1]))
        completed = model.output_activation(output.logits.detach() + added)
        residual_power = (output.reconstruction.detach() - target).pow(2).mean().clamp_min(1e-12)
        normalised = (completed - target).pow(2).mean() / residual_power  # 1 when the dead units add nothing
        # Units may have fired since the check; a stacked member passes here whatever its last check found.
        return self.coef * (self.any_dead & dead.any()) * normalised


class RevivesDeadUnits(Sparsity):
    """A hard option whose penalty is its AuxK loss (set ``self.auxk`` and call ``auxk.observe`` on the
    codes it keeps in training)."""

    auxk: AuxKLoss

    def penalty(
        self, output: "AutoencoderOutput", target: torch.Tensor, model: "Autoencoder"
    ) -> Optional[torch.Tensor]:
        return self.auxk(output, target, model)
