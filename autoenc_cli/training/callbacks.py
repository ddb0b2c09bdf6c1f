"""What the training loop tells the outside world: events, and a base class with a no-op hook each.

Callbacks (progress bars, the run-folder writer) receive events, never the Trainer; an event that
may need a checkpoint carries ``snapshot``, which builds the resumable state only when called.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

from autoenc_cli.training.records import EpochRecord

Snapshot = Callable[[], dict[str, Any]]


@dataclass
class PhaseStart:
    name: str
    index: int
    phase_count: int
    epochs: int
    steps_per_epoch: int


@dataclass
class StepEnd:
    step: int  # steps done in the epoch
    loss: float  # running mean training loss of the epoch
    global_step: int = 0  # optimizer steps done in the whole run (all epochs and phases)


@dataclass
class EpochEnd:
    record: EpochRecord
    improved: bool  # the best validation loss of the phase so far
    history: list[EpochRecord]
    snapshot: Snapshot
    global_step: int = 0  # optimizer steps done in the whole run
    network: Any = None  # the network the phase trains (for figures)
    codes: Any = None  # the validation pass's CodeStatistics (firing frequency, threshold)


@dataclass
class PhaseEnd:
    name: str
    index: int
    phase_count: int
    snapshot: Snapshot


@dataclass
class Interrupted:
    signal: str
    where: str
    history: list[EpochRecord]
    snapshot: Optional[Snapshot]  # None: stopped at once, mid-step (a second Ctrl-C): no state worth keeping


@dataclass
class Failed:
    error: BaseException


class Callback:
    def on_phase_start(self, event: PhaseStart) -> None:
        pass

    def on_step(self, event: StepEnd) -> None:
        pass

    def on_epoch_end(self, event: EpochEnd) -> None:
        pass

    def on_phase_end(self, event: PhaseEnd) -> None:
        pass

    def on_interrupt(self, event: Interrupted) -> None:
        pass

    def on_failure(self, event: Failed) -> None:
        pass
