"""gallery.html: the runs of a sweep that carry a ``gallery.caption``, one row each with the figures they
chose, the caption (what the paper or tutorial shows) and the numbers this run measured.

The page and its gallery/ folder (copies of the panels) stand alone: move or share them without the runs."""

from __future__ import annotations

import html
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from omegaconf import OmegaConf

from autoenc_cli.artifacts.html_report import FIGURE_CAPTIONS, page, relative_link
from autoenc_cli.folder_layout import FIGURES, GALLERY, REPORT_HTML, ReportLayout, RunLayout
from autoenc_cli.io import atomic_write_bytes

# The numbers beside each panel, where the run has them: fidelity against PCA with as many components as
# active units, sparsity, unused units, the denoisers' PSNR before and after, and what it cost.
GALLERY_NUMBERS = (
    ("val_mse", "val MSE", "{:.4f}"),
    ("pca_val_mse_at_l0", "PCA with l0 components", "{:.4f}"),
    ("l0", "l0", "{:.1f}"),
    ("dead_fraction", "dead units", "{:.0%}"),
    ("val_psnr_noisy", "PSNR noisy input", "{:.1f} dB"),
    ("val_psnr_denoised", "PSNR denoised", "{:.1f} dB"),
    ("train_seconds", "train time", "{:.0f} s"),
)

GALLERY_STYLE = """
section { border-top: 1px solid #ddd; padding: 0.5rem 0 1rem; }
section h2 { margin: 0.4rem 0; font-size: 1.1rem; } .caption { font-size: 1.05rem; margin: 0.2rem 0; }
.numbers { color: #444; font-variant-numeric: tabular-nums; margin: 0.2rem 0 0.6rem; }
.panels { display: flex; flex-wrap: wrap; gap: 0.8rem; align-items: flex-start; }
.panels figure { margin: 0; flex: 1 1 300px; max-width: 520px; } .missing { color: #cf222e; }
"""


@dataclass
class GalleryEntry:
    label: str
    path: Path
    caption: str
    panels: list[str]
    metrics: dict[str, Any]


def gallery_of(path: Path) -> Optional[dict[str, Any]]:
    """The run's ``gallery`` config node (from .hydra/config.yaml), or None where it has no caption."""
    config_file = RunLayout(path).hydra_config
    if not config_file.is_file():
        return None
    node = OmegaConf.select(OmegaConf.load(config_file), "gallery")
    if node is None or OmegaConf.select(node, "caption") is None:
        return None
    return OmegaConf.to_container(node, resolve=True)  # type: ignore[return-value]


def numbers_line(metrics: dict[str, Any]) -> str:
    return "  ·  ".join(
        f"{name} {spec.format(metrics[key])}" for key, name, spec in GALLERY_NUMBERS if metrics.get(key) is not None
    )


def panel_file(index: int, entry: GalleryEntry, panel: str) -> str:
    """The copy's name in gallery/: its row, the run's label and the figure (03_tutorial_topk_5_dictionary.png)."""
    label = re.sub(r"[^A-Za-z0-9._-]+", "_", entry.label).strip("_")[:60] or entry.path.name
    return f"{index:02d}_{label}_{panel}.png"


def _entry_html(index: int, entry: GalleryEntry, out_dir: Path) -> str:
    figures, run = [], RunLayout(entry.path)
    for panel in entry.panels:
        image = run.figure(f"{panel}.png")
        alt = FIGURE_CAPTIONS.get(panel, panel)
        if image.is_file():
            copy = ReportLayout(out_dir).gallery / panel_file(index, entry, panel)
            shutil.copyfile(image, copy)
            link = html.escape(f"{GALLERY}/{copy.name}")
            figures.append(f'<figure><a href="{link}"><img src="{link}" alt="{html.escape(alt)}"></a></figure>')
        else:
            figures.append(f'<figure class="missing">{FIGURES}/{html.escape(panel)}.png was not written</figure>')
    status = entry.metrics.get("status", "missing")
    warning = "" if status == "completed" else f' <span class="missing">({html.escape(str(status))})</span>'
    report, title = relative_link(run.report_html, out_dir), html.escape(entry.label)
    title = title if report is None else f'<a href="{html.escape(report)}">{title}</a>'  # no link to what is not there
    return (
        f"<section><h2>{title}{warning}</h2>"
        f'<p class="caption">{html.escape(entry.caption)}</p>'
        f'<p class="numbers">{html.escape(numbers_line(entry.metrics))}</p>'
        f'<div class="panels">{"".join(figures)}</div></section>'
    )


def write_gallery(out_dir: Path, entries: Sequence[GalleryEntry]) -> Optional[Path]:
    """OUT_DIR/gallery.html with one section per entry, its panels copied into OUT_DIR/gallery/; with no
    entries, none (and none left from an earlier report into the same folder)."""
    report = ReportLayout(out_dir)
    path, folder = report.gallery_html, report.gallery
    for stale in folder.glob("*.png"):  # panels of an earlier report into the same folder
        stale.unlink()
    if not entries:
        path.unlink(missing_ok=True)
        return None
    folder.mkdir(parents=True, exist_ok=True)
    panels = sum(len(entry.panels) for entry in entries)
    parts = [
        f"<h1>autoenc gallery: {len(entries)} runs, {panels} panels</h1>",
        "<p>Each row: the run's figures, what they show, and the numbers it measured on its validation split. "
        f'The full comparison is in <a href="{REPORT_HTML}">{REPORT_HTML}</a>.</p>',
        *(_entry_html(index, entry, out_dir) for index, entry in enumerate(entries)),
    ]
    atomic_write_bytes(path, page(f"autoenc gallery {out_dir.name}", parts, GALLERY_STYLE))
    return path
