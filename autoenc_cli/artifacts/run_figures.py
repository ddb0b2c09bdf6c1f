"""Render the standard figures of a finished run from its model and validation split."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from autoenc_cli.artifacts import figures
from autoenc_cli.data.tensors import in_memory, iterate_batches
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


@torch.inference_mode()
def render_run_figures(
    parts: RunParts,
    model: Autoencoder,
    figures_dir: Path,
    records: Sequence[EpochRecord],
    codes: CodeStatistics,
    only: Optional[Sequence[str]] = None,
) -> tuple[list[Path], list[str]]:
    """The standard figures of ``model`` (the network of the run's last phase) on the validation split
    (``only``: just the figures of these file names, as loggers take during training).

    Each figure is drawn on its own: one that cannot be drawn for this run is skipped with a note (the
    second list), never failing the others or the run.
    """
    val, history = parts.data.val, [as_dict(record) for record in records]
    model.eval()
    shown = val.images[:RECONSTRUCTION_SAMPLES]
    batch = val.take(LATENT_MAP_SAMPLES)
    noise = parts.noise
    val_codes = functools.cache(lambda: _all_codes(model, parts))  # the dictionary and the scatter share them
    drawings: list[tuple[str, Callable[[Path], Path]]] = [
        ("reconstructions.png", lambda path: figures.reconstructions(path, shown, model(shown).reconstruction)),
        ("latent_map.png", lambda path: figures.latent_map(path, model.encode(batch.images), batch.labels)),
        (
            "dictionary.png",
            lambda path: figures.dictionary(
                path, model.dictionary(typical_activation(val_codes())), codes.firing_frequency, codes.threshold
            ),
        ),
        ("loss_curve.png", lambda path: figures.loss_curve(path, history)),
        ("code_density.png", lambda path: figures.code_density(path, codes.firing_frequency)),
        ("latent_scatter.png", lambda path: figures.latent_scatter(path, val_codes(), val.labels)),
    ]
    if noise.active:

        def denoising(path: Path) -> Path:
            noisy = noise(shown, parts.validation_noise_generator())
            rows = [
                ("noisy input", noisy.clamp(0, 1)),
                ("reconstruction", model(noisy).reconstruction),
                ("clean target", shown),
            ]
            return figures.image_rows(path, rows, "Denoising: noisy validation inputs, reconstructions, clean targets")

        drawings.insert(1, ("denoising.png", denoising))
    if len({row["stage"] for row in history}) > 1:
        drawings.append(("stages.png", lambda path: figures.stages(path, history)))
    written, notes = [], []
    for name, draw in drawings:
        if only is not None and name not in only:
            continue
        try:
            written.append(draw(figures_dir / name))
        except figures.NotDrawable as error:  # a figure this kind of data has none of: say why, plainly
            notes.append(f"figures/{name} skipped: {error}")
        except Exception as error:  # noqa: BLE001 - a figure that cannot be drawn is a note, not a failure
            notes.append(
                f"figures/{name} skipped: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
            )
    return written, notes
