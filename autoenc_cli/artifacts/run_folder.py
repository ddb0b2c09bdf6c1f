"""The run folder's files: metrics.json, history.csv and checkpoints/, each written atomically."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from autoenc_cli.training.checkpoint import atomic_write_bytes, save_checkpoint


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class RunFolder:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.checkpoints = self.path / "checkpoints"
        self.figures = self.path / "figures"

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        text = json.dumps({key: _json_safe(value) for key, value in metrics.items()}, indent=2)
        atomic_write_bytes(self.path / "metrics.json", (text + "\n").encode())

    def read_metrics(self) -> dict[str, Any]:
        return json.loads((self.path / "metrics.json").read_text())

    def write_history(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_bytes(self.path / "history.csv", buffer.getvalue().encode())

    def save_checkpoint(self, name: str, state: dict[str, Any]) -> Path:
        path = self.checkpoints / f"{name}.pt"
        save_checkpoint(path, state)
        return path
