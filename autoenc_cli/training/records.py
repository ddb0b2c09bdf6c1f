"""Typed results: an evaluation pass, an epoch, a finished run, a scored run.

Every file that reports numbers is derived from these: history.csv (``EpochRecord``), metrics.json
(``RunSummary``), eval.json (``EvalReport``), the sweep summary (the ``RunSummary`` fields marked
``summary``) and the descriptions in report.html (each field's ``doc``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional


def metric(doc: str, default: Any = None, summary: bool = False) -> Any:
    """A record field with its description (shown in reports) and whether sweep summaries list it."""
    return field(default=default, metadata={"doc": doc, "summary": summary})


def as_dict(record: Any) -> dict[str, Any]:
    """The record's fields in order, without the ones that do not apply (None)."""
    return {f.name: getattr(record, f.name) for f in dataclasses.fields(record) if getattr(record, f.name) is not None}


def carried(source: Any, record_class: type, **given: Any) -> Any:
    """A ``record_class`` with ``given`` values, the rest taken from ``source``'s fields of the same name
    (a ``val_`` field also from the unprefixed one: an evaluation of the validation split)."""
    available = {f.name for f in dataclasses.fields(source)}
    values = dict(given)
    for target in dataclasses.fields(record_class):
        for name in (target.name, target.name.removeprefix("val_")):
            if target.name not in values and name in available:
                values[target.name] = getattr(source, name)
    return record_class(**values)


def descriptions(record_class: type) -> dict[str, str]:
    return {f.name: f.metadata.get("doc", "") for f in dataclasses.fields(record_class)}


@dataclass
class Evaluation:
    """One pass over a split (means per sample unless stated)."""

    loss: float = metric("reconstruction loss + sparsity penalty")
    reconstruction_loss: float = metric("the loss group's reconstruction term")
    penalty: float = metric("the sparsity penalty (0 without one)")
    mse: float = metric("mean squared error per pixel against the clean input")
    squared_error_per_image: float = metric("squared error summed over an image's pixels (Hinton & Salakhutdinov)")
    fvu: Optional[float] = metric(
        "fraction of variance unexplained: squared error over the clean input's squared deviation from its mean "
        "on the split, both summed over samples and values (0 perfect, 1 no better than the mean input)"
    )
    explained_variance: Optional[float] = metric("1 - fvu")
    cosine_similarity: float = metric("mean cosine similarity of a clean input and its reconstruction")
    l0: float = metric("mean number of active code units per sample (|code| > l0_threshold)")
    l0_threshold: float = metric("the |code| above which a unit counts as active (trainer.active_threshold)")
    dead_fraction: float = metric("fraction of code units never active on the split")
    dense_fraction: float = metric("fraction of code units active on more than half of the samples")
    mean_activation: float = metric("mean |code| per unit and sample")
    psnr_noisy: Optional[float] = metric("denoising: PSNR (dB) of the corrupted input against the clean one")
    psnr_denoised: Optional[float] = metric("denoising: PSNR (dB) of the reconstruction against the clean input")


@dataclass
class EpochRecord:
    """One row of history.csv."""

    stage: str = metric("the schedule's phase (train, stage1, ..., finetune)")
    epoch: int = metric("epoch number across all phases, from 1")
    train_loss: float = metric("mean training loss over the epoch's steps")
    val_loss: float = metric("validation loss")
    val_mse: float = metric("validation MSE per pixel")
    val_fvu: Optional[float] = metric("validation fraction of variance unexplained")
    val_explained_variance: Optional[float] = metric("validation explained variance (1 - fvu)")
    val_cosine_similarity: Optional[float] = metric("validation mean cosine similarity of input and reconstruction")
    val_penalty: float = metric("validation sparsity penalty")
    l0: float = metric("validation l0")
    dead_fraction: float = metric("validation dead fraction")
    dense_fraction: float = metric("validation dense fraction")
    mean_activation: float = metric("validation mean |code|")
    val_psnr_noisy: Optional[float] = metric("denoising: PSNR of the corrupted validation input")
    val_psnr_denoised: Optional[float] = metric("denoising: PSNR of the validation reconstruction")
    lr: float = metric("learning rate at the end of the epoch")
    seconds: float = metric("wall time of the epoch, validation included")

    @classmethod
    def of(cls, stage: str, epoch: int, train_loss: float, val: Evaluation, lr: float, seconds: float) -> "EpochRecord":
        return carried(val, cls, stage=stage, epoch=epoch, train_loss=train_loss, lr=lr, seconds=seconds)


@dataclass
class RunSummary:
    """metrics.json: how a run ended and, when it completed, its final numbers."""

    status: str = metric("completed, interrupted, failed, or pruned (a tune trial stopped early)", summary=True)
    error: Optional[str] = metric("why the run failed")
    stopped: Optional[str] = metric("where an interrupted run stopped, or after which epoch a tune trial was pruned")
    signal: Optional[str] = metric("the signal that interrupted the run")
    train_loss: Optional[float] = metric("final epoch's mean training loss")
    val_loss: Optional[float] = metric("final validation loss", summary=True)
    val_mse: Optional[float] = metric("final validation MSE per pixel", summary=True)
    val_psnr: Optional[float] = metric("final validation PSNR (dB)")
    val_fvu: Optional[float] = metric(
        "final validation fraction of variance unexplained (squared error over variance about the mean)", summary=True
    )
    val_explained_variance: Optional[float] = metric("final validation explained variance (1 - fvu)", summary=True)
    val_cosine_similarity: Optional[float] = metric("final validation cosine similarity of input and reconstruction")
    val_penalty: Optional[float] = metric("final validation sparsity penalty", summary=True)
    l0: Optional[float] = metric("mean active code units (|code| > l0_threshold) per validation sample", summary=True)
    l0_threshold: Optional[float] = metric("the |code| above which a unit counts as active (trainer.active_threshold)")
    dead_fraction: Optional[float] = metric("code units never active on the validation split", summary=True)
    dense_fraction: Optional[float] = metric("code units active on more than half of it", summary=True)
    mean_activation: Optional[float] = metric("mean |code| per unit and sample")
    val_psnr_noisy: Optional[float] = metric("denoising: PSNR of the corrupted validation input")
    val_psnr_denoised: Optional[float] = metric("denoising: PSNR of the validation reconstruction")
    best_val_loss: Optional[float] = metric("best validation loss of the final phase")
    best_epoch: Optional[int] = metric("epoch of the best validation loss (checkpoints/best.pt)")
    epochs: Optional[int] = metric("epochs trained, all phases", summary=True)
    code_dim: Optional[int] = metric("code units", summary=True)
    num_parameters: Optional[int] = metric("distinct trainable parameters (a tied weight counts once)")
    train_seconds: Optional[float] = metric("time spent in training steps", summary=True)
    samples_per_second: Optional[float] = metric("training throughput")
    device: Optional[str] = metric("where it trained")
    seed: Optional[int] = metric("the run's seed")
    pca_val_mse: Optional[float] = metric(
        "validation MSE of PCA with code_dim components on the same split and inputs (corrupted for denoising)",
        summary=True,
    )
    pca_val_mse_by_k: Optional[list[float]] = metric(
        "PCA's validation MSE per pixel with k components, as pca_val_mse; entry i is k = i + 1, up to code_dim"
    )
    wall_seconds: Optional[float] = metric("wall time of the whole run, figures included")
    stack: Optional[str] = metric(
        "hydra/launcher=stacked: the first stack the run trained in (its label and jobs), or alone", summary=True
    )
    figures: Optional[list[str]] = metric("the figures this run wrote (report.html shows these and no others)")
    notes: Optional[list[str]] = metric("extras that were skipped, and why")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "RunSummary":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in known})


SUMMARY_METRICS = tuple(f.name for f in dataclasses.fields(RunSummary) if f.metadata["summary"] and f.name != "status")


@dataclass
class EvalReport:
    """eval.json: a trained run scored on one split, against PCA with as many components."""

    run: str = metric("the run folder")
    checkpoint: str = metric("the checkpoint scored")
    data: str = metric("the data set")
    split: str = metric("the split scored")
    samples: int = metric("images in the split")
    inputs: str = metric("what the autoencoder and the PCA baseline both saw: clean or corrupted inputs")
    mse: float = metric("MSE per pixel")
    squared_error_per_image: float = metric("squared error summed over an image's pixels")
    psnr: float = metric("PSNR (dB)")
    fvu: Optional[float] = metric("fraction of variance unexplained (squared error over variance about the mean)")
    explained_variance: Optional[float] = metric("explained variance (1 - fvu)")
    cosine_similarity: float = metric("mean cosine similarity of a clean input and its reconstruction")
    l0: float = metric("mean active code units per sample (|code| > l0_threshold)")
    l0_threshold: float = metric("the |code| above which a unit counts as active (the run's trainer.active_threshold)")
    dead_fraction: float = metric("code units never active on the split")
    dense_fraction: float = metric("code units active on more than half of the split")
    code_dim: int = metric("code units")
    input_size: int = metric("values per input")
    compression_ratio: float = metric("input values per code value")
    psnr_noisy: Optional[float] = metric("denoising: PSNR of the corrupted input")
    psnr_denoised: Optional[float] = metric("denoising: PSNR of the reconstruction")
    pca_mse: Optional[float] = metric("MSE per pixel of PCA with code_dim components, fitted on the train split")
    pca_squared_error_per_image: Optional[float] = metric("PCA's squared error per image")
    ae_pca_mse_ratio: Optional[float] = metric("the autoencoder's MSE over PCA's (below 1: better than PCA)")
    probe: Optional[dict[str, Any]] = metric("semi-supervised probe accuracies")
