"""Training schedules (the ``schedule`` group): the phases a run goes through and their LR policy.

A schedule is a list of phases. Each phase prepares the model (which parameters train, frozen or
tied state) and gets a fresh optimizer and learning-rate policy; ``standard`` is one phase over the
whole network.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Optional

import torch
from torch import nn

from autoenc_cli.errors import ConfigError
from autoenc_cli.registry import register
from autoenc_cli.schema import choice, number
from autoenc_cli.schema.root import GroupConfig, TrainerConfig

POLICIES = ("constant", "cosine", "plateau")


@dataclass
class LearningRateConfig(GroupConfig):
    policy: str = choice("plateau", POLICIES)
    factor: float = number(0.1, gt=0, lt=1)  # plateau: multiply the rate by this
    patience: int = number(10, ge=0)  # plateau: epochs without improvement before reducing
    stop_lr: float = number(1e-5, ge=0)  # plateau: end the phase once the rate falls below this
    min_lr: float = number(0.0, ge=0)  # cosine and plateau: the lowest rate


@dataclass
class StandardScheduleConfig(LearningRateConfig):
    name: str = "standard"


@dataclass
class Phase:
    name: str
    epochs: int
    prepare: Callable[[nn.Module], Iterable[nn.Parameter]]  # set the model up; return what trains


class LearningRatePolicy:
    """Steps once per epoch on the validation loss; says when a plateau run should stop."""

    def __init__(self, optimizer: torch.optim.Optimizer, config: LearningRateConfig, epochs: int) -> None:
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


def train_everything(model: nn.Module) -> Iterable[nn.Parameter]:
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    return [parameter for parameter in model.parameters()]


@register("schedule", "standard", StandardScheduleConfig)
def build_standard(config: StandardScheduleConfig, trainer: TrainerConfig, model: nn.Module) -> list[Phase]:
    return [Phase("train", trainer.epochs, train_everything)]


@dataclass
class GreedyScheduleConfig(LearningRateConfig):
    name: str = "greedy"
    epochs_per_stage: int = number(10, ge=1)
    stage_epochs: Optional[list[int]] = None  # one entry per encoder layer; overrides epochs_per_stage
    untie: bool = True  # fine-tune with untied decoder weights (needs model.tied=true)

    def check(self) -> None:
        if self.stage_epochs is not None and any(epochs < 1 for epochs in self.stage_epochs):
            raise ConfigError("stage_epochs", self.stage_epochs, "every stage needs >= 1 epoch")


def train_only(model: nn.Module, modules: Iterable[nn.Module]) -> list[nn.Parameter]:
    """Freeze ``model`` except ``modules``; return their distinct parameters."""
    model.requires_grad_(False)
    trainable = {id(p): p for module in modules for p in module.parameters()}
    for parameter in trainable.values():
        parameter.requires_grad_(True)
    return list(trainable.values())


def stage(index: int) -> Callable[[nn.Module], Iterable[nn.Parameter]]:
    """Stage ``index``: layer pair ``index`` trains on top of the frozen, already trained outer pairs."""

    def prepare(model: nn.Module) -> Iterable[nn.Parameter]:
        model.depth = index + 1
        return train_only(model, model.layer_pair(index))

    return prepare


def finetune(untie: bool) -> Callable[[nn.Module], Iterable[nn.Parameter]]:
    def prepare(model: nn.Module) -> Iterable[nn.Parameter]:
        model.depth = None
        if untie:
            model.untie()
        return train_everything(model)

    return prepare


@register("schedule", "greedy", GreedyScheduleConfig)
def build_greedy(config: GreedyScheduleConfig, trainer: TrainerConfig, model: nn.Module) -> list[Phase]:
    """Greedy layer-wise pre-training (Hinton & Salakhutdinov 2006; Bengio et al. 2007), then fine-tuning
    of the whole network for trainer.epochs epochs."""
    from autoenc_cli.models.fc import FCAutoencoder

    if not isinstance(model, FCAutoencoder):
        raise ConfigError("schedule.name", "greedy", "needs a fully-connected model (model=fc or sparse_fc)")
    stage_epochs = config.stage_epochs or [config.epochs_per_stage] * model.num_layers
    if len(stage_epochs) != model.num_layers:
        raise ConfigError(
            "schedule.stage_epochs",
            stage_epochs,
            f"one entry per encoder layer: the model has {model.num_layers} ({model.num_layers - 1} hidden + code)",
        )
    if config.untie and not model.is_tied:
        raise ConfigError(
            "schedule.untie", True, "needs model.tied=true (there is nothing to untie); or set schedule.untie=false"
        )
    stages = [Phase(f"stage{index + 1}", epochs, stage(index)) for index, epochs in enumerate(stage_epochs)]
    return [*stages, Phase("finetune", trainer.epochs, finetune(config.untie))]
