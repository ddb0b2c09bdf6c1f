"""``logger=wandb``: Weights & Biases runs, offline unless ``logger.wandb.mode=online`` (no network assumed).

An offline run lives in RUN_DIR/wandb/offline-run-*; ``wandb sync`` uploads it later. A sweep's jobs share
a W&B group named after the sweep folder.
"""

from __future__ import annotations

import importlib
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional

from autoenc_cli.loggers.base import Logger, LoggerConfig, RunContext
from autoenc_cli.registry import register
from autoenc_cli.schema.fields import choice


@dataclass
class WandbConfig(LoggerConfig):
    module: ClassVar[str] = "wandb"
    extra: ClassVar[str] = "wandb"
    name: str = "wandb"
    project: str = "autoenc"
    entity: Optional[str] = None  # the W&B user or team; null: the logged-in default
    mode: str = choice("offline", ("offline", "online", "disabled"))  # offline: written locally, synced later
    run_group: Optional[str] = None  # W&B's group; null: a sweep's folder name for its jobs, none for a single run
    tags: list[str] = field(default_factory=list)


@register(WandbConfig)
class WandbLogger(Logger):
    def __init__(self, config: WandbConfig, context: RunContext) -> None:
        super().__init__(config, context)
        self.wandb = importlib.import_module("wandb")
        self.run: Any = None

    def start(self) -> dict[str, Any]:
        config: WandbConfig = self.config  # type: ignore[assignment]
        context, wandb = self.context, self.wandb
        run_id = context.saved.get("id") or context.run_id or secrets.token_hex(8)
        group = config.run_group or (context.sweep_dir.name if context.sweep_dir is not None else None)
        self.run = wandb.init(
            project=config.project,
            entity=config.entity,
            mode=config.mode,
            dir=str(context.folder),
            id=run_id,
            resume="allow",
            name=context.name,
            group=group,
            tags=list(config.tags) or None,
            config=dict(context.hparams),
            # autoenc draws its own screen: no console capture, no banner lines (one line of ours instead)
            settings=wandb.Settings(console="off", silent=True),
        )
        if config.mode == "offline":
            from autoenc_cli.artifacts.console import console

            folder = Path(self.run.dir).parent
            console.print(f"logger=wandb: offline run in {folder}; `wandb sync {folder}` uploads it", soft_wrap=True)
        return {"id": run_id}

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(dict(metrics), step=step)

    def log_images(self, images: dict[str, Path], step: int, final: bool = False) -> None:
        self.run.log({tag: self.wandb.Image(str(path)) for tag, path in images.items()}, step=step)

    def finish(self, status: str) -> None:
        if self.run is not None:
            self.run.finish(exit_code=0 if status == "completed" else 1)
            self.run = None
