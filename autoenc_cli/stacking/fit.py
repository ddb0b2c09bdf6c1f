"""Fit several runs in one process, epoch by epoch, stacking those whose next epochs can share one model.

Each run is an ordinary ``Trainer`` driven through its public parts (``begin``, ``next_epoch``, an
epoch's training, ``end_epoch``, inside ``reporting_errors``). At every round the runs with an epoch to
train are partitioned by ``stack_signature`` (so a run that stops early, a greedy stage that ends, or a
member that fails simply leaves its stack), each part of at most ``max_members`` runs trains its epoch
as one ``StackedEpoch``, and each run then validates, records and checkpoints on its own. A run that
``can_stack`` rules out, or whose stack the engine refused to run (``StackingRefused``), trains alone:
its own epochs, as a sequential sweep trains them.
"""

from __future__ import annotations

import math
import os
import string
import time
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Optional

import torch

from autoenc_cli.stacking.engine import StackedEpoch, StackingRefused, can_stack, stack_signature
from autoenc_cli.training.loop import Trainer


@dataclass(eq=False)
class Member:
    trainer: Trainer
    resume: Optional[dict[str, Any]] = None
    number: int = 0  # the job's number in the sweep
    error: Optional[BaseException] = None
    stack: Optional[str] = None  # the first stack it trained in ("alone" when it trained on its own)
    stacked: bool = False  # whether it has trained an epoch in a stack
    refused: Optional[str] = None  # why the engine refused its stack: it trains alone from then on


def member_bytes(trainer: Trainer) -> int:
    """A generous estimate of one member's share of a stack: its weights six times (the stacked copy, the
    member's own, gradient, two optimizer moments, the update's start) and its step's activations."""
    network = trainer.network
    weights = sum(parameter.numel() for parameter in network.parameters())
    batch = trainer.parts.config.data.batch_size
    widths = sum(module.out_features for module in network.modules() if isinstance(module, torch.nn.Linear))
    activations = batch * (8 * math.prod(network.input_shape) + 4 * widths)
    return 4 * (6 * weights + activations)


def available_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not Linux: assume 4 GiB
        return 4 << 30


def stack_limit(trainer: Trainer, max_members: Optional[int], memory_fraction: float) -> int:
    fits = int(memory_fraction * available_bytes(trainer.parts.device) // max(member_bytes(trainer), 1))
    return max(1, min(fits, max_members or fits))


def _phase(member: Member) -> str:
    trainer = member.trainer
    return trainer.parts.phases[trainer.phase_index].name


def _why_alone(member: Member) -> Optional[str]:
    return member.refused or can_stack(member.trainer)


def _layout_entry(part: list[Member]) -> str:
    return ",".join(str(member.number) for member in part) + _phase(part[0])


class StackedFit:
    """Drive ``members`` to the end of their fits; each keeps its error (or None)."""

    def __init__(
        self,
        members: list[Member],
        max_members: Optional[int] = None,
        memory_fraction: float = 0.5,
        announce: Callable[[str], None] = print,
    ) -> None:
        self.members, self.max_members, self.memory_fraction = members, max_members, memory_fraction
        self.announce = announce
        self.layout: Optional[list[str]] = None
        self.labels = iter(string.ascii_uppercase)

    def run(self) -> None:
        waiting = [
            member for member in self.members if self._advance(member, partial(Trainer.begin, resume=member.resume))
        ]
        while waiting:
            ready: list[Member] = []
            for group in self._partition(waiting):
                outcomes = self._train_epoch(group)
                ready.extend(member for member in group if self._end_epoch(member, *outcomes[member]))
            waiting = [member for member in self.members if member in ready]

    def _end_epoch(self, member: Member, outcome: float | BaseException, seconds: float) -> bool:
        """Validate, record and checkpoint the member's epoch (or report its error); whether it goes on."""

        def end(trainer: Trainer) -> None:
            if isinstance(outcome, BaseException):
                raise outcome
            trainer.end_epoch(outcome, seconds)

        return self._advance(member, end)

    def _advance(self, member: Member, action: Callable[[Trainer], None]) -> bool:
        """``action`` on the member's trainer, then whether it has another epoch to train; an error ends
        its fit (told to its callbacks) and is kept as its outcome."""
        trainer = member.trainer
        try:
            with trainer.reporting_errors():
                action(trainer)
                return trainer.next_epoch()
        except Exception as failure:  # noqa: BLE001 - the member's outcome, reported by the launcher
            member.error = failure
            return False

    def _partition(self, waiting: list[Member]) -> list[list[Member]]:
        groups: dict[Any, list[Member]] = {}
        for member in waiting:
            key = ("alone", member.number) if _why_alone(member) else stack_signature(member.trainer)
            groups.setdefault(key, []).append(member)
        parts: list[list[Member]] = []
        for group in groups.values():
            size = stack_limit(group[0].trainer, self.max_members, self.memory_fraction)
            parts.extend(group[start : start + size] for start in range(0, len(group), size))
        self._describe(parts)
        return parts

    def _describe(self, parts: list[list[Member]]) -> None:
        """Say how the jobs train whenever that changes (at the start, after a stage, when one stops)."""
        layout = sorted(_layout_entry(part) for part in parts)
        if layout == self.layout:
            return
        self.layout = layout
        lines = []
        for part in parts:
            numbers = " ".join(f"#{member.number}" for member in part)
            if len(part) == 1:
                reason = _why_alone(part[0]) or "no other job has its shapes and settings"
                lines.append(f"{numbers} alone ({reason})")
                part[0].stack = part[0].stack or "alone"
                continue
            label = next(self.labels, "?")
            for member in part:
                member.stack = member.stack or f"{label}: {len(part)} jobs ({numbers})"
            lines.append(f"stack {label}: {numbers} as one model ({len(part)} members, {_phase(part[0])})")
        self.announce("stacked training: " + "; ".join(lines))

    def _train_epoch(self, group: list[Member]) -> dict[Member, tuple[float | BaseException, float]]:
        """Each member's outcome of one epoch (its mean loss or its error) and the seconds it took (a
        stack's members each took the whole stack's)."""
        if len(group) == 1:
            return {group[0]: self._train_alone(group[0])}
        started = time.perf_counter()
        trainers = [member.trainer for member in group]
        try:
            outcomes = StackedEpoch(trainers).run()
        except StackingRefused as refusal:
            return self._fall_back(group, str(refusal))
        except Exception as error:  # noqa: BLE001 - the stack's own failure fails each of its jobs, saying why
            outcomes = dict.fromkeys(trainers, error)
        seconds = time.perf_counter() - started
        for member in group:
            member.stacked = True
        return {member: (outcomes[member.trainer], seconds) for member in group}

    def _train_alone(self, member: Member) -> tuple[float | BaseException, float]:
        started = time.perf_counter()
        try:
            outcome: float | BaseException = member.trainer.train_epoch()
        except Exception as error:  # noqa: BLE001 - reported by the member's fit, as if it raised there
            outcome = error
        return outcome, time.perf_counter() - started

    def _fall_back(self, group: list[Member], reason: str) -> dict[Member, tuple[float | BaseException, float]]:
        """The engine refused this stack (and changed nothing of its members): they train alone, this
        epoch and every later one, as a sequential sweep trains them; one line says which and why."""
        self.announce(f"stacked training: {' '.join(f'#{member.number}' for member in group)} train alone: {reason}")
        entry = _layout_entry(group)
        alone = [_layout_entry([member]) for member in group]
        self.layout = sorted([item for item in self.layout or [] if item != entry] + alone)
        for member in group:
            member.refused = reason
            member.stack = member.stack if member.stacked else "alone"
        return {member: self._train_alone(member) for member in group}
