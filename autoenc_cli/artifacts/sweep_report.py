"""Compare finished runs: summary.csv, a console table, the frontier plot and a dictionary grid."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from omegaconf import OmegaConf
from rich.table import Table

from autoenc_cli.artifacts.gallery import GalleryEntry, gallery_of, write_gallery
from autoenc_cli.artifacts.html_report import write_comparison_html
from autoenc_cli.errors import UserError
from autoenc_cli.folder_layout import (
    DICTIONARY_PNG,
    FIGURES,
    HYDRA,
    METRICS_JSON,
    REPORT_FILES,
    REPORT_HTML,
    SUMMARY_CSV,
    ReportLayout,
    RunLayout,
    StudyLayout,
    SweepLayout,
)
from autoenc_cli.io import read_json, write_csv
from autoenc_cli.output_paths import FolderOutputs
from autoenc_cli.training.records import SUMMARY_METRICS

# What write_report writes into its folder, REPORT_FILES and gallery/*.png: a folder holding only these is an
# earlier report, which a new one replaces (autoenc report --overwrite).


def is_report_file(folder: Path, file: Path) -> bool:
    """Whether ``file`` is one ``write_report`` writes into ``folder``."""
    if file.is_symlink():
        return False
    relative = file.relative_to(folder).as_posix()
    return relative in REPORT_FILES or (file.parent == ReportLayout(folder).gallery and file.suffix == ".png")


REPORT_OUTPUTS = FolderOutputs(
    command="report",
    what="a report",
    earlier="a report",
    folder_for=f"for {SUMMARY_CSV}, {REPORT_HTML} and {FIGURES}/",
    example="my_report",
    is_earlier=is_report_file,
    overwrite="--overwrite",
)


@dataclass
class RunRecord:
    path: Path
    overrides: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    label: str = ""
    sparsity: str = ""  # the run's sparsity options as selected (topk, [batch_topk,matryoshka]); "" unknown

    @property
    def status(self) -> str:
        return str(self.metrics.get("status", "missing"))  # completed, pruned (autoenc tune), interrupted, failed


def is_run_folder(path: Path) -> bool:
    run = RunLayout(path)
    return run.hydra.is_dir() or run.metrics_json.is_file()


def _job_order(path: Path) -> tuple[int, str]:
    return (int(path.name), "") if path.name.isdigit() else (1 << 30, path.name)


def find_runs(paths: Sequence[Path]) -> list[Path]:
    """Run folders among ``paths``: each path is a run folder or a sweep folder holding run folders."""
    runs: list[Path] = []
    for path in paths:
        if not path.is_dir():
            raise UserError(f"'{path}' is not a folder; give a sweep folder or run folders")
        if is_run_folder(path) and not SweepLayout(path).multirun_yaml.is_file():
            runs.append(path)
            continue
        children = sorted(
            (child for child in path.iterdir() if child.is_dir() and is_run_folder(child)), key=_job_order
        )
        if not children:
            raise UserError(f"'{path}' holds no run folders (folders with {METRICS_JSON} or {HYDRA}/)")
        runs += children
    return runs


def read_run(path: Path) -> RunRecord:
    record = RunRecord(path)
    run = RunLayout(path)
    if run.hydra_overrides.is_file():
        record.overrides = [str(item) for item in OmegaConf.load(run.hydra_overrides)]
    record.metrics = read_json(run.metrics_json)
    record.sparsity = sparsity_of(run.hydra_config)
    return record


def sparsity_of(hydra_config: Path) -> str:
    """The sparsity options a run's recorded config selects, as a user selects them; "" when unreadable."""
    from autoenc_cli.schema.resolve import stack_label

    try:
        node = OmegaConf.to_container(OmegaConf.load(hydra_config)).get("sparsity")
    except Exception:  # noqa: BLE001 - a run folder without a readable record: no series for it
        return ""
    return stack_label(node) if isinstance(node, dict) else ""


def frontier_points(records: Sequence[RunRecord], key: str) -> list[tuple[str, float, float]]:
    return [(r.label, r.metrics["l0"], r.metrics[key]) for r in records]


def architectures(records: Sequence[RunRecord]) -> Optional[list[str]]:
    """Each run's sparsity options, when the runs compare more than one (each then a line of its own)."""
    names = [record.sparsity for record in records]
    return names if len(set(names)) > 1 and all(names) else None


def label_runs(records: list[RunRecord]) -> None:
    """Label each run by the overrides that differ across the runs (``k=5``), else by its folder."""
    keys = {override.partition("=")[0] for record in records for override in record.overrides}
    values = {key: {dict(o.partition("=")[::2] for o in r.overrides).get(key) for r in records} for key in keys}
    varying = [key for key in sorted(keys) if len(values[key]) > 1]
    for record in records:
        chosen = {key: _short(value) for key, value in (o.partition("=")[::2] for o in record.overrides)}
        # A preset's name says it all (experiment=sparse_topk_5 -> sparse_topk_5).
        parts = [chosen[key] if key == "experiment" else f"{key}={chosen[key]}" for key in varying if key in chosen]
        record.label = " ".join(parts) if parts else record.path.name


def _short(value: str) -> str:
    """A long float (a value ``autoenc tune`` sampled: 0.0031622776601683794) to 4 significant digits."""
    try:
        number = float(value)
    except ValueError:
        return value
    return f"{number:.4g}" if len(value) > 8 and any(mark in value for mark in ".eE") else value


def study_front(folder: Path) -> Optional[tuple[str, set[str]]]:
    """An ``autoenc tune`` study's best trials (its best.json): the summary column that marks them (``best``,
    or ``pareto`` for a study of several objectives) and their run folders' names; None for a grid sweep."""
    record = read_json(StudyLayout(folder).best_json)
    if record.get("front") not in ("best", "pareto"):
        return None
    return str(record["front"]), {str(entry.get("run")) for entry in record.get("best", [])}


# The numbers printed under each run's dictionary: how sparse, how many units unused, how faithful.
PANEL_METRICS = (("l0", "l0", "{:.1f}"), ("dead_fraction", "dead", "{:.0%}"), ("val_fvu", "FVU", "{:.3f}"))


def panel_title(record: RunRecord) -> str:
    numbers = [
        f"{name} {spec.format(record.metrics[key])}"
        for key, name, spec in PANEL_METRICS
        if record.metrics.get(key) is not None
    ]
    return f"{record.label}\n{'  '.join(numbers)}" if numbers else record.label


def pca_at_l0(metrics: dict[str, Any]) -> Optional[float]:
    """PCA's validation MSE with as many components as the run has active units (rounded): the linear
    baseline at the same code budget, from the run's ``pca_val_mse_by_k`` curve."""
    curve, l0 = metrics.get("pca_val_mse_by_k") or [], metrics.get("l0")
    if l0 is None or not curve:
        return None
    return curve[min(max(round(l0), 1), len(curve)) - 1]


def summary_rows(records: Sequence[RunRecord], front: Optional[tuple[str, set[str]]] = None) -> list[dict[str, Any]]:
    """One row per run; with a study's ``front`` a column (best or pareto) marks its best trials."""
    return [
        {
            "run": record.path.name,
            "label": record.label,
            "status": record.status,
            **({front[0]: record.path.name in front[1]} if front else {}),
            "overrides": " ".join(record.overrides),
            **{metric: record.metrics.get(metric) for metric in SUMMARY_METRICS},
            "pca_val_mse_at_l0": pca_at_l0(record.metrics),
            "path": str(record.path),
        }
        for record in records
    ]


TABLE_COLUMNS = (
    "run",
    "label",
    "status",
    "val_mse",
    "val_fvu",
    "l0",
    "dead_fraction",
    "dense_fraction",
    "pca_val_mse_at_l0",
)


# Short headers keep the console table whole in an 80-column log; summary.csv keeps the full names.
SHORT_HEADERS = {
    "val_fvu": "fvu",
    "dead_fraction": "dead",
    "dense_fraction": "dense",
    "pca_val_mse_at_l0": "pca@l0",
    "loss_recovered": "loss rec",
    "lm_kl": "lm kl",
    "active_units": "active",
}
# Fractions to 3 significant digits (the rest to 4), for the same reason.
FRACTION_COLUMNS = ("val_fvu", "dead_fraction", "dense_fraction")


# Runs on a language model's activations (data=activations) are also judged by the model: these columns
# follow the others when any run has them.
LM_COLUMNS = ("loss_recovered", "lm_kl")


# Variational runs are judged by their likelihood: these columns follow the others when any run has an ELBO.
LIKELIHOOD_COLUMNS = ("elbo", "kl", "nll", "active_units")
CODE_COLUMNS = ("val_fvu", "l0", "dead_fraction", "dense_fraction", "pca_val_mse_at_l0")


def table_columns(front: Optional[tuple[str, set[str]]], rows: Sequence[dict[str, Any]] = ()) -> tuple[str, ...]:
    """TABLE_COLUMNS, with a study's best or pareto column after the status, and LM_COLUMNS when any row
    has a loss recovered."""
    columns = TABLE_COLUMNS if front is None else (*TABLE_COLUMNS[:3], front[0], *TABLE_COLUMNS[3:])
    if any(row.get("loss_recovered") is not None for row in rows):
        columns = (*columns, *LM_COLUMNS)
    if any(row.get("elbo") is not None for row in rows):  # a dense Gaussian code: its l0 says nothing
        columns = (*(column for column in columns if column not in CODE_COLUMNS), *LIKELIHOOD_COLUMNS)
    return columns


def summary_table(rows: Sequence[dict[str, Any]], title: str, columns: Sequence[str] = TABLE_COLUMNS) -> Table:
    table = Table(title=title, header_style="bold")
    for column in columns:
        left = column in ("label", "status")
        table.add_column(SHORT_HEADERS.get(column, column), justify="left" if left else "right", overflow="fold")
    for row in rows:
        table.add_row(*[_cell(row[column], 3 if column in FRACTION_COLUMNS else 4) for column in columns])
    return table


def _cell(value: Any, digits: int) -> str:
    if isinstance(value, bool):
        return "*" if value else ""  # a study's best / pareto mark
    return f"{value:.{digits}g}" if isinstance(value, float) else ("" if value is None else str(value))


def gallery_entries(records: Sequence[RunRecord]) -> list[GalleryEntry]:
    """The runs with a ``gallery.caption``, in sweep order."""
    entries = []
    for record in records:
        gallery = gallery_of(record.path)
        if gallery is not None:
            panels = [str(panel) for panel in gallery.get("panels") or ["reconstructions"]]
            metrics = {**record.metrics, "pca_val_mse_at_l0": pca_at_l0(record.metrics)}
            entries.append(GalleryEntry(record.label, record.path, str(gallery["caption"]), panels, metrics))
    return entries


def write_report(paths: Sequence[Path], out_dir: Path) -> tuple[list[dict[str, Any]], Table]:
    """Build the comparison of the runs under ``paths`` into ``out_dir``; returns the rows and table.
    Runs with a ``gallery.caption`` also get a row on ``out_dir``/gallery.html.

    An ``autoenc tune`` study folder (one path, with best.json) also gets its best trials marked: a
    ``best`` or ``pareto`` column, and highlighted points on the frontier plot."""
    from autoenc_cli.artifacts import figures

    records = [read_run(path) for path in find_runs(paths)]
    label_runs(records)
    front = study_front(paths[0]) if len(paths) == 1 else None
    rows = summary_rows(records, front)
    report = ReportLayout(out_dir)
    write_csv(report.summary_csv, rows)
    completed = [r for r in records if r.status == "completed"]
    variational = [r for r in completed if r.metrics.get("kl") is not None]
    # A variational run's code is dense by design: its trade-off is rate against distortion, not l0.
    finished = [r for r in completed if r.metrics.get("l0") is not None and r not in variational]
    front_label = "Pareto front (the study's objectives)" if front and front[0] == "pareto" else "best trial"
    if finished:
        # The runs share their data, so any run's PCA curve serves; the longest reaches the largest code.
        pca_curve = max((r.metrics.get("pca_val_mse_by_k") or [] for r in finished), key=len)
        # FVU where every run has it (scale-free: comparable across data); PCA's curve in the same units.
        by_fvu = all(r.metrics.get("val_fvu") and r.metrics.get("val_mse") for r in finished)
        if by_fvu and pca_curve:
            variance = finished[0].metrics["val_mse"] / finished[0].metrics["val_fvu"]  # per value, on the split
            pca_curve = [mse / variance for mse in pca_curve]
        figures.frontier(
            report.frontier,
            frontier_points(finished, "val_fvu" if by_fvu else "val_mse"),
            pca_curve,
            front=[index for index, r in enumerate(finished) if front and r.path.name in front[1]],
            front_label=front_label,
            fidelity=figures.VAL_FVU if by_fvu else figures.VAL_MSE,
            series=architectures(finished),
        )
    scored = [r for r in finished if r.metrics.get("loss_recovered") is not None]
    if scored:  # runs on a language model's activations: fidelity as the model sees it
        figures.frontier(
            report.loss_recovered,
            frontier_points(scored, "loss_recovered"),
            front=[index for index, r in enumerate(scored) if front and r.path.name in front[1]],
            front_label=front_label,
            fidelity=figures.LOSS_RECOVERED,
            series=architectures(scored),
        )
    if variational:
        points = [(r.label, r.metrics["kl"], r.metrics["elbo_reconstruction"]) for r in variational]
        figures.rate_distortion(report.rate_distortion, points)
    dictionaries: list[tuple[str, Optional[Path]]] = [
        (panel_title(r), RunLayout(r.path).figure(DICTIONARY_PNG)) for r in records
    ]
    if any(path.is_file() for _, path in dictionaries):
        figures.image_panels(report.dictionaries, dictionaries, "Decoder features per run")
    else:  # vectors and activations have no image layout: a page of "no figure" panels says nothing
        report.dictionaries.unlink(missing_ok=True)
    columns = table_columns(front, rows)
    write_comparison_html(out_dir, rows, columns)
    write_gallery(out_dir, gallery_entries(records))
    return rows, summary_table(rows, f"{len(records)} runs in {out_dir}", columns)
