"""Assemble a run's parts from its typed config through the registry."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from autoenc_cli.data.tensors import DataBundle
from autoenc_cli.errors import UserError
from autoenc_cli.models.autoencoder import Autoencoder
from autoenc_cli.noise.base import Noise
from autoenc_cli.registry import REGISTRY
from autoenc_cli.schema.root import TrainConfig
from autoenc_cli.training.distributed import World, current_world, init_process_group
from autoenc_cli.training.losses import Objective
from autoenc_cli.training.schedules import Phase


@dataclass
class Experiment:
    run: TrainConfig
    device: torch.device
    data: DataBundle
    model: Autoencoder
    objective: Objective
    noise: Noise
    phases: list[Phase]
    world: World = World()

    def validation_noise_generator(self) -> torch.Generator:
        """A fresh generator with a fixed seed: every validation pass sees the same corruption."""
        return torch.Generator(device=self.device).manual_seed(self.run.seed + 2)


def resolve_device(name: str, world: World = World()) -> torch.device:
    """``auto`` picks CUDA when present; under torchrun each rank takes the GPU of its local rank."""
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"trainer.device='{name}' but CUDA is not available here; use trainer.device=cpu or auto")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and world.is_distributed:
        name = f"cuda:{world.local_rank}"
    device = torch.device(name)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def seed_everything(seed: int, deterministic: bool) -> None:
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def build_model(run: TrainConfig, input_shape: tuple[int, ...]) -> Autoencoder:
    """The model with its sparsity transform attached to the code layer."""
    model = REGISTRY.build("model", run.model, input_shape)
    model.code_transform = REGISTRY.build("sparsity", run.sparsity, model)
    return model


def build_experiment(run: TrainConfig, data: DataBundle | None = None) -> Experiment:
    world = current_world()
    if run.trainer.threads is not None:  # e.g. one thread per job when a sweep runs jobs in parallel
        torch.set_num_threads(run.trainer.threads)
    device = resolve_device(run.trainer.device, world)
    init_process_group(world, device)
    seed_everything(run.seed, run.trainer.deterministic)
    data = (data or REGISTRY.build("data", run.data)).to(device)
    model = build_model(run, data.input_shape).to(device)
    objective = Objective(REGISTRY.build("loss", run.loss, model), model.code_transform)
    noise = REGISTRY.build("noise", run.noise)
    phases = REGISTRY.build("schedule", run.schedule, run.trainer, model)
    return Experiment(run, device, data, model, objective, noise, phases, world)
