"""Typed results: an evaluation pass, an epoch, a finished run, a scored run.

Every file that reports numbers is derived from these: history.csv (``EpochRecord``), metrics.json
(``RunSummary``), eval.json (``EvalReport``), the sweep summary (the ``RunSummary`` fields marked
``summary``) and the descriptions in report.html (each field's ``doc``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

from autoenc_cli.folder_layout import BEST_CHECKPOINT, EVAL_JSON, HISTORY_CSV, METRICS_JSON, REPORT_HTML


def metric(
    doc: str,
    default: Any = None,
    summary: bool = False,
    kept: Optional[str] = None,
    recorded_as: Optional[str] = None,
) -> Any:
    """A record field with its description (shown in reports) and whether sweep summaries list it.

    A metric is declared once, as a field of ``Evaluation``; the records take it from there (``evaluated``
    below). ``kept``: what a run keeps of it, ``"epoch"`` (every epoch's in history.csv and the last in
    metrics.json) or ``"run"`` (metrics.json only); ``recorded_as``: its name there, ``val_<name>`` unless
    given."""
    metadata = {"doc": doc, "summary": summary, "kept": kept, "recorded_as": recorded_as}
    return field(default=default, metadata=metadata)


def as_dict(record: Any) -> dict[str, Any]:
    """The record's fields in order, without the ones that do not apply (None)."""
    return {f.name: getattr(record, f.name) for f in dataclasses.fields(record) if getattr(record, f.name) is not None}


def carried(source: Any, record_class: type, **given: Any) -> Any:
    """A ``record_class`` with ``given`` values, the rest taken from ``source``'s fields of the same name
    (or, for a field taken from an ``Evaluation``, of the name it has there)."""
    available = {f.name for f in dataclasses.fields(source)}
    values = dict(given)
    for target in dataclasses.fields(record_class):
        for name in (target.name, target.metadata.get("evaluation")):
            if target.name not in values and name in available:
                values[target.name] = getattr(source, name)
    return record_class(**values)


def descriptions(record_class: type) -> dict[str, str]:
    return {f.name: f.metadata.get("doc", "") for f in dataclasses.fields(record_class)}


@dataclass
class Evaluation:
    """One pass over a split (means per sample unless stated): each metric's one declaration, in the order
    a run's records list them."""

    loss: float = metric("reconstruction loss + sparsity penalty", summary=True, kept="epoch")
    reconstruction_loss: float = metric("the loss group's reconstruction term")
    mse: float = metric("mean squared error per pixel against the clean input", summary=True, kept="epoch")
    squared_error_per_image: float = metric("squared error summed over an image's pixels (Hinton & Salakhutdinov)")
    psnr: float = metric("PSNR (dB) of the reconstruction against the clean input (from mse)", kept="run")
    fvu: Optional[float] = metric(
        "fraction of variance unexplained: squared error over the clean input's squared deviation from its mean "
        "on the split, both summed over samples and values (0 perfect, 1 no better than the mean input)",
        summary=True,
        kept="epoch",
    )
    explained_variance: Optional[float] = metric("1 - fvu", summary=True, kept="epoch")
    cosine_similarity: float = metric("mean cosine similarity of a clean input and its reconstruction", kept="epoch")
    penalty: float = metric("the sparsity penalty (0 without one)", summary=True, kept="epoch")
    # The code's statistics keep their names in a run's records: l0, not val_l0.
    l0: float = metric(
        "mean number of active code units per sample (|code| > l0_threshold)",
        summary=True,
        kept="epoch",
        recorded_as="l0",
    )
    l0_threshold: float = metric(
        "the |code| above which a unit counts as active (trainer.active_threshold)",
        kept="run",
        recorded_as="l0_threshold",
    )
    dead_fraction: float = metric(
        "fraction of code units never active on the split", summary=True, kept="epoch", recorded_as="dead_fraction"
    )
    dense_fraction: float = metric(
        "fraction of code units active on more than half of the samples",
        summary=True,
        kept="epoch",
        recorded_as="dense_fraction",
    )
    mean_activation: float = metric("mean |code| per unit and sample", kept="epoch", recorded_as="mean_activation")
    psnr_noisy: Optional[float] = metric(
        "denoising: PSNR (dB) of the corrupted input against the clean one", kept="epoch"
    )
    psnr_denoised: Optional[float] = metric(
        "denoising: PSNR (dB) of the reconstruction against the clean input", kept="epoch"
    )


EVALUATION_FIELDS = {f.name: f for f in dataclasses.fields(Evaluation)}


def evaluated(*names: str, recorded: bool = True) -> list[tuple[str, Any, Any]]:
    """Fields of a record class taken from ``Evaluation``: the metrics ``names``, with their declaration's
    description, named as a run's records name them (``recorded``: val_mse, l0) or as Evaluation does."""
    fields = []
    for name in names:
        declared = EVALUATION_FIELDS[name]
        column = (declared.metadata["recorded_as"] or f"val_{name}") if recorded else name
        metadata = {**declared.metadata, "evaluation": name, "summary": declared.metadata["summary"] and recorded}
        fields.append((column, Optional[float], field(default=None, metadata=metadata)))
    return fields


def own(name: str, kind: Any, doc: str, summary: bool = False) -> tuple[str, Any, Any]:
    """A record class's own field (not a metric of an ``Evaluation``)."""
    return (name, Optional[kind], metric(doc, summary=summary))


# Loss recovered (autoenc_cli.lm.scoring): a run trained on a language model's activation cache, scored by
# splicing its reconstruction into the model at the hook, on the cache's held-out text. metrics.json and
# eval.json both list these, declared here once (a function: each record class gets fields of its own).
def lm_scores() -> list[tuple[str, Any, Any]]:
    return [
        own(
            "loss_recovered",
            float,
            "the language model's loss recovered with the SAE's reconstruction spliced in at the hook, on held-out "
            "text: (lm_ce_zero_ablated - lm_ce_spliced) / (lm_ce_zero_ablated - lm_ce_clean); 1 perfect, 0 no better "
            "than zeroing the activation",
            summary=True,
        ),
        own(
            "lm_kl",
            float,
            "mean KL divergence (nats per token) from the model's clean next-token distribution to the one with the "
            "SAE spliced in, on held-out text (0 perfect)",
            summary=True,
        ),
        own("lm_ce_clean", float, "the language model's next-token cross-entropy (nats per token) on held-out text"),
        own(
            "lm_ce_spliced",
            float,
            "the cross-entropy with the SAE's reconstruction replacing the hook's activation (every position but the "
            "first, the BOS token)",
        ),
        own("lm_ce_zero_ablated", float, "the cross-entropy with the hook's activation replaced by zeros"),
        own(
            "lm_ce_mean_ablated",
            float,
            "the cross-entropy with the hook's activation replaced by its mean over the activation cache",
        ),
        own(
            "lm_heldout_tokens",
            int,
            "held-out tokens (never in the cache) the language model read for the lm_ numbers and loss_recovered: "
            "whole contexts, BOS included; the cross-entropies and KL average over every token predicted",
        ),
    ]


# A variational model's scores (autoenc_cli.training.likelihood): metrics.json has them on the validation split
# (trainer.nll_samples importance samples), eval.json on the split scored (nll_samples=).
def likelihood_scores() -> list[tuple[str, Any, Any]]:
    return [
        own(
            "elbo",
            float,
            "variational models: the evidence lower bound, nats per sample (higher is better): E_q[log p(x|z)] "
            "estimated with the importance samples, minus the exact KL",
            summary=True,
        ),
        own(
            "elbo_reconstruction",
            float,
            "-E_q[log p(x|z)], nats per sample: the ELBO's reconstruction term (distortion)",
            summary=True,
        ),
        own("kl", float, "KL(q(z|x) || p(z)), nats per sample: the ELBO's KL term (rate)", summary=True),
        own(
            "nll",
            float,
            "negative log-likelihood -log p(x), nats per sample, estimated with nll_samples importance samples per "
            "input (Burda et al. 2016; an upper bound that tightens as the samples grow)",
            summary=True,
        ),
        own("nll_samples", int, "importance samples per input behind nll"),
        own(
            "active_units",
            int,
            "code units whose posterior mean varies across the split (variance > 0.01, Burda et al. 2016)",
            summary=True,
        ),
    ]


# What a run keeps of each validation: every epoch's (history.csv), and its last (metrics.json).
EPOCH_METRICS = tuple(name for name, f in EVALUATION_FIELDS.items() if f.metadata["kept"] == "epoch")
RUN_METRICS = tuple(name for name, f in EVALUATION_FIELDS.items() if f.metadata["kept"] in ("epoch", "run"))


def record_class(name: str, doc: str, fields: list, **methods: Any) -> type:
    """A record dataclass made of ``own`` and ``evaluated`` fields (every field defaults to None: absent)."""
    return dataclasses.make_dataclass(name, fields, namespace={"__doc__": doc, "__module__": __name__, **methods})


def _epoch_of(cls: type, stage: str, epoch: int, train_loss: float, val: Evaluation, lr: float, seconds: float) -> Any:
    return carried(val, cls, stage=stage, epoch=epoch, train_loss=train_loss, lr=lr, seconds=seconds)


EpochRecord = record_class(
    "EpochRecord",
    f"One row of {HISTORY_CSV}: an epoch, and its validation.",
    [
        own("stage", str, "the schedule's phase (train, stage1, ..., finetune)"),
        own("epoch", int, "epoch number across all phases, from 1"),
        own("train_loss", float, "mean training loss over the epoch's steps"),
        *evaluated(*EPOCH_METRICS),
        own("lr", float, "learning rate at the end of the epoch"),
        own("seconds", float, "wall time of the epoch, validation included"),
    ],
    of=classmethod(_epoch_of),
)


def _summary_from_dict(cls: type, values: dict[str, Any]) -> Any:
    known = {f.name for f in dataclasses.fields(cls)}
    return cls(**{key: value for key, value in values.items() if key in known})


RunSummary = record_class(
    "RunSummary",
    f"{METRICS_JSON}: how a run ended and, when it completed, its final numbers (its last epoch's validation).",
    [
        own("status", str, "completed, interrupted, failed, or pruned (a tune trial stopped early)", summary=True),
        own("error", str, "why the run failed"),
        own("stopped", str, "where an interrupted run stopped, or after which epoch a tune trial was pruned"),
        own("signal", str, "the signal that interrupted the run"),
        own("train_loss", float, "final epoch's mean training loss"),
        *evaluated(*RUN_METRICS),
        own("best_val_loss", float, "best validation loss of the final phase"),
        own("best_epoch", int, f"epoch of the best validation loss ({BEST_CHECKPOINT})"),
        own("epochs", int, "epochs trained, all phases", summary=True),
        own("code_dim", int, "code units", summary=True),
        own("num_parameters", int, "distinct trainable parameters (a tied weight counts once)"),
        own("train_seconds", float, "time spent in training steps", summary=True),
        own("samples_per_second", float, "training throughput"),
        own("device", str, "where it trained"),
        own("seed", int, "the run's seed"),
        own(
            "pca_val_mse",
            float,
            "validation MSE of PCA with code_dim components on the same split and inputs (corrupted for denoising)",
            summary=True,
        ),
        own(
            "pca_val_mse_by_k",
            list[float],
            "PCA's validation MSE per pixel with k components, as pca_val_mse; entry i is k = i + 1, up to code_dim",
        ),
        *lm_scores(),
        *likelihood_scores(),
        own("wall_seconds", float, "wall time of the whole run, figures included"),
        own(
            "stack",
            str,
            "hydra/launcher=stacked: the first stack the run trained in (its label and jobs), or alone",
            summary=True,
        ),
        own("figures", list[str], f"the figures this run wrote ({REPORT_HTML} shows these and no others)"),
        own("notes", list[str], "extras that were skipped, and why"),
    ],
    from_dict=classmethod(_summary_from_dict),
)

SUMMARY_METRICS = tuple(f.name for f in dataclasses.fields(RunSummary) if f.metadata["summary"] and f.name != "status")

EvalReport = record_class(
    "EvalReport",
    f"{EVAL_JSON}: a trained run scored on one split, against PCA with as many components (and, on an activation "
    "cache, by its language model on held-out text).",
    [
        own("run", str, "the run folder"),
        own("checkpoint", str, "the checkpoint scored"),
        own("data", str, "the data set"),
        own("split", str, "the split scored"),
        own("samples", int, "images in the split"),
        own("inputs", str, "what the autoencoder and the PCA baseline both saw: clean or corrupted inputs"),
        *evaluated("mse", "squared_error_per_image", "psnr", recorded=False),
        *evaluated(
            "fvu",
            "explained_variance",
            "cosine_similarity",
            "l0",
            "l0_threshold",
            "dead_fraction",
            "dense_fraction",
            recorded=False,
        ),
        own("code_dim", int, "code units"),
        own("input_size", int, "values per input"),
        own("compression_ratio", float, "input values per code value"),
        *evaluated("psnr_noisy", "psnr_denoised", recorded=False),
        own("pca_mse", float, "MSE per pixel of PCA with code_dim components, fitted on the train split"),
        own("pca_squared_error_per_image", float, "PCA's squared error per image"),
        own("ae_pca_mse_ratio", float, "the autoencoder's MSE over PCA's (below 1: better than PCA)"),
        *lm_scores(),
        *likelihood_scores(),
        own("probe", dict[str, Any], "semi-supervised probe accuracies"),
    ],
)
