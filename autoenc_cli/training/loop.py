"""The train/validate loop: phases -> epochs -> steps, with no host sync except every ``log_every`` steps."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Protocol

import torch
from torch.nn.parallel import DistributedDataParallel

from autoenc_cli.data.tensors import iterate_batches
from autoenc_cli.errors import TrainingDiverged, TrainingInterrupted, UserError
from autoenc_cli.experiment import Experiment
from autoenc_cli.registry import REGISTRY
from autoenc_cli.training.metrics import CodeStatistics, evaluate
from autoenc_cli.training.schedules import LearningRatePolicy, Phase


def _first_line(error: BaseException) -> str:
    return next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)[:200]


AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class Observer(Protocol):
    """Receives progress from the loop (console bars, run-folder writers); every method is optional work."""

    def on_phase_start(self, phase: Phase, steps_per_epoch: int) -> None: ...

    def on_step(self, step: int, loss: float) -> None: ...

    def on_epoch_end(self, row: dict[str, Any], improved: bool, trainer: "Trainer") -> None: ...

    def on_phase_end(self, phase: Phase, trainer: "Trainer") -> None: ...


class SilentObserver:
    def on_phase_start(self, phase: Phase, steps_per_epoch: int) -> None:
        pass

    def on_step(self, step: int, loss: float) -> None:
        pass

    def on_epoch_end(self, row: dict[str, Any], improved: bool, trainer: "Trainer") -> None:
        pass

    def on_phase_end(self, phase: Phase, trainer: "Trainer") -> None:
        pass


@dataclass
class FitResult:
    history: list[dict[str, Any]] = field(default_factory=list)
    train_seconds: float = 0.0
    samples_seen: int = 0
    best_val_loss: float = float("inf")
    best_epoch: int = 0
    final_codes: Optional[CodeStatistics] = None

    @property
    def samples_per_second(self) -> float:
        return self.samples_seen / self.train_seconds if self.train_seconds > 0 else 0.0


class Trainer:
    def __init__(self, experiment: Experiment, observer: Optional[Observer] = None) -> None:
        self.experiment = experiment
        self.observer: Observer = observer or SilentObserver()
        run = experiment.run
        self.batch_generator = torch.Generator().manual_seed(run.seed)
        self.noise_generator = torch.Generator(device=experiment.device).manual_seed(run.seed + 1)
        self.optimizer: Optional[torch.optim.Optimizer] = None
        self.policy: Optional[LearningRatePolicy] = None
        self.phase_index = 0
        self.epoch_in_phase = 0
        self.step_in_epoch = 0  # steps done in the current epoch (non-zero only when interrupted mid-epoch)
        self.running_loss = torch.zeros((), device=experiment.device)
        self.epoch_batch_state = self.batch_generator.get_state()
        self.stop_requested: Optional[str] = None  # set by a signal handler: stop after the current step
        self.result = FitResult()
        self.autocast_dtype = AUTOCAST_DTYPES[run.trainer.precision]
        self.scaler = torch.amp.GradScaler(experiment.device.type, enabled=run.trainer.precision == "fp16")
        self.forward_model: torch.nn.Module = experiment.model

    def autocast(self) -> Any:
        return torch.autocast(
            self.experiment.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None
        )

    def _training_module(self, model: torch.nn.Module) -> torch.nn.Module:
        """What the training step calls: the model, wrapped for data parallelism and compiled as asked.

        Rebuilt every phase, since a phase may freeze, tie or untie parameters.
        """
        experiment = self.experiment
        module = model
        if experiment.world.is_distributed:
            device_ids = [experiment.device.index] if experiment.device.type == "cuda" else None
            module = DistributedDataParallel(model, device_ids=device_ids)
        if experiment.run.trainer.compile:
            module = torch.compile(module)
        return module

    def fit(self, resume: Optional[dict[str, Any]] = None) -> FitResult:
        """Run every phase; with ``resume`` (a ``state_dict()``), continue exactly where it was taken."""
        start_phase = resume["phase_index"] if resume else 0
        if resume:
            self._restore_progress(resume)
        for index, phase in enumerate(self.experiment.phases):
            if index < start_phase:
                phase.prepare(self.experiment.model)  # replay structural changes (e.g. untying) in order
                continue
            self.phase_index = index
            self._run_phase(phase, resume if index == start_phase else None)
        return self.result

    def _run_phase(self, phase: Phase, resume: Optional[dict[str, Any]] = None) -> None:
        run, model = self.experiment.run, self.experiment.model
        parameters = list(phase.prepare(model))
        self.forward_model = self._training_module(model)
        self.optimizer = REGISTRY.build("optimizer", run.optimizer, parameters)
        self.policy = LearningRatePolicy(self.optimizer, run.schedule, phase.epochs)
        self.epoch_in_phase = 0
        # "Best" compares like with like: within a phase (an early stage's shallow net is another model).
        self.result.best_val_loss, self.result.best_epoch = float("inf"), 0
        if resume:
            self._restore_phase(resume)
        steps_per_epoch = -(-len(self.experiment.data.train) // run.data.batch_size)
        self.observer.on_phase_start(phase, steps_per_epoch)
        while self.epoch_in_phase < phase.epochs and not self.policy.should_stop():
            started = time.perf_counter()
            train_loss = self._train_epoch()
            train_seconds = time.perf_counter() - started
            val, codes = self.validate()
            self.policy.step(val["loss"])
            self.epoch_in_phase += 1
            self._record(phase, train_loss, val, codes, train_seconds, time.perf_counter() - started)
        self.observer.on_phase_end(phase, self)

    def _train_epoch(self) -> float:
        """One epoch (or the rest of one, after a mid-epoch resume); returns the mean training loss."""
        experiment = self.experiment
        model, objective, noise, optimizer = experiment.model, experiment.objective, experiment.noise, self.optimizer
        log_every = experiment.run.trainer.log_every
        model.train()
        self.epoch_batch_state = self.batch_generator.get_state()  # replays this epoch's order on resume
        batches = iterate_batches(
            experiment.data.train, experiment.run.data.batch_size, self.batch_generator, self.step_in_epoch
        )
        world, scaler = experiment.world, self.scaler
        for clean in batches:
            inputs = noise(clean, self.noise_generator)  # the whole global batch, so every rank draws alike
            inputs, target = world.shard(inputs), world.shard(clean)
            with self.autocast():
                loss = objective(self.forward_model(inputs), target).total
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            self.running_loss += loss.detach()
            self.step_in_epoch += 1
            self.result.samples_seen += clean.shape[0]
            if self.step_in_epoch % log_every == 0:
                self.observer.on_step(self.step_in_epoch, self._mean_loss())
            if self.stop_requested:
                raise TrainingInterrupted(self._where())
        if world.is_distributed:  # report the global mean, not rank 0's shard (one sync per epoch)
            torch.distributed.all_reduce(self.running_loss)
            self.running_loss /= world.size
        mean = self._mean_loss()
        self.step_in_epoch, self.running_loss = 0, torch.zeros((), device=experiment.device)
        return mean

    def _mean_loss(self) -> float:
        """Read the running loss back from the device (the only per-step sync) and check it is finite."""
        mean = (self.running_loss / max(self.step_in_epoch, 1)).item()
        if not math.isfinite(mean):
            kept = self.result.history[-1]["epoch"] if self.result.history else 0
            raise TrainingDiverged(
                f"the training loss became {mean} {self._where()}; checkpoints/last.pt keeps the last good epoch "
                f"({kept}) and the run is marked failed; try a lower optimizer.lr"
            )
        return mean

    def _where(self) -> str:
        return f"in epoch {len(self.result.history) + 1}, by step {self.step_in_epoch}"

    def validate(self) -> tuple[dict[str, float], CodeStatistics]:
        """Validation with a fixed corruption (re-seeded every time) so epochs compare fairly."""
        experiment = self.experiment
        with self.autocast():
            return evaluate(
                experiment.model,
                experiment.objective,
                experiment.data.val,
                experiment.run.trainer.eval_batch_size,
                experiment.noise if experiment.noise.active else None,
                experiment.validation_noise_generator(),
            )

    def _record(
        self,
        phase: Phase,
        train_loss: float,
        val: dict[str, float],
        codes: CodeStatistics,
        train_seconds: float,
        seconds: float,
    ) -> None:
        result = self.result
        result.train_seconds += train_seconds
        result.final_codes = codes
        epoch = len(result.history) + 1
        row = {
            "stage": phase.name,
            "epoch": epoch,
            "train_loss": train_loss,
            "val_loss": val["loss"],
            "val_mse": val["mse"],
            "val_penalty": val["penalty"],
            "l0": val["l0"],
            "dead_fraction": val["dead_fraction"],
            "dense_fraction": val["dense_fraction"],
            "mean_activation": val["mean_activation"],
            **{f"val_{key}": val[key] for key in ("psnr_noisy", "psnr_denoised") if key in val},
            "lr": self.policy.lr if self.policy else float("nan"),
            "seconds": seconds,
        }
        result.history.append(row)
        improved = val["loss"] < result.best_val_loss
        if improved:
            result.best_val_loss, result.best_epoch = val["loss"], epoch
        self.observer.on_epoch_end(row, improved, self)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue: weights, optimizer, LR policy, position, RNG states, history."""
        experiment = self.experiment
        return {
            "model": experiment.model.state_dict(),
            "input_shape": list(experiment.model.input_shape),
            "optimizer": self.optimizer.state_dict() if self.optimizer else {},
            "scaler": self.scaler.state_dict(),
            "policy": self.policy.state_dict() if self.policy else {},
            "phase_index": self.phase_index,
            "epoch_in_phase": self.epoch_in_phase,
            "epoch": len(self.result.history),
            "history": [dict(row) for row in self.result.history],
            "best": [self.result.best_val_loss, float(self.result.best_epoch)],
            "progress": [self.result.train_seconds, float(self.result.samples_seen)],
            "step_in_epoch": self.step_in_epoch,
            "running_loss": self.running_loss.detach().cpu(),
            "rng": {
                "torch": torch.get_rng_state(),
                # Mid-epoch, the state the epoch's order was drawn from, so a resume replays it.
                "batches": self.epoch_batch_state if self.step_in_epoch else self.batch_generator.get_state(),
                "noise": self.noise_generator.get_state().cpu(),
            },
        }

    def _restore_progress(self, state: dict[str, Any]) -> None:
        self.result.history = [dict(row) for row in state["history"]]
        self.result.train_seconds, samples_seen = state["progress"]
        self.result.samples_seen = int(samples_seen)
        torch.set_rng_state(state["rng"]["torch"])
        self.batch_generator.set_state(state["rng"]["batches"])
        self.noise_generator.set_state(state["rng"]["noise"])
        self.step_in_epoch = int(state["step_in_epoch"])
        self.running_loss = state["running_loss"].to(self.experiment.device)

    def _restore_phase(self, state: dict[str, Any]) -> None:
        """Load weights, optimizer and LR policy after the phase set the model up (frozen, tied or not)."""
        try:
            self.experiment.model.load_state_dict(state["model"])
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
