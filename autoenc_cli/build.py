"""Build a run's parts from its checked config: data, model (with its sparsity), objective, noise, phases,
augmentation.

Every component comes from the registry, constructed from its own config. ``build_model`` needs only
the config and an input shape, so a trained run is rebuilt without its data.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from autoenc_cli.data.tensors import DataBundle, Split, iterate_batches
from autoenc_cli.errors import UserError
from autoenc_cli.losses import Objective
from autoenc_cli.models.autoencoder import Autoencoder
from autoenc_cli.registry import REGISTRY
from autoenc_cli.schema import TrainConfig
from autoenc_cli.sparsity.base import SparsityStack
from autoenc_cli.training.distributed import World, current_world, init_process_group
from autoenc_cli.training.parts import RunParts


def build_sparsity(config: TrainConfig, input_shape: tuple[int, ...]) -> SparsityStack:
    """Every sparsity option of the run, in the order listed, sized for the model's code."""
    code_dim = config.model.describe(tuple(input_shape)).code_dim
    return SparsityStack({name: REGISTRY.build(member, code_dim) for name, member in config.sparsity.items()})


def build_model(
    config: TrainConfig, input_shape: tuple[int, ...], code_transform: Optional[nn.Module] = None
) -> Autoencoder:
    """The model, complete: its sparsity options are the code transform it is constructed with."""
    sparsity = code_transform if code_transform is not None else build_sparsity(config, input_shape)
    return REGISTRY.build(config.model, tuple(input_shape), code_transform=sparsity)


# The data-dependent init needs a good estimate of the mean, not the mean of a file larger than memory.
MEAN_SAMPLES = 100_000


@torch.no_grad()
def split_mean(split: Split, batch_size: int, max_samples: int = MEAN_SAMPLES) -> torch.Tensor:
    """The mean sample of a split (of its first ``max_samples``: splits are in seeded random order),
    accumulated batch by batch in float64."""
    sample = split if len(split) <= max_samples else split.take(max_samples)
    total = sum(batch.double().sum(dim=0) for batch in iterate_batches(sample, batch_size))
    return (total / len(sample)).float()


# Training rows whose raw codes initialise sparsity options that start from data (JumpReLU's thresholds).
CODE_SAMPLES = 4096


@torch.no_grad()
def sample_codes(model: Autoencoder, split: Split, batch_size: int) -> torch.Tensor:
    """The encoder's raw codes of the split's first CODE_SAMPLES rows (splits are in seeded random order)."""
    sample, device = split if len(split) <= CODE_SAMPLES else split.take(CODE_SAMPLES), next(model.parameters()).device
    return torch.cat([model.raw_code(batch.to(device)) for batch in iterate_batches(sample, batch_size)])


def build_objective(config: TrainConfig, model: Autoencoder) -> Objective:
    return Objective(REGISTRY.build(config.loss), model)


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


def build_parts(config: TrainConfig, data: Optional[DataBundle] = None) -> RunParts:
    """Everything the Trainer needs, on the training device; ``data`` replaces the config's data set."""
    world = current_world()
    if config.trainer.threads is not None:  # e.g. one thread per job when a sweep runs jobs in parallel
        torch.set_num_threads(config.trainer.threads)
    device = resolve_device(config.trainer.device, world)
    init_process_group(world, device)
    seed_everything(config.seed, config.trainer.deterministic)
    data = (data or REGISTRY.build(config.data)).to(device)
    model = build_model(config, data.input_shape).to(device)
    if model.wants_data_mean:  # a resumed run's checkpoint replaces this with the trained values
        model.initialise_from_data(split_mean(data.train, config.trainer.eval_batch_size))
    if getattr(model.code_transform, "wants_codes", False):  # (after the mean: the codes see the input bias)
        model.code_transform.initialise_from_codes(sample_codes(model, data.train, config.trainer.eval_batch_size))
    objective = build_objective(config, model)
    noise = REGISTRY.build(config.noise)
    phases = REGISTRY.build(config.schedule, config.trainer, model)
    augment = REGISTRY.build(config.augment)
    return RunParts(config, device, data, model, objective, noise, phases, world, augment)
