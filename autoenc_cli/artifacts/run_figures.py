"""Render the standard figures of a finished run from its model and validation split."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from autoenc_cli.artifacts import figures
from autoenc_cli.data.tensors import in_memory, iterate_batches
from autoenc_cli.folder_layout import (
    CODE_DENSITY_PNG,
    DENOISING_PNG,
    DICTIONARY_PNG,
    FIGURES,
    INTERPOLATIONS_PNG,
    LATENT_MANIFOLD_PNG,
    LATENT_MAP_PNG,
    LATENT_SCATTER_PNG,
    LOSS_CURVE_PNG,
    RECONSTRUCTIONS_PNG,
    SAMPLES_PNG,
    STAGES_PNG,
)
from autoenc_cli.models.autoencoder import Autoencoder
from autoenc_cli.training.metrics import CodeStatistics
from autoenc_cli.training.parts import RunParts
from autoenc_cli.training.records import EpochRecord, as_dict

LATENT_MAP_SAMPLES = 512
RECONSTRUCTION_SAMPLES = 16
# A memory-mapped validation split may be larger than memory, and so may its codes: the scatter plots this
# many of its samples (the first ones, in the split's seeded order).
MAPPED_SCATTER_SAMPLES = 10_000


def _all_codes(model: Autoencoder, parts: RunParts) -> torch.Tensor:
    """Codes of the whole validation split (of a memory-mapped one, its first MAPPED_SCATTER_SAMPLES),
    encoded in evaluation-sized batches."""
    batch_size, val = parts.config.trainer.eval_batch_size, parts.data.val
    if not in_memory(val):
        val = val.take(MAPPED_SCATTER_SAMPLES)
    return torch.cat([model.encode(batch) for batch in iterate_batches(val, batch_size)])


def typical_activation(codes: torch.Tensor) -> torch.Tensor:
    """Each unit's mean |value| where it is non-zero (1 for a unit never active): the size at which
    the dictionary figure shows what the unit writes."""
    active = codes != 0
    mean = codes.abs().sum(dim=0) / active.sum(dim=0).clamp_min(1)
    return torch.where(active.any(dim=0), mean, torch.ones_like(mean))


PRIOR_SAMPLES = 64
INTERPOLATION_PAIRS, INTERPOLATION_STEPS = 6, 10
MANIFOLD_SIDE = 15  # decoded codes per side of the 2-D latent manifold


def generated(model: Autoencoder, val: torch.Tensor, seed: int) -> list[tuple[str, Callable[..., Path], Callable]]:
    """A variational model's own figures, each with its inputs: draws from the prior, paths between pairs of
    validation inputs' codes and, for a 2-D code, the decoded code plane on a grid of the prior's quantiles."""

    def prior_samples() -> tuple:
        return (model.sample(PRIOR_SAMPLES, torch.Generator(device=val.device).manual_seed(seed)),)

    def interpolation_paths() -> tuple:
        pairs = min(INTERPOLATION_PAIRS, val.shape[0] // 2)
        if pairs == 0:
            raise figures.NotDrawable("interpolations need two validation inputs")
        start, end = model.encode(val[:pairs]), model.encode(val[pairs : 2 * pairs])
        weights = torch.linspace(0, 1, INTERPOLATION_STEPS, device=val.device).view(1, -1, 1)
        codes = start.unsqueeze(1) + weights * (end - start).unsqueeze(1)  # (pairs, steps, code_dim)
        return (model.decode(codes.flatten(0, 1)).unflatten(0, (pairs, INTERPOLATION_STEPS)),)

    def manifold() -> tuple:
        quantiles = torch.special.ndtri(torch.linspace(0.05, 0.95, MANIFOLD_SIDE, device=val.device))
        rows, columns = torch.meshgrid(quantiles.flip(0), quantiles, indexing="ij")  # unit 2 grows upwards
        return model.decode(torch.stack([columns.flatten(), rows.flatten()], dim=1)), quantiles

    planned = [
        (SAMPLES_PNG, figures.samples, prior_samples),
        (INTERPOLATIONS_PNG, figures.interpolations, interpolation_paths),
    ]
    if model.code_dim == 2:
        planned.append((LATENT_MANIFOLD_PNG, figures.latent_manifold, manifold))
    return planned


# A figure of a run: its file name and the drawing, with every input computed (CPU tensors, records),
# so it draws without the model, in this process or another (``autoenc_cli.artifacts.figure_workers``).
Drawing = tuple[str, Callable[[], Path]]


@torch.inference_mode()
def run_figure_drawings(
    parts: RunParts,
    model: Autoencoder,
    figures_dir: Path,
    records: Sequence[EpochRecord],
    codes: CodeStatistics,
    only: Optional[Sequence[str]] = None,
) -> tuple[list[Drawing], list[str]]:
    """The standard figures of ``model`` (the network of the run's last phase) on the validation split
    (``only``: just the figures of these file names, as loggers take during training), with their inputs
    computed (the model's part of the work, on its device) but not yet drawn (``draw``, or
    ``figure_workers``). Each figure stands on its own: one that cannot be drawn for this run is a note,
    never failing the others or the run."""
    val, history = parts.data.val, [as_dict(record) for record in records]
    model.eval()
    shown = val.images[:RECONSTRUCTION_SAMPLES]
    batch = val.take(LATENT_MAP_SAMPLES)
    noise = parts.noise
    val_codes = functools.cache(lambda: _all_codes(model, parts))  # the dictionary and the scatter share them
    planned: list[tuple[str, Callable[..., Path], Callable[[], tuple]]] = [
        (RECONSTRUCTIONS_PNG, figures.reconstructions, lambda: (shown, model(shown).reconstruction)),
        (LATENT_MAP_PNG, figures.latent_map, lambda: (model.encode(batch.images), batch.labels)),
        (
            DICTIONARY_PNG,
            figures.dictionary,
            lambda: (model.dictionary(typical_activation(val_codes())), codes.firing_frequency, codes.threshold),
        ),
        (LOSS_CURVE_PNG, figures.loss_curve, lambda: (history,)),
        (CODE_DENSITY_PNG, figures.code_density, lambda: (codes.firing_frequency,)),
        (LATENT_SCATTER_PNG, figures.latent_scatter, lambda: (val_codes(), val.labels)),
    ]
    if noise.active:

        def denoising_inputs() -> tuple:
            noisy = noise(shown, parts.validation_noise_generator())
            return noisy.clamp(0, 1), model(noisy).reconstruction, shown

        planned.insert(1, (DENOISING_PNG, figures.denoising, denoising_inputs))
    if model.variational:
        planned += generated(model, val.images[: 2 * INTERPOLATION_PAIRS], parts.config.seed)
    if len({row["stage"] for row in history}) > 1:
        planned.append((STAGES_PNG, figures.stages, lambda: (history,)))
    drawings, notes = [], []
    for name, figure, inputs in planned:
        if only is not None and name not in only:
            continue
        try:
            arguments = [value.detach().cpu() if isinstance(value, torch.Tensor) else value for value in inputs()]
        except Exception as error:  # noqa: BLE001 - a figure that cannot be drawn is a note, not a failure
            notes.append(skipped(name, error))
            continue
        drawings.append((name, functools.partial(figure, figures_dir / name, *arguments)))
    return drawings, notes


def draw(drawings: Sequence[Drawing]) -> tuple[list[Path], list[str]]:
    """Draw each figure on its own: the files written, and a note for each figure that could not be drawn."""
    written, notes = [], []
    for name, drawing in drawings:
        try:
            written.append(drawing())
        except Exception as error:  # noqa: BLE001 - a figure that cannot be drawn is a note, not a failure
            notes.append(skipped(name, error))
    return written, notes


def skipped(name: str, error: Exception) -> str:
    if isinstance(error, figures.NotDrawable):  # a figure this kind of data has none of: say why, plainly
        return f"{FIGURES}/{name} skipped: {error}"
    return f"{FIGURES}/{name} skipped: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
