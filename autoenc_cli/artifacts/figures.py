"""The figures that explain what a run learned. Matplotlib runs headless (Agg)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from torchvision.utils import make_grid  # noqa: E402

DPI = 110


def _to_image(grid: torch.Tensor) -> Any:
    """(C, H, W) in [0, 1] -> an array imshow understands (gray for one channel)."""
    grid = grid.detach().float().clamp(0, 1).cpu()
    return grid[0].numpy() if grid.shape[0] == 1 else grid.permute(1, 2, 0).numpy()


class NotDrawable(ValueError):
    """This run's data cannot be drawn this way; the message says why, and stands alone as a note."""


def displayable(images: torch.Tensor) -> torch.Tensor:
    """Images as gray (1 channel) or colour (3); any other channel count shows its first channel in gray
    (a channel mean can cancel out, e.g. an image and its negative). Vectors (N x D) are refused."""
    if images.ndim != 4:
        raise NotDrawable(f"vector data (D={images.shape[-1]}) has no image layout")
    images = images.detach().float().cpu()
    return images if images.shape[1] in (1, 3) else images[:, :1]


def _show(ax: Any, grid: torch.Tensor, title: Optional[str] = None) -> None:
    ax.imshow(_to_image(grid), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_ylabel(title)


def _save(figure: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(figure)
    return path


def image_rows(path: Path, rows: Sequence[tuple[str, torch.Tensor]], title: str) -> Path:
    """Named rows of images, one above the other (e.g. input / reconstruction)."""
    count = rows[0][1].shape[0]
    figure, axes = plt.subplots(len(rows), 1, figsize=(min(count, 16) * 0.9, 1.1 * len(rows) + 0.4), squeeze=False)
    for ax, (name, images) in zip(axes[:, 0], rows):
        _show(ax, make_grid(displayable(images), nrow=count, padding=1, pad_value=1.0), name)
    axes[0, 0].set_title(title)
    return _save(figure, path)


def reconstructions(path: Path, inputs: torch.Tensor, outputs: torch.Tensor) -> Path:
    return image_rows(path, [("input", inputs), ("reconstruction", outputs)], "Validation samples and reconstructions")


def denoising(path: Path, noisy: torch.Tensor, reconstructions: torch.Tensor, clean: torch.Tensor) -> Path:
    rows = [("noisy input", noisy), ("reconstruction", reconstructions), ("clean target", clean)]
    return image_rows(path, rows, "Denoising: noisy validation inputs, reconstructions, clean targets")


def latent_map(path: Path, codes: torch.Tensor, labels: Optional[torch.Tensor]) -> Path:
    """The codes of a batch as an image: samples (sorted by label when known) x code units."""
    codes = codes.detach().float().cpu()
    figure, ax = plt.subplots(figsize=(min(max(codes.shape[1] / 12, 4), 12), 6))
    ylabel = "validation sample"
    if labels is not None:
        labels = labels.cpu()
        order = torch.argsort(labels, stable=True)
        codes, labels = codes[order], labels[order]
        ylabel += " (sorted by label)"
        starts = [0] + (torch.nonzero(labels[1:] != labels[:-1]).flatten() + 1).tolist()
        ax.set_yticks(starts, [str(int(labels[start])) for start in starts], fontsize=7)
    limit = codes.abs().max().item() or 1.0
    signed = bool((codes < 0).any())
    image = ax.imshow(
        codes.numpy(),
        aspect="auto",
        interpolation="nearest",
        cmap="RdBu_r" if signed else "viridis",
        vmin=-limit if signed else 0,
        vmax=limit,
    )
    figure.colorbar(image, ax=ax, label="activation")
    ax.set_xlabel("code unit")
    ax.set_ylabel(ylabel)
    ax.set_title(f"Latent codes of {codes.shape[0]} validation samples")
    return _save(figure, path)


def dictionary(
    path: Path,
    atoms: torch.Tensor,
    firing_frequency: Optional[torch.Tensor] = None,
    active_threshold: float = 0.0,
    max_units: int = 256,
) -> Path:
    """Each code unit's decoder feature as a tile, scaled per tile by its largest |value| (grey = 0).

    With ``firing_frequency`` (per unit, on the validation split) the most frequently active units come
    first, each tile is labelled with its frequency, and dead units (never active) come last, framed and
    hatched in red: an untrained unit's decoder column is initial noise, not a learned feature.
    """
    total = atoms.shape[0]
    order = torch.arange(total)
    if firing_frequency is not None:
        firing_frequency = firing_frequency.detach().float().cpu()
        order = torch.argsort(firing_frequency, descending=True, stable=True)[:max_units]
    atoms = displayable(atoms.detach().float().cpu()[order[:max_units]])
    scale = atoms.flatten(1).abs().amax(dim=1).clamp_min(1e-12).view(-1, *([1] * (atoms.ndim - 1)))
    tiles = (atoms / scale + 1) / 2
    count, height, width = tiles.shape[0], tiles.shape[-2], tiles.shape[-1]
    columns = math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    labelled = firing_frequency is not None
    # White margins around every tile; the top one holds the frequency label.
    gap, top = max(1, width // 14), max(1, width // 14) + (math.ceil(height * 0.3) if labelled else 0)
    slots = torch.ones(rows * columns, tiles.shape[1], height + top + gap, width + 2 * gap)
    slots[:count, :, top : top + height, gap : gap + width] = tiles
    slot_height, slot_width = slots.shape[-2], slots.shape[-1]
    grid = slots.view(rows, columns, -1, slot_height, slot_width).permute(2, 0, 3, 1, 4).flatten(3).flatten(1, 2)
    figure, ax = plt.subplots(figsize=(max(columns * 0.62, 3), max(rows * (0.62 + 0.12 * labelled), 3)))
    _show(ax, grid)
    title = f"Decoder features of {count} code units"
    if total > count:
        title = f"Decoder features of {count} of {total} code units"
    if labelled:
        frequency = firing_frequency[order]
        active = f"|code| > {active_threshold:g}" if active_threshold > 0 else "non-zero"
        dead_total = int((firing_frequency == 0).sum())
        title += f", most often active first\n(label: fraction of validation samples with {active})"
        if dead_total:
            units = "unit" if dead_total == 1 else "units"
            shown = "shown last" if total == count else f"{int((frequency == 0).sum())} of them shown last"
            title += f"\n{dead_total} dead {units} (never active on the validation split) {shown}, marked red"
        for index, value in enumerate(frequency.tolist()):
            left, upper = (index % columns) * slot_width, (index // columns) * slot_height
            dead = value == 0
            ax.text(
                left + slot_width / 2,
                upper + top - 0.5,
                "dead" if dead else f"{value:.2g}",
                ha="center",
                va="bottom",
                fontsize=5,
                color="red" if dead else "black",
            )
            if dead:
                corner = (left + gap - 0.5, upper + top - 0.5)
                ax.add_patch(Rectangle(corner, width, height, fill=False, edgecolor="red", hatch="///", linewidth=1.2))
    ax.set_title(title, fontsize=8 if labelled else None)
    return _save(figure, path)


def loss_curve(path: Path, history: Sequence[dict[str, Any]]) -> Path:
    epochs = [row["epoch"] for row in history]
    figure, ax = plt.subplots(figsize=(6, 4))
    ax.plot(epochs, [row["train_loss"] for row in history], marker=".", label="train loss")
    ax.plot(epochs, [row["val_loss"] for row in history], marker=".", label="validation loss")
    for previous, row in zip(history, history[1:]):
        if row["stage"] != previous["stage"]:
            ax.axvline(row["epoch"] - 0.5, color="grey", linestyle=":", linewidth=1)
    return _save(_finish_loss_axes(figure, ax, history, "loss", "Loss"), path)


def _finish_loss_axes(figure: Any, ax: Any, history: Sequence[dict[str, Any]], ylabel: str, title: str) -> Any:
    """Log scale when every loss is positive, labels, grid and legend."""
    if all(row["train_loss"] > 0 and row["val_loss"] > 0 for row in history):
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return figure


def code_density(path: Path, firing_frequency: torch.Tensor) -> Path:
    """Histogram of per-unit firing frequency on a log axis, dead units counted apart."""
    frequency = firing_frequency.detach().float().cpu()
    alive = frequency[frequency > 0]
    figure, ax = plt.subplots(figsize=(6, 4))
    if alive.numel():
        low = math.floor(math.log10(alive.min().item()) * 4) / 4
        edges = torch.logspace(min(low, -0.25), 0, steps=max(int((0 - low) * 8), 8) + 1).numpy()
        ax.hist(alive.numpy(), bins=edges, color="tab:blue", edgecolor="white")
    ax.set_xscale("log")
    ax.set_xlabel("firing frequency (fraction of validation samples a unit is non-zero on)")
    ax.set_ylabel("code units")
    dead = int((frequency == 0).sum())
    ax.set_title(f"Code density: {frequency.numel()} units, {dead} dead, {int((frequency > 0.5).sum())} dense (>0.5)")
    ax.grid(alpha=0.3)
    return _save(figure, path)


MAX_NAMED_POINTS = 8


@dataclass(frozen=True)
class Fidelity:
    """What a frontier plot measures against l0: the y axis, and which way is better."""

    label: str
    title: str
    higher_is_better: bool = False
    log_scale: bool = True  # when every value is positive


VAL_MSE = Fidelity("validation MSE per pixel", "Sparsity-fidelity frontier")
VAL_FVU = Fidelity("validation FVU (fraction of variance unexplained)", "Sparsity-fidelity frontier")
LOSS_RECOVERED = Fidelity(
    "loss recovered on held-out text (1: the model's own loss)",
    "Sparsity-fidelity frontier on the language model",
    higher_is_better=True,
    log_scale=False,
)


def non_dominated(
    points: Sequence[tuple[str, float, float]], higher_is_better: bool = False
) -> list[tuple[str, float, float]]:
    """The points (label, l0, y) that no other point beats on both l0 and y (lower y is better unless
    ``higher_is_better``), in order of l0."""
    sign = -1 if higher_is_better else 1
    kept: list[tuple[str, float, float]] = []
    for point in sorted(points, key=lambda point: (point[1], sign * point[2])):
        if not kept or sign * point[2] < sign * kept[-1][2]:
            kept.append(point)
    return kept


def frontier(
    path: Path,
    points: Sequence[tuple[str, float, float]],
    pca_mse_by_k: Optional[Sequence[float]] = None,
    front: Sequence[int] = (),
    front_label: str = "Pareto front",
    fidelity: Fidelity = VAL_MSE,
    series: Optional[Sequence[str]] = None,
) -> Path:
    """``fidelity`` (val_mse unless given) against l0 across runs: the sparsity-fidelity trade-off; with
    ``pca_mse_by_k`` (entry i: PCA with i + 1 components) PCA's MSE against its number of components, the
    linear reference.

    ``front`` (indices into ``points``: an ``autoenc tune`` study's Pareto front or best trial) is drawn
    highlighted, joined by a step line where it is a trade-off curve in this plane (fidelity improving as l0
    grows). A study's scattered trials are not joined; a grid sweep's runs are, in order of l0.

    ``series`` (one name per point, e.g. each run's sparsity options) draws each series as its own line in
    order of l0, named in the legend: architectures compared on one plane."""
    figure, ax = plt.subplots(figsize=(6.5, 4.5))
    sign = -1 if fidelity.higher_is_better else 1
    marked = sorted((points[index] for index in set(front)), key=lambda point: (point[1], sign * point[2]))
    ordered = sorted(points, key=lambda point: point[1])
    envelope = non_dominated(ordered, fidelity.higher_is_better)
    if series is not None:
        for name in dict.fromkeys(series):  # in order of first appearance
            line = sorted((point for point, of in zip(points, series) if of == name), key=lambda point: point[1])
            ax.plot([p[1] for p in line], [p[2] for p in line], marker="o", zorder=2, label=name)
    else:
        if not marked and len(envelope) > 1:  # the runs no other run beats on both l0 and y: the measured frontier
            ax.plot([point[1] for point in envelope], [point[2] for point in envelope], color="lightgrey", zorder=1)
        ax.scatter([point[1] for point in ordered], [point[2] for point in ordered], zorder=2, label="runs (l0)")
    if marked:
        xs, ys = [point[1] for point in marked], [point[2] for point in marked]
        if len(marked) > 1 and all(sign * later <= sign * earlier for earlier, later in zip(ys, ys[1:])):
            ax.step(xs, ys, where="post", color="tab:red", linewidth=1.2, zorder=3)
        ax.scatter(xs, ys, s=90, facecolors="none", edgecolors="tab:red", linewidths=1.8, zorder=4, label=front_label)
    # Every run named while they fit; beyond that only the frontier's and the marked ones, which matter.
    named = ordered if len(ordered) <= MAX_NAMED_POINTS else [p for p in ordered if p in envelope or p in marked]
    for label, l0, value in named if series is None else []:  # a series' legend names its points
        ax.annotate(label, (l0, value), textcoords="offset points", xytext=(4, 4), fontsize=7)
    values = [value for _, _, value in ordered]
    if pca_mse_by_k:
        # Up to a little past the densest run, so a long curve does not squeeze the runs into a corner.
        shown = list(pca_mse_by_k[: max(math.ceil(1.5 * max(point[1] for point in ordered)), 2)])
        ax.plot(range(1, len(shown) + 1), shown, color="dimgrey", linestyle="--", label="PCA (k components)")
        values += shown
    if pca_mse_by_k or marked or series is not None:
        ax.legend(fontsize=8)
    if fidelity.log_scale and values and all(value > 0 for value in values):
        ax.set_yscale("log")
    ax.set_xlabel("l0 (mean active code units per validation sample)" + ("; k for PCA" if pca_mse_by_k else ""))
    ax.set_ylabel(fidelity.label)
    ax.set_title(fidelity.title)
    ax.grid(alpha=0.3)
    return _save(figure, path)


def image_panels(path: Path, panels: Sequence[tuple[str, Optional[Path]]], title: str) -> Path:
    """Saved figures side by side in a grid, each titled; a missing image shows as a note."""
    columns = min(len(panels), 4)
    rows = math.ceil(len(panels) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4 * columns, 4 * rows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (label, image_path) in zip(axes.flat, panels):
        if image_path is not None and image_path.is_file():
            ax.imshow(plt.imread(image_path))
        else:
            ax.text(0.5, 0.5, "no figure", ha="center", va="center")
        ax.set_title(label, fontsize=9)
    figure.suptitle(title)
    return _save(figure, path)


def stages(path: Path, history: Sequence[dict[str, Any]]) -> Path:
    """Train and validation loss across the phases of a layer-wise schedule, one colour per stage."""
    figure, ax = plt.subplots(figsize=(7, 4))
    names = list(dict.fromkeys(row["stage"] for row in history))
    colours = plt.get_cmap("tab10")
    for index, name in enumerate(names):
        rows = [row for row in history if row["stage"] == name]
        epochs = [row["epoch"] for row in rows]
        ax.plot(epochs, [row["train_loss"] for row in rows], color=colours(index), linestyle="--", alpha=0.7)
        ax.plot(epochs, [row["val_loss"] for row in rows], color=colours(index), marker=".", label=name)
        ax.axvspan(epochs[0] - 0.5, epochs[-1] + 0.5, color=colours(index), alpha=0.06)
    title = "Loss across layer-wise stages and fine-tuning"
    return _save(_finish_loss_axes(figure, ax, history, "loss (dashed: train, solid: validation)", title), path)


def latent_scatter(path: Path, codes: torch.Tensor, labels: Optional[torch.Tensor]) -> Path:
    """Validation codes in 2-D (directly, or their first two principal components), coloured by label."""
    codes = codes.detach().double().cpu()
    if codes.shape[1] == 1:  # a 1-unit code: its value against the label (or a strip), with jitter
        offsets = labels.cpu().double() if labels is not None else torch.zeros(codes.shape[0], dtype=torch.double)
        jitter = (
            torch.rand(codes.shape[0], generator=torch.Generator().manual_seed(0), dtype=torch.double) - 0.5
        ) * 0.3
        points, axis_names = torch.stack([codes[:, 0], offsets + jitter], dim=1), ("code unit 1", "label (jittered)")
    elif codes.shape[1] == 2:
        points, axis_names = codes, ("code unit 1", "code unit 2")
    else:
        centred = codes - codes.mean(dim=0)
        _, _, vh = torch.linalg.svd(centred, full_matrices=False)
        points, axis_names = centred @ vh[:2].T, ("principal component 1", "principal component 2")
        if points.shape[1] < 2:  # fewer samples than two components (a one-image split): pad with zeros
            points = torch.cat([points, torch.zeros(points.shape[0], 2 - points.shape[1], dtype=points.dtype)], dim=1)
    figure, ax = plt.subplots(figsize=(6, 5.5))
    if labels is None:
        ax.scatter(points[:, 0].numpy(), points[:, 1].numpy(), s=4, alpha=0.6)
    else:
        labels = labels.cpu()
        for value in torch.unique(labels).tolist():
            chosen = labels == value
            ax.scatter(points[chosen, 0].numpy(), points[chosen, 1].numpy(), s=4, alpha=0.7, label=str(value))
        ax.legend(title="label", markerscale=3, fontsize=7, loc="best")
    ax.set_xlabel(axis_names[0])
    ax.set_ylabel(axis_names[1])
    how = {1: "a 1-D code", 2: "2-D codes"}.get(codes.shape[1], f"2-D PCA of {codes.shape[1]}-D codes")
    ax.set_title(f"Validation codes ({how})")
    return _save(figure, path)


def samples(path: Path, images: torch.Tensor) -> Path:
    """A variational model's draws from its prior, decoded: what it generates."""
    figure, ax = plt.subplots(figsize=(6, 6))
    _show(ax, make_grid(displayable(images), nrow=math.ceil(math.sqrt(images.shape[0])), padding=1, pad_value=1.0))
    ax.set_title("Samples from the prior (the decoder's mean for z ~ N(0, I))")
    return _save(figure, path)


def interpolations(path: Path, paths: torch.Tensor) -> Path:
    """Rows of decoded codes on the straight line between two validation inputs' codes (pairs, steps, ...),
    each row from one input's posterior mean to the other's."""
    rows = [(f"pair {index + 1}", row) for index, row in enumerate(paths)]
    return image_rows(path, rows, "Interpolations in code space between two validation inputs")


def latent_manifold(path: Path, images: torch.Tensor, quantiles: torch.Tensor) -> Path:
    """A 2-D code's plane decoded on a grid of the prior's quantiles (Kingma & Welling 2014, Fig. 4): image
    (row i, column j) decodes z = (quantile j, quantile i)."""
    figure, ax = plt.subplots(figsize=(7, 7))
    _show(ax, make_grid(displayable(images), nrow=len(quantiles), padding=0))
    ax.set_title("The learned manifold: codes on a grid of the prior's quantiles, decoded")
    ax.set_xlabel(f"code unit 1 ({quantiles[0]:.2f} ... {quantiles[-1]:.2f})")
    ax.set_ylabel(f"code unit 2 ({quantiles[0]:.2f} ... {quantiles[-1]:.2f})")
    return _save(figure, path)


def rate_distortion(path: Path, points: Sequence[tuple[str, float, float]]) -> Path:
    """Variational runs on the rate-distortion plane (Alemi et al. 2018): each run's KL term (rate) against
    its reconstruction term (distortion), both nats per sample; the diagonals are lines of equal ELBO."""
    figure, ax = plt.subplots(figsize=(6.5, 4.5))
    ordered = sorted(points, key=lambda point: point[1])
    rates, distortions = [point[1] for point in ordered], [point[2] for point in ordered]
    ax.plot(rates, distortions, color="lightgrey", zorder=1)
    ax.scatter(rates, distortions, zorder=2)
    for label, rate, distortion in ordered if len(ordered) <= MAX_NAMED_POINTS else ordered[:: len(ordered) // 8]:
        ax.annotate(label, (rate, distortion), textcoords="offset points", xytext=(4, 4), fontsize=7)
    low, high = ax.get_xlim()
    for elbo in sorted({round(rate + distortion, -1) for rate, distortion in zip(rates, distortions)})[:6]:
        ax.plot([low, high], [elbo - low, elbo - high], color="tab:blue", alpha=0.15, linewidth=0.8, zorder=0)
    ax.set_xlim(low, high)
    ax.set_xlabel("rate: KL(q(z|x) || p(z)), nats per sample")
    ax.set_ylabel("distortion: -E_q log p(x|z), nats per sample")
    ax.set_title("Rate-distortion of the variational runs (faint lines: equal -ELBO)")
    ax.grid(alpha=0.3)
    return _save(figure, path)
