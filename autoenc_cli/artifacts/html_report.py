"""report.html: one offline page per run with its config, metrics, evaluation and every figure."""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any, Optional

from autoenc_cli.folder_layout import (
    DICTIONARIES_PNG,
    FRONTIER_PNG,
    HYDRA_CONFIG,
    LOSS_RECOVERED_PNG,
    REPORT_HTML,
    RUN_JSON,
    ReportLayout,
    RunLayout,
)
from autoenc_cli.io import atomic_write_bytes, read_json
from autoenc_cli.training.records import EvalReport, RunSummary, descriptions

FIGURE_CAPTIONS = {
    "reconstructions": "Validation inputs (top) and their reconstructions (bottom).",
    "denoising": "Noisy inputs, reconstructions and clean targets.",
    "dictionary": "The image each code unit writes (decoder response to a one-hot code), grey = 0.",
    "latent_map": "Codes of 512 validation samples (rows, sorted by label) by code unit (columns).",
    "latent_scatter": "Validation codes in 2-D (directly, or the first two principal components), by label.",
    "code_density": "How often each code unit is active on the validation split.",
    "loss_curve": "Train and validation loss per epoch.",
    "stages": "Loss across greedy layer-wise stages and fine-tuning.",
}

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; padding: 0 1.5rem; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 0.5rem 0 1.5rem; }
td, th { border-bottom: 1px solid #ddd; padding: 0.2rem 0.8rem; text-align: left; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1rem 0 2rem; } figure img { max-width: 100%; border: 1px solid #eee; }
pre { background: #f6f6f6; padding: 1rem; overflow-x: auto; }
td.doc { color: #666; font-size: 0.9em; } .warning { color: #9a6700; font-weight: bold; }
.status-completed { color: #1a7f37; } .status-failed, .status-interrupted { color: #cf222e; }
.status-pruned { color: #9a6700; } .note { color: #666; font-size: 0.9em; }
"""


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f'<td class="number">{value:.6g}</td>'
    if isinstance(value, int) and not isinstance(value, bool):
        return f'<td class="number">{value}</td>'
    if isinstance(value, list) and value and all(isinstance(item, float) for item in value):
        return f"<td>{', '.join(f'{item:.4g}' for item in value)}</td>"  # a curve, e.g. pca_val_mse_by_k
    return f"<td>{html.escape(str(value))}</td>"


def _table(rows: dict[str, Any], docs: dict[str, str] | None = None) -> str:
    """Key, value and (from the record's field docs) what the key means."""
    docs = docs or {}
    body = "".join(
        f'<tr><th>{html.escape(str(key))}</th>{_cell(value)}<td class="doc">{html.escape(docs.get(key, ""))}</td></tr>'
        for key, value in rows.items()
    )
    return f"<table>{body}</table>"


def _probe_table(probe: dict[str, Any]) -> str:
    counts = [key for key in probe if key != "classifier"]
    columns = sorted({name for key in counts for name in probe[key] if name != "labelled_samples"})
    head = "".join(f"<th>{html.escape(name)}</th>" for name in ["labels per class", "labelled samples", *columns])
    rows = "".join(
        f"<tr><th>{html.escape(key)}</th>{_cell(probe[key]['labelled_samples'])}"
        + "".join(_cell(probe[key].get(name, "")) for name in columns)
        + "</tr>"
        for key in counts
    )
    return f"<p>Accuracy of a {html.escape(probe['classifier'])} classifier.</p><table><tr>{head}</tr>{rows}</table>"


def relative_link(target: Path, page_dir: Path) -> Optional[str]:
    """The link from a page written in ``page_dir`` to ``target``: relative to where the page is, both with
    symbolic links resolved (a link through one would climb out of the wrong folder); None when ``target``
    is not a file, so no page links to what is not there."""
    target = Path(target)
    if not target.is_file():
        return None
    try:
        return Path(os.path.relpath(target.resolve(), Path(page_dir).resolve())).as_posix()
    except ValueError:  # on another drive (Windows): no relative path leads there
        return target.resolve().as_uri()


def _run_cell(row: dict[str, Any], out_dir: Path) -> str:
    """The run's name, linked to its own report.html where it has one."""
    name = html.escape(str(row["run"]))
    link = relative_link(RunLayout(row["path"]).report_html, out_dir)
    if link is None:
        return f'<td>{name} <span class="note">(no {REPORT_HTML})</span></td>'
    return f'<td><a href="{html.escape(link)}">{name}</a></td>'


def page(title: str, parts: list[str], style: str = "") -> bytes:
    """A whole offline HTML page: the shared STYLE plus ``style``, and ``parts`` as its body."""
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}{style}</style></head><body>{''.join(parts)}</body></html>\n"
    ).encode()


def write_comparison_html(out_dir: Path, rows: list[dict[str, Any]], columns: tuple[str, ...]) -> Path:
    """OUT_DIR/report.html for a sweep or a list of runs: the summary table (each run linked to its
    own report), the frontier and the dictionaries side by side."""
    head = "".join(f"<th>{html.escape(column)}</th>" for column in columns)
    body = []
    for row in rows:
        cells = "".join(_cell("" if row[c] is None else row[c]) for c in columns[1:])
        body.append(f"<tr>{_run_cell(row, out_dir)}{cells}</tr>")
    parts = [f"<h1>autoenc comparison: {len(rows)} runs</h1>", f"<table><tr>{head}</tr>{''.join(body)}</table>"]
    report = ReportLayout(out_dir)
    for figure, caption in (
        (FRONTIER_PNG, "Validation MSE against l0: the sparsity-fidelity trade-off."),
        (LOSS_RECOVERED_PNG, "Loss recovered on held-out text against l0: the trade-off as the model sees it."),
        (DICTIONARIES_PNG, "Each run's decoder features."),
    ):
        link = relative_link(report.figures / figure, out_dir)
        if link is not None:
            parts.append(
                f'<figure><img src="{html.escape(link)}" alt="{figure}"><figcaption>{caption}</figcaption></figure>'
            )
    path = report.report_html
    atomic_write_bytes(path, page(f"autoenc comparison {out_dir.name}", parts))
    return path


def _config_section(run_dir: Path) -> list[str]:
    """The config the run used: run.json's record, which a hand edit of .hydra/config.yaml does not change."""
    from autoenc_cli.artifacts.run_folder import RunFolder

    folder = RunFolder(run_dir)
    used = folder.identity().get("config")
    hydra_config = folder.layout.hydra_config
    if used is None:
        return (
            ["<h2>Config</h2>", f"<pre>{html.escape(hydra_config.read_text())}</pre>"] if hydra_config.is_file() else []
        )
    section = ["<h2>Config</h2>", f"<pre>{html.escape(used)}</pre>"]
    if folder.hydra_config_edited():
        section.insert(
            1,
            f'<p class="warning">{HYDRA_CONFIG} was edited after the run started; this is the config the run '
            f"used (from {RUN_JSON}).</p>",
        )
    return section


def write_html_report(run_dir: Path) -> Path:
    """(Re)write RUN_DIR/report.html from what the folder holds; images are linked relatively."""
    layout = RunLayout(run_dir)
    metrics, evaluation = read_json(layout.metrics_json), read_json(layout.eval_json)
    status = str(metrics.get("status", "unknown"))
    parts = [
        f"<h1>autoenc run {html.escape(run_dir.name)}</h1>",
        f'<p>Status: <strong class="status-{html.escape(status)}">{html.escape(status)}</strong></p>',
        "<h2>Metrics</h2>",
        _table(metrics, descriptions(RunSummary)),
    ]
    if evaluation:
        parts += [
            "<h2>Evaluation</h2>",
            _table({k: v for k, v in evaluation.items() if k != "probe"}, descriptions(EvalReport)),
        ]
        if "probe" in evaluation:
            parts += ["<h3>Semi-supervised probe</h3>", _probe_table(evaluation["probe"])]
    order = list(FIGURE_CAPTIONS)  # the captions' order: what was learned first, training curves last
    # Only the figures this run wrote (metrics.json lists them): never another run's leftovers.
    listed = metrics.get("figures")
    paths = [layout.figure(name) for name in listed] if listed is not None else layout.figures.glob("*.png")
    figures = sorted(
        (path for path in paths if path.is_file()),
        key=lambda path: (order.index(path.stem) if path.stem in order else len(order), path.stem),
    )
    if figures:
        parts.append("<h2>Figures</h2>")
    for figure in figures:
        caption = FIGURE_CAPTIONS.get(figure.stem, figure.stem.replace("_", " "))
        parts.append(
            f'<figure><img src="{html.escape(relative_link(figure, run_dir) or "")}" alt="{html.escape(figure.stem)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
    parts += _config_section(run_dir)
    path = layout.report_html
    atomic_write_bytes(path, page(f"autoenc {run_dir.name}", parts))
    return path
