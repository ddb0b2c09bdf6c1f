"""``logger=tensorboard``: event files in RUN_DIR/tensorboard, with the config in TensorBoard's HParams view.

``tensorboard --logdir outputs`` (or a sweep folder) shows every run; the HParams tab compares them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Optional

import numpy as np

from autoenc_cli.loggers.base import Logger, LoggerConfig, RunContext
from autoenc_cli.registry import register

FOLDER = "tensorboard"  # in the run folder, unless logger.tensorboard.dir says otherwise

# The validation metrics the HParams view shows beside each run's config.
HPARAM_METRICS = ("val/loss", "val/mse", "val/fvu", "val/l0", "val/dead_fraction")


@dataclass
class TensorBoardConfig(LoggerConfig):
    module: ClassVar[str] = "tensorboard"
    extra: ClassVar[str] = "tensorboard"
    name: str = "tensorboard"
    dir: Optional[str] = None  # the event files' folder; null: RUN_DIR/tensorboard


@register(TensorBoardConfig)
class TensorBoardLogger(Logger):
    run_folder_entries = (FOLDER,)

    def __init__(self, config: TensorBoardConfig, context: RunContext) -> None:
        super().__init__(config, context)
        self.dir = Path(config.dir) if config.dir else context.folder / FOLDER
        self.writer: Any = None

    def start(self) -> dict[str, Any]:
        from torch.utils.tensorboard import SummaryWriter

        resumed = bool(self.context.saved)
        # purge_step: TensorBoard drops what an interrupted attempt logged after the checkpoint resumed from.
        purge_step = self.context.start_step + 1 if resumed else None
        self.writer = SummaryWriter(str(self.dir), purge_step=purge_step)
        if not resumed:
            self._write_hparams()
        return {"dir": str(self.dir)}

    def _write_hparams(self) -> None:
        from torch.utils.tensorboard.summary import hparams

        experiment, session_start, _ = hparams(self.context.hparams, {tag: 0.0 for tag in HPARAM_METRICS})
        for summary in (experiment, session_start):
            self.writer.file_writer.add_summary(summary)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        for tag, value in metrics.items():
            self.writer.add_scalar(tag, value, step)

    def log_images(self, images: dict[str, Path], step: int, final: bool = False) -> None:
        from PIL import Image

        for tag, path in images.items():
            with Image.open(path) as image:
                pixels = np.asarray(image.convert("RGB"))
            self.writer.add_image(tag, pixels, step, dataformats="HWC")

    def finish(self, status: str) -> None:
        if self.writer is None:
            return
        if status == "completed":
            from torch.utils.tensorboard.summary import hparams

            _, _, session_end = hparams(self.context.hparams, {})
            self.writer.file_writer.add_summary(session_end)
        self.writer.close()
        self.writer = None

    def flush(self) -> None:
        self.writer.flush()
