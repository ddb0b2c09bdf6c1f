"""Training schedules (the ``schedule`` group): the phases a run goes through and their LR policy.

A schedule is a list of phases. Entering a phase sets the model up (which parameters train, tied or
untied) and says which network the phase trains and evaluates: the whole model, or a greedy stage's
view of it with its own code size. Every phase gets a fresh optimizer and learning-rate policy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar, Iterable, Optional

import torch
from torch import nn

from autoenc_cli.errors import ConfigError
from autoenc_cli.models.autoencoder import Autoencoder
from autoenc_cli.registry import register
from autoenc_cli.schema import GroupConfig, TrainerConfig, choice, number
from autoenc_cli.schema.check import Facts

POLICIES = ("constant", "cosine", "plateau")


@dataclass
class ScheduleConfig(GroupConfig):
    """The learning-rate policy every schedule restarts in each of its phases."""

    group: ClassVar[str] = "schedule"
    policy: str = choice("plateau", POLICIES)  # how the learning rate changes over a phase's epochs
    factor: float = number(0.1, gt=0, lt=1)  # plateau: multiply the rate by this
    patience: int = number(10, ge=0)  # plateau: epochs without improvement before reducing
    stop_lr: float = number(1e-5, ge=0)  # plateau: end the phase once the rate falls below this
    min_lr: float = number(0.0, ge=0)  # cosine and plateau: the lowest rate


@dataclass
class StandardScheduleConfig(ScheduleConfig):
    name: str = "standard"


# Set the model up for the phase; return the network it trains and evaluates, and its parameters.
EnterPhase = Callable[[nn.Module], tuple[Autoencoder, list[nn.Parameter]]]


@dataclass
class Phase:
    name: str
    epochs: int
    enter: EnterPhase


class LearningRatePolicy:
    """Steps once per epoch on the validation loss; says when a plateau run should stop."""

    def __init__(self, optimizer: torch.optim.Optimizer, config: ScheduleConfig, epochs: int) -> None:
        self.optimizer, self.config = optimizer, config
        self.scheduler: Optional[object] = None
        if config.policy == "cosine":
            self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs, eta_min=config.min_lr)
        elif config.policy == "plateau":
            self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode="min", factor=config.factor, patience=config.patience, min_lr=config.min_lr
            )

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def step(self, val_loss: float) -> None:
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step(val_loss)
        elif self.scheduler is not None:
            self.scheduler.step()

    def should_stop(self) -> bool:
        return self.config.policy == "plateau" and self.lr < self.config.stop_lr

    def state_dict(self) -> dict:
        return self.scheduler.state_dict() if self.scheduler is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state)


def train_everything(model: nn.Module) -> tuple[nn.Module, list[nn.Parameter]]:
    model.requires_grad_(True)
    return model, list(model.parameters())


def train_only(model: nn.Module, modules: Iterable[nn.Module]) -> list[nn.Parameter]:
    """Freeze ``model`` except ``modules``; return their distinct parameters."""
    model.requires_grad_(False)
    trainable = {id(p): p for module in modules for p in module.parameters()}
    for parameter in trainable.values():
        parameter.requires_grad_(True)
    return list(trainable.values())


@register(StandardScheduleConfig)
def standard_phases(config: StandardScheduleConfig, trainer: TrainerConfig, model: nn.Module) -> list[Phase]:
    return [Phase("train", trainer.epochs, train_everything)]


@dataclass
class GreedyScheduleConfig(ScheduleConfig):
    name: str = "greedy"
    epochs_per_stage: int = number(10, ge=1)  # epochs of each layer-wise stage (then the fine-tuning)
    stage_epochs: Optional[list[int]] = None  # one entry per encoder layer; overrides epochs_per_stage
    untie: bool = True  # fine-tune with untied decoder weights (needs model.tied=true)

    def check(self) -> None:
        if self.stage_epochs is not None and any(epochs < 1 for epochs in self.stage_epochs):
            raise ConfigError("stage_epochs", self.stage_epochs, "every stage needs >= 1 epoch")

    def check_with(self, facts: Facts) -> None:
        widths = facts.model.layer_widths
        if widths is None:
            raise ConfigError("name", "greedy", "needs a fully-connected model (model=fc or sparse_fc)")
        if self.stage_epochs is not None and len(self.stage_epochs) != len(widths):
            raise ConfigError(
                "stage_epochs",
                self.stage_epochs,
                f"one entry per encoder layer: the model has {len(widths)} ({len(widths) - 1} hidden + code)",
            )
        if self.untie and not facts.model.tied:
            raise ConfigError(
                "untie", True, "needs model.tied=true (there is nothing to untie); or set schedule.untie=false"
            )


def stage(index: int) -> EnterPhase:
    """Stage ``index``: layer pair ``index`` trains on top of the frozen, already trained outer pairs."""

    def enter(model: nn.Module) -> tuple[Autoencoder, list[nn.Parameter]]:
        return model.stage(index + 1), train_only(model, model.layer_pair(index))

    return enter


def finetune(untie: bool) -> EnterPhase:
    def enter(model: nn.Module) -> tuple[Autoencoder, list[nn.Parameter]]:
        if untie:
            model.untie()
        return train_everything(model)

    return enter


@register(GreedyScheduleConfig)
def greedy_phases(config: GreedyScheduleConfig, trainer: TrainerConfig, model: nn.Module) -> list[Phase]:
    """Greedy layer-wise pre-training (Hinton & Salakhutdinov 2006; Bengio et al. 2007), then fine-tuning
    of the whole network for trainer.epochs epochs."""
    stage_epochs = config.stage_epochs or [config.epochs_per_stage] * model.num_layers
    stages = [Phase(f"stage{index + 1}", epochs, stage(index)) for index, epochs in enumerate(stage_epochs)]
    return [*stages, Phase("finetune", trainer.epochs, finetune(config.untie))]
