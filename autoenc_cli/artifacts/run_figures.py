"""Render the standard figures of a finished run from its model and validation split."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from autoenc_cli.artifacts import figures
from autoenc_cli.data.tensors import iterate_batches
from autoenc_cli.models.autoencoder import Autoencoder
from autoenc_cli.training.metrics import CodeStatistics
from autoenc_cli.training.parts import RunParts
from autoenc_cli.training.records import EpochRecord, as_dict

LATENT_MAP_SAMPLES = 512
RECONSTRUCTION_SAMPLES = 16


def _all_codes(model: Autoencoder, parts: RunParts) -> torch.Tensor:
    """Codes of the whole validation split, encoded in evaluation-sized batches."""
    batch_size = parts.config.trainer.eval_batch_size
    return torch.cat([model.encode(batch) for batch in iterate_batches(parts.data.val, batch_size)])


@torch.inference_mode()
def render_run_figures(
    parts: RunParts, model: Autoencoder, figures_dir: Path, records: Sequence[EpochRecord], codes: CodeStatistics
) -> list[Path]:
    """The standard figures of ``model`` (the network of the run's last phase) on the validation split."""
    val, history = parts.data.val, [as_dict(record) for record in records]
    model.eval()
    shown = val.images[:RECONSTRUCTION_SAMPLES]
    batch = val.take(LATENT_MAP_SAMPLES)
    noise = parts.noise
    if noise.active:
        noisy = noise(shown, parts.validation_noise_generator())
        rows = [
            ("noisy input", noisy.clamp(0, 1)),
            ("reconstruction", model(noisy).reconstruction),
            ("clean target", shown),
        ]
        figures.image_rows(
            figures_dir / "denoising.png", rows, "Denoising: noisy validation inputs, reconstructions, clean targets"
        )
    written = [
        figures.reconstructions(figures_dir / "reconstructions.png", shown, model(shown).reconstruction),
        figures.latent_map(figures_dir / "latent_map.png", model.encode(batch.images), batch.labels),
        figures.dictionary(figures_dir / "dictionary.png", model.dictionary()),
        figures.loss_curve(figures_dir / "loss_curve.png", history),
        figures.code_density(figures_dir / "code_density.png", codes.firing_frequency),
        figures.latent_scatter(figures_dir / "latent_scatter.png", _all_codes(model, parts), val.labels),
    ]
    if len({row["stage"] for row in history}) > 1:
        written.append(figures.stages(figures_dir / "stages.png", history))
    return written
