"""The train/validate loop: phases -> epochs -> steps, with no host sync except every ``log_every`` steps."""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional, Sequence

import torch
from torch.nn.parallel import DistributedDataParallel

from autoenc_cli.data.tensors import iterate_batches
from autoenc_cli.errors import TrainingDiverged, TrainingInterrupted, UserError
from autoenc_cli.folder_layout import LAST_CHECKPOINT
from autoenc_cli.models.autoencoder import Autoencoder
from autoenc_cli.registry import REGISTRY
from autoenc_cli.schedules import LearningRatePolicy, Phase
from autoenc_cli.training.callbacks import Callback, EpochEnd, Failed, Interrupted, PhaseEnd, PhaseStart, StepEnd
from autoenc_cli.training.metrics import CodeStatistics, active_threshold, evaluate
from autoenc_cli.training.parts import RunParts
from autoenc_cli.training.records import EpochRecord, Evaluation, as_dict

AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _first_line(error: BaseException) -> str:
    return next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)[:200]


@dataclass
class FitResult:
    history: list[EpochRecord] = field(default_factory=list)
    train_seconds: float = 0.0
    samples_seen: int = 0
    best_val_loss: float = float("inf")
    best_epoch: int = 0
    final_codes: Optional[CodeStatistics] = None

    @property
    def samples_per_second(self) -> float:
        return self.samples_seen / self.train_seconds if self.train_seconds > 0 else 0.0


class Trainer:
    def __init__(self, parts: RunParts, callbacks: Sequence[Callback] = ()) -> None:
        self.parts = parts
        self.callbacks = list(callbacks)
        config = parts.config
        self.batch_generator = torch.Generator().manual_seed(config.seed)
        self.noise_generator = torch.Generator(device=parts.device).manual_seed(config.seed + 1)
        self.network: Autoencoder = parts.model  # what the current phase trains: the model or a stage of it
        self.objective = parts.objective
        self.forward_model: torch.nn.Module = parts.model  # the network, wrapped for DDP / compile
        self.optimizer: Optional[torch.optim.Optimizer] = None
        self.policy: Optional[LearningRatePolicy] = None
        self.phase_index = 0
        self.epoch_in_phase = 0
        self.step_in_epoch = 0  # steps done in the current epoch (non-zero only when interrupted mid-epoch)
        self.global_step = 0  # optimizer steps done in the run, all phases (loggers' x axis)
        self.running_loss = torch.zeros((), device=parts.device)
        self.epoch_batch_state = self.batch_generator.get_state()
        self.stop_requested: Optional[str] = None  # set by a signal handler: stop after the current step
        self._resume: Optional[dict[str, Any]] = None  # what ``begin`` continues from
        self._next_phase, self._entered, self._finished = 0, 0, False  # phases to start, set up, all done
        self._epoch_started = 0.0
        self.result = FitResult()
        self.autocast_dtype = AUTOCAST_DTYPES[config.trainer.precision]
        self.scaler = torch.amp.GradScaler(parts.device.type, enabled=config.trainer.precision == "fp16")

    def fit(self, resume: Optional[dict[str, Any]] = None) -> FitResult:
        """Run every phase; with ``resume`` (a ``state_dict()``), continue exactly where it was taken."""
        with self.reporting_errors():
            self.begin(resume)
            while self.next_epoch():
                started = time.perf_counter()
                train_loss = self.train_epoch()
                self.end_epoch(train_loss, time.perf_counter() - started)
        return self.result

    # ``fit`` in its parts, public for a driver that trains the epochs itself (``autoenc_cli.stacking``
    # trains one epoch of several trainers as one model): begin, then while next_epoch(): train the epoch,
    # end_epoch(its mean loss, its seconds); inside reporting_errors().

    @contextmanager
    def reporting_errors(self) -> Iterator[None]:
        """An error of the fit is told to the callbacks (interrupted, failed), then raised on."""
        try:
            yield
        except TrainingInterrupted as interruption:
            where = str(interruption)
            self._emit("on_interrupt", Interrupted(self.stop_requested, where, self.result.history, self.state_dict))
            raise
        except KeyboardInterrupt:  # a second Ctrl-C stopped it mid-step: the last checkpoint is what remains
            where = f"at once by a second {self.stop_requested or 'SIGINT'} {self.where}"
            self._emit("on_interrupt", Interrupted(self.stop_requested or "SIGINT", where, self.result.history, None))
            raise
        except BaseException as error:
            self._emit("on_failure", Failed(error))
            raise

    def begin(self, resume: Optional[dict[str, Any]] = None) -> None:
        """Set up to train from the start, or from ``resume`` (its position, histories and random streams)."""
        self._resume, self._entered, self._finished = resume, 0, False
        self._next_phase = resume["phase_index"] if resume else 0
        if resume:
            self._restore_progress(resume)

    def next_epoch(self) -> bool:
        """Whether an epoch is to train next: moves on to the next phase when this one is done (its last
        epoch trained, or its policy stopped it early); False when every phase is."""
        while not self._finished:
            phase = self.parts.phases[self.phase_index]
            if self.policy is not None and self.epoch_in_phase < phase.epochs and not self.policy.should_stop():
                self._epoch_started = time.perf_counter()
                return True
            if self.policy is not None:
                self._emit(
                    "on_phase_end", PhaseEnd(phase.name, self.phase_index, len(self.parts.phases), self.state_dict)
                )
            self._enter_next_phase()
        return False

    def _enter_next_phase(self) -> None:
        phases, index = self.parts.phases, self._next_phase
        if index >= len(phases):
            self._finished = True
            if self.result.final_codes is None:  # resumed with nothing left to train: measure the codes now
                self.result.final_codes = self.validate()[1]
            return
        while self._entered <= index:  # a resumed run's earlier phases replay their set-up
            network, parameters = phases[self._entered].enter(self.parts.model)
            self._entered += 1
        resume = self._resume if self._resume and index == self._resume["phase_index"] else None
        self._start_phase(index, phases[index], network, parameters, resume)
        self._next_phase = index + 1

    def end_epoch(self, train_loss: float, train_seconds: float) -> None:
        """After an epoch's training: validate, step the learning-rate policy, record and checkpoint."""
        phase = self.parts.phases[self.phase_index]
        val, codes = self.validate()
        self.policy.step(val.loss)
        self.epoch_in_phase += 1
        self._record(phase, train_loss, val, codes, train_seconds, time.perf_counter() - self._epoch_started)

    def _start_phase(
        self, index: int, phase: Phase, network: Autoencoder, parameters: list, resume: Optional[dict[str, Any]]
    ) -> None:
        """A fresh optimizer and learning-rate policy for the phase's network (restored on resume)."""
        config = self.parts.config
        self.phase_index, self.network = index, network
        self.objective = self.parts.objective.for_network(network)
        self.forward_model = self._training_module(network)
        self.optimizer = REGISTRY.build(config.optimizer, parameters)
        self.policy = LearningRatePolicy(self.optimizer, config.schedule, phase.epochs)
        self.epoch_in_phase = 0
        # "Best" compares like with like: within a phase (an early stage's shallow net is another model).
        self.result.best_val_loss, self.result.best_epoch = float("inf"), 0
        if resume:
            self._restore_phase(resume)
        self._emit(
            "on_phase_start", PhaseStart(phase.name, index, len(self.parts.phases), phase.epochs, self.steps_per_epoch)
        )

    @property
    def steps_per_epoch(self) -> int:
        return -(-len(self.parts.data.train) // self.parts.config.data.batch_size)

    def _training_module(self, network: torch.nn.Module) -> torch.nn.Module:
        """What the training step calls: the network, wrapped for data parallelism and compiled as asked.

        Rebuilt every phase, since a phase may freeze, tie or untie parameters.
        """
        parts, module = self.parts, network
        if parts.world.is_distributed:
            device_ids = [parts.device.index] if parts.device.type == "cuda" else None
            module = DistributedDataParallel(network, device_ids=device_ids)
        if parts.config.trainer.compile:
            module = torch.compile(module)
        return module

    def autocast(self) -> Any:
        enabled = self.autocast_dtype is not None
        return torch.autocast(self.parts.device.type, dtype=self.autocast_dtype, enabled=enabled)

    def train_epoch(self) -> float:
        """One epoch (or the rest of one, after a mid-epoch resume); returns the mean training loss."""
        parts, optimizer, scaler = self.parts, self.optimizer, self.scaler
        self.network.train()
        self.epoch_batch_state = self.batch_generator.get_state()  # replays this epoch's order on resume
        batches = iterate_batches(
            parts.data.train, parts.config.data.batch_size, self.batch_generator, self.step_in_epoch
        )
        for batch in batches:
            clean = parts.augment(parts.data.draw_batch(batch, self.noise_generator), self.noise_generator)
            inputs = parts.noise(clean, self.noise_generator)  # the whole global batch, so every rank draws alike
            inputs, target = parts.world.shard(inputs), parts.world.shard(clean)
            with self.autocast():
                loss = self.objective(self.forward_model(inputs), target).total
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            self.network.after_step()
            self.count_step(clean.shape[0], loss)
        return self.end_train_epoch()

    def count_step(self, samples: int, loss: Optional[torch.Tensor] = None) -> None:
        """A training step done (by this loop or by a driver that steps for it): its loss added to the
        epoch's running sum (``None``: the driver added it), the counters moved on, the loss read back and
        reported every ``log_every`` steps, and a requested stop raised as ``TrainingInterrupted``."""
        if loss is not None:
            self.running_loss += loss.detach()
        self.step_in_epoch += 1
        self.global_step += 1
        self.result.samples_seen += samples
        if self.step_in_epoch % self.parts.config.trainer.log_every == 0:
            self._emit("on_step", StepEnd(self.step_in_epoch, self.mean_loss(), self.global_step))
        if self.stop_requested:
            raise TrainingInterrupted(f"{self.stop_requested} {self.where}")

    def end_train_epoch(self) -> float:
        """The epoch's mean training loss (over every rank), checked finite; the running sum starts again."""
        if self.parts.world.is_distributed:  # report the global mean, not rank 0's shard (one sync per epoch)
            torch.distributed.all_reduce(self.running_loss)
            self.running_loss /= self.parts.world.size
        mean = self.mean_loss()
        self.step_in_epoch, self.running_loss = 0, torch.zeros((), device=self.parts.device)
        return mean

    def mean_loss(self) -> float:
        """Read the running loss back from the device (the only per-step sync) and check it is finite."""
        mean = (self.running_loss / max(self.step_in_epoch, 1)).item()
        if not math.isfinite(mean):
            history = self.result.history
            kept = (
                f"{LAST_CHECKPOINT} keeps the last good epoch ({history[-1].epoch})"
                if history
                else "no epoch had finished, so no checkpoint was written"
            )
            raise TrainingDiverged(
                f"the training loss became {mean} {self.where}; {kept} and the run is marked failed; "
                "try a lower optimizer.lr"
            )
        return mean

    @property
    def where(self) -> str:
        return f"in epoch {len(self.result.history) + 1}, by step {self.step_in_epoch}"

    def validate(self) -> tuple[Evaluation, CodeStatistics]:
        """Validation with a fixed corruption (re-seeded every time) so epochs compare fairly."""
        parts = self.parts
        with self.autocast():
            return evaluate(
                self.network,
                self.objective,
                parts.data.val,
                parts.config.trainer.eval_batch_size,
                parts.noise if parts.noise.active else None,
                parts.validation_noise_generator(),
                active_threshold(parts.config.trainer.active_threshold, self.network.code_activation),
            )

    def _record(
        self,
        phase: Phase,
        train_loss: float,
        val: Evaluation,
        codes: CodeStatistics,
        train_seconds: float,
        seconds: float,
    ) -> None:
        result = self.result
        result.train_seconds += train_seconds
        result.final_codes = codes
        record = EpochRecord.of(phase.name, len(result.history) + 1, train_loss, val, self.policy.lr, seconds)
        result.history.append(record)
        improved = val.loss < result.best_val_loss
        if improved:
            result.best_val_loss, result.best_epoch = val.loss, record.epoch
        event = EpochEnd(record, improved, result.history, self.state_dict, self.global_step, self.network, codes)
        self._emit("on_epoch_end", event)

    def _emit(self, hook: str, event: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(event)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue: weights, optimizer, LR policy, position, RNG states, history."""
        parts = self.parts
        return {
            "model": parts.model.state_dict(),
            "input_shape": list(parts.model.input_shape),
            "optimizer": self.optimizer.state_dict() if self.optimizer else {},
            "scaler": self.scaler.state_dict(),
            "policy": self.policy.state_dict() if self.policy else {},
            "phase_index": self.phase_index,
            "phase": parts.phases[self.phase_index].name,
            "code_dim": self.network.code_dim,
            "epoch_in_phase": self.epoch_in_phase,
            "epoch": len(self.result.history),
            "history": [as_dict(record) for record in self.result.history],
            "best": [self.result.best_val_loss, float(self.result.best_epoch)],
            "progress": [self.result.train_seconds, float(self.result.samples_seen)],
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "running_loss": self.running_loss.detach().cpu(),
            "rng": {
                "torch": torch.get_rng_state(),
                # Mid-epoch, the state the epoch's order was drawn from, so a resume replays it.
                "batches": self.epoch_batch_state if self.step_in_epoch else self.batch_generator.get_state(),
                "noise": self.noise_generator.get_state().cpu(),
            },
        }

    def _restore_progress(self, state: dict[str, Any]) -> None:
        self.result.history = [EpochRecord(**row) for row in state["history"]]
        self.result.train_seconds, samples_seen = state["progress"]
        self.result.samples_seen = int(samples_seen)
        torch.set_rng_state(state["rng"]["torch"])
        self.batch_generator.set_state(state["rng"]["batches"])
        self.noise_generator.set_state(state["rng"]["noise"])
        self.step_in_epoch = int(state["step_in_epoch"])
        # A checkpoint from before global_step was saved: every epoch has the same number of steps.
        done = len(self.result.history) * self.steps_per_epoch + self.step_in_epoch
        self.global_step = int(state.get("global_step", done))
        self.running_loss = state["running_loss"].to(self.parts.device)

    def _restore_phase(self, state: dict[str, Any]) -> None:
        """Load weights, optimizer and LR policy after the phase set the model up (frozen, tied or not)."""
        try:
            self.parts.model.load_state_dict(state["model"])
        except RuntimeError as error:
            raise UserError(
                f"the checkpoint does not fit the model built from its config ({_first_line(error)})"
            ) from None
        self.optimizer.load_state_dict(state["optimizer"])
        self.policy.load_state_dict(state["policy"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.epoch_in_phase = state["epoch_in_phase"]
        best_val_loss, best_epoch = state["best"]
        self.result.best_val_loss, self.result.best_epoch = best_val_loss, int(best_epoch)
