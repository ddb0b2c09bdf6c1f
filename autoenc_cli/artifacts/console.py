"""Console output: live progress bars while training and a final metrics table."""

from __future__ import annotations

from typing import Any, Optional

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from autoenc_cli.folder_layout import METRICS_JSON
from autoenc_cli.training.callbacks import Callback, EpochEnd, PhaseStart, StepEnd

console = Console(stderr=False)


class ProgressBars(Callback):
    """An epoch bar and a step bar with the running loss."""

    def __init__(self, total_epochs: int, completed: int = 0, enabled: bool = True) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            disable=not enabled,
            transient=False,
        )
        self.epochs = self.progress.add_task("epochs", total=total_epochs, completed=completed, status="")
        self.steps: Optional[Any] = None

    def __enter__(self) -> "ProgressBars":
        from rich.errors import LiveError

        try:
            self.progress.start()
        except LiveError:  # another run's bars are on screen (parallel tune trials): this one trains without
            pass
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.stop()

    def on_phase_start(self, event: PhaseStart) -> None:
        if self.steps is None:
            self.steps = self.progress.add_task("steps", total=event.steps_per_epoch, status="")
        self.progress.update(self.steps, total=event.steps_per_epoch, completed=0, description=f"{event.name} steps")

    def on_step(self, event: StepEnd) -> None:
        self.progress.update(self.steps, completed=event.step, status=f"loss {event.loss:.5f}")

    def on_epoch_end(self, event: EpochEnd) -> None:
        record = event.record
        self.progress.update(self.steps, completed=self.progress.tasks[self.steps].total)
        self.progress.update(
            self.epochs,
            advance=1,
            status=f"train {record.train_loss:.5f}  val {record.val_loss:.5f}  lr {record.lr:.2g}",
        )


def metrics_table(metrics: dict[str, Any], title: str = "metrics") -> Table:
    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        if isinstance(value, float):
            text = f"{value:.6g}"
        elif isinstance(value, list) and len(value) > 8 and all(isinstance(item, float) for item in value):
            text = f"{len(value)} values (see {METRICS_JSON})"  # a curve, e.g. pca_val_mse_by_k
        else:
            text = str(value)
        table.add_row(key, text)
    return table


def probe_table(probe: dict[str, Any]) -> Table:
    """Probe accuracy per labels-per-class row and feature column (codes, pixels, pca, finetune)."""
    counts = [key for key in probe if key != "classifier"]
    columns = sorted({name for key in counts for name in probe[key] if name != "labelled_samples"})
    table = Table(title=f"probe accuracy ({probe['classifier']})", header_style="bold")
    for column in ["labels/class", "labelled", *columns]:
        table.add_column(column, justify="right")
    for key in counts:
        row = probe[key]
        table.add_row(key, str(row["labelled_samples"]), *[f"{row[name]:.4f}" for name in columns])
    return table
