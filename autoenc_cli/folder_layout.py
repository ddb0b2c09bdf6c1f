"""The name of every file and folder autoenc writes: no other module spells one. A tracker (logger=...)
names its own files in its module (``autoenc_cli.loggers``), so a new tracker is one module and one YAML;
they are shown here as ``(logger=...)``.

A run folder (``autoenc train``; also each job of a sweep and each trial of a study)::

    RUN_DIR/
      run.json              who the run is: its id, when it started, the config it uses
      metrics.json          how it ended and, once completed, its final numbers
      history.csv           one row per epoch
      checkpoints/          last.pt, best.pt, and one per stage of a multi-phase schedule (stage1.pt, finetune.pt)
      figures/              reconstructions.png, denoising.png, latent_map.png, dictionary.png, loss_curve.png,
                            code_density.png, latent_scatter.png, stages.png (those the run can draw)
      report.html           the run's page
      eval.json             ``autoenc eval`` without out=
      train.log             the log (Hydra's job logging: ${hydra.job.name}.log)
      .hydra/               config.yaml, overrides.yaml, hydra.yaml (Hydra's record of the command)
        resumed/<time>/     the same record of each resume
      tensorboard/          (logger=tensorboard, unless logger.tensorboard.dir says otherwise)
      wandb/                (logger=wandb: W&B's own folder, in the run folder it is given)

A comparison report (``autoenc report``; a sweep and a study write theirs into their own folder)::

    REPORT_DIR/
      summary.csv           one row per run
      report.html           the comparison page
      figures/              frontier.png, dictionaries.png (runs with image data), loss_recovered.png (runs on an
                            activation cache), rate_distortion.png (variational runs)
      gallery.html          the runs with a gallery.caption, when there are any
      gallery/              copies of their panels (*.png)

A sweep folder (``autoenc train -m``): a report folder, plus::

    SWEEP_DIR/
      multirun.yaml         Hydra's record of the sweep
      0/, 1/, ...           one run folder per job
      mlflow.json           (logger=mlflow: the sweep's parent run)
      .mlflow.lock          (logger=mlflow: one job at a time creates that parent run)

A tune study folder (``autoenc tune``): a sweep folder without multirun.yaml (a trial per run folder), plus::

    STUDY_DIR/
      study.db              the Optuna study (SQLite)
      tune.json             the command that started it (a resume must repeat it)
      best.json             the best trial, or the Pareto front

An export folder (``autoenc export``)::

    OUT/
      model.safetensors     the network's tensors
      config.json           everything needed to rebuild the network

An activation cache (``autoenc harvest``; ``data=activations`` trains on it)::

    CACHE_DIR/
      manifest.json         what the cache holds (model and its fingerprint, hooks, widths, dtype, context
                            size, text and its hash, seed) and its finished shards; written last, atomically
      heldout_tokens.npy    (contexts, context size) token ids of held-out text, never in a shard: loss recovered
      <hook>/               one folder per hook, named by its module path (model.layers.15)
        shard_00000.npy     (rows, width) activations, one row per token, rows shuffled within the shard

The output root (``output_root``), for logger=mlflow with its default store::

    OUTPUT_ROOT/
      mlflow.db             (logger=mlflow: the tracking store, SQLite)
      mlartifacts/          (logger=mlflow: its runs' artifacts)
      .mlflow.lock          (logger=mlflow: one process at a time creates the store's tables and experiment)

Low level on purpose: this module imports nothing of autoenc_cli, so every part of it may import this one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# A run folder.
RUN_JSON = "run.json"
METRICS_JSON = "metrics.json"
HISTORY_CSV = "history.csv"
CHECKPOINTS = "checkpoints"
CHECKPOINT_SUFFIX = ".pt"
LAST, BEST = "last", "best"  # the checkpoints every run keeps; a multi-phase schedule adds one per stage
FIGURES = "figures"
REPORT_HTML = "report.html"
EVAL_JSON = "eval.json"
TRAIN_LOG = "train.log"
HYDRA = ".hydra"
CONFIG_YAML = "config.yaml"
OVERRIDES_YAML = "overrides.yaml"
HYDRA_YAML = "hydra.yaml"
RESUMED = "resumed"

# A run's figures/.
RECONSTRUCTIONS_PNG = "reconstructions.png"
DENOISING_PNG = "denoising.png"
LATENT_MAP_PNG = "latent_map.png"
DICTIONARY_PNG = "dictionary.png"
LOSS_CURVE_PNG = "loss_curve.png"
CODE_DENSITY_PNG = "code_density.png"
LATENT_SCATTER_PNG = "latent_scatter.png"
STAGES_PNG = "stages.png"
SAMPLES_PNG = "samples.png"  # variational models: draws from the prior
INTERPOLATIONS_PNG = "interpolations.png"  # variational models: decoded paths between two inputs' codes
LATENT_MANIFOLD_PNG = "latent_manifold.png"  # variational models with a 2-D code: the decoded code plane

# A report, sweep and study folder.
SUMMARY_CSV = "summary.csv"
FRONTIER_PNG = "frontier.png"
LOSS_RECOVERED_PNG = "loss_recovered.png"
DICTIONARIES_PNG = "dictionaries.png"
RATE_DISTORTION_PNG = "rate_distortion.png"  # variational runs: KL (rate) against reconstruction (distortion)
GALLERY_HTML = "gallery.html"
GALLERY = "gallery"
MULTIRUN_YAML = "multirun.yaml"
STUDY_DB = "study.db"
TUNE_JSON = "tune.json"
BEST_JSON = "best.json"

# An export folder.
EXPORT_TENSORS = "model.safetensors"
EXPORT_CONFIG = "config.json"
SAELENS_TENSORS = "sae_weights.safetensors"  # autoenc export format=saelens: the folder SAELens loads
SAELENS_CONFIG = "cfg.json"

# An activation cache
CACHE_MANIFEST = "manifest.json"
CACHE_HELDOUT = "heldout_tokens.npy"
CACHE_SHARD_PREFIX = "shard_"


def checkpoint_file(name: str) -> str:
    """A checkpoint's file name in checkpoints/: ``last`` -> ``last.pt``."""
    return f"{name}{CHECKPOINT_SUFFIX}"


# Paths inside a folder, as messages name them (``run_dir / LAST_CHECKPOINT`` works too).
LAST_CHECKPOINT = f"{CHECKPOINTS}/{checkpoint_file(LAST)}"
BEST_CHECKPOINT = f"{CHECKPOINTS}/{checkpoint_file(BEST)}"
HYDRA_CONFIG = f"{HYDRA}/{CONFIG_YAML}"
HYDRA_OVERRIDES = f"{HYDRA}/{OVERRIDES_YAML}"
HYDRA_RECORD = f"{HYDRA}/{HYDRA_YAML}"
FRONTIER = f"{FIGURES}/{FRONTIER_PNG}"
LOSS_RECOVERED = f"{FIGURES}/{LOSS_RECOVERED_PNG}"
DICTIONARIES = f"{FIGURES}/{DICTIONARIES_PNG}"
RATE_DISTORTION = f"{FIGURES}/{RATE_DISTORTION_PNG}"

# What only a run writes: a folder holding any of these is a run's, and a new run never writes into it.
RUN_FILES = (RUN_JSON, METRICS_JSON, HISTORY_CSV, CHECKPOINTS)
# What a run folder holds before training starts: a run stopped then leaves nothing worth keeping.
NOTHING_STARTED = frozenset({HYDRA, TRAIN_LOG, RUN_JSON})  # and the trackers' run_folder_entries
# What ``autoenc report`` writes into its folder (besides gallery/*.png).
REPORT_FILES = (SUMMARY_CSV, REPORT_HTML, GALLERY_HTML, FRONTIER, LOSS_RECOVERED, RATE_DISTORTION, DICTIONARIES)


def resumed_record(stamp: str) -> str:
    """Where Hydra's record of a resume goes in the run folder: ``.hydra/resumed/<time>``."""
    return f"{HYDRA}/{RESUMED}/{stamp}"


@dataclass(frozen=True)
class _Folder:
    """A folder of one kind at ``root``; its properties are the paths of its files and subfolders."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))


class RunLayout(_Folder):
    run_json = property(lambda self: self.root / RUN_JSON)
    metrics_json = property(lambda self: self.root / METRICS_JSON)
    history_csv = property(lambda self: self.root / HISTORY_CSV)
    checkpoints = property(lambda self: self.root / CHECKPOINTS)
    last_checkpoint = property(lambda self: self.root / LAST_CHECKPOINT)
    figures = property(lambda self: self.root / FIGURES)
    report_html = property(lambda self: self.root / REPORT_HTML)
    eval_json = property(lambda self: self.root / EVAL_JSON)
    train_log = property(lambda self: self.root / TRAIN_LOG)
    hydra = property(lambda self: self.root / HYDRA)
    hydra_config = property(lambda self: self.root / HYDRA_CONFIG)
    hydra_overrides = property(lambda self: self.root / HYDRA_OVERRIDES)
    hydra_record = property(lambda self: self.root / HYDRA_RECORD)  # hydra.runtime.choices: each group's option

    def checkpoint(self, name: str) -> Path:
        """checkpoints/NAME.pt: ``last``, ``best`` or a stage's name."""
        return self.checkpoints / checkpoint_file(name)

    def figure(self, file: str) -> Path:
        return self.figures / file


class ReportLayout(_Folder):
    summary_csv = property(lambda self: self.root / SUMMARY_CSV)
    report_html = property(lambda self: self.root / REPORT_HTML)
    figures = property(lambda self: self.root / FIGURES)
    frontier = property(lambda self: self.root / FRONTIER)
    loss_recovered = property(lambda self: self.root / LOSS_RECOVERED)
    dictionaries = property(lambda self: self.root / DICTIONARIES)
    rate_distortion = property(lambda self: self.root / RATE_DISTORTION)
    gallery_html = property(lambda self: self.root / GALLERY_HTML)
    gallery = property(lambda self: self.root / GALLERY)


class SweepLayout(ReportLayout):
    multirun_yaml = property(lambda self: self.root / MULTIRUN_YAML)


class StudyLayout(SweepLayout):
    study_db = property(lambda self: self.root / STUDY_DB)
    tune_json = property(lambda self: self.root / TUNE_JSON)
    best_json = property(lambda self: self.root / BEST_JSON)


class CacheLayout(_Folder):
    manifest = property(lambda self: self.root / CACHE_MANIFEST)
    heldout_tokens = property(lambda self: self.root / CACHE_HELDOUT)

    def hook(self, hook: str) -> Path:
        return self.root / hook

    def shard(self, hook: str, index: int) -> Path:
        return self.root / hook / f"{CACHE_SHARD_PREFIX}{index:05d}.npy"


class ExportLayout(_Folder):
    tensors = property(lambda self: self.root / EXPORT_TENSORS)
    config = property(lambda self: self.root / EXPORT_CONFIG)
    saelens_tensors = property(lambda self: self.root / SAELENS_TENSORS)
    saelens_config = property(lambda self: self.root / SAELENS_CONFIG)
