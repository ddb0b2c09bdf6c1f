"""``logger=wandb``: Weights & Biases runs, offline unless ``logger.wandb.mode=online`` (no network assumed).

An offline run lives in RUN_DIR/wandb/offline-run-*; ``wandb sync`` uploads it later. A sweep's jobs share
a W&B group named after the sweep folder.

W&B keeps a run's records in its own service process and writes them to the offline run's ``.wandb`` file
every 15 seconds, so a hard kill loses what that process held, and a resumed offline run is a new
offline-run folder of the same id. So the checkpoints keep every step this logger sent (``logged``), and a
resumed run first re-logs the steps up to its checkpoint: its folder holds the whole run, each step once
(what the killed attempt logged after the checkpoint is trained and logged anew). Once it has finished
writing, the earlier folders of the run, which it supersedes, are removed.
"""

from __future__ import annotations

import importlib
import re
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional, Union

from autoenc_cli.loggers.base import Logger, LoggerConfig, RunContext
from autoenc_cli.registry import register
from autoenc_cli.schema.fields import choice

# One logged step as the checkpoints keep it: [step, {key: number, or for a figure the path of W&B's copy
# of its PNG, relative to the run folder}].
LoggedStep = list[Union[int, dict[str, Union[float, str]]]]


@dataclass
class WandbConfig(LoggerConfig):
    module: ClassVar[str] = "wandb"
    extra: ClassVar[str] = "wandb"
    name: str = "wandb"
    project: str = "autoenc"  # the W&B project the runs are logged to
    entity: Optional[str] = None  # the W&B user or team; null: the logged-in default
    mode: str = choice("offline", ("offline", "online", "disabled"))  # offline: written locally, synced later
    run_group: Optional[str] = None  # W&B's group; null: a sweep's folder name for its jobs, none for a single run
    tags: list[str] = field(default_factory=list)  # W&B tags of every run, e.g. [baseline, topk]


@register(WandbConfig)
class WandbLogger(Logger):
    run_folder_entries = ("wandb",)  # W&B's own folder, in the run folder it is given

    def __init__(self, config: WandbConfig, context: RunContext) -> None:
        super().__init__(config, context)
        self.wandb = importlib.import_module("wandb")
        self.run: Any = None
        self.kept: dict[str, Any] = {}  # what the checkpoints keep: the run's id and every step logged so far
        self.first_new_step = 0  # steps below it the W&B run already holds (an online run resumed on the server)

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
        # W&B drops a step below the run's current one: an online run resumed on the server starts there.
        self.first_new_step = int(self.run.step or 0)
        # Live: every checkpoint holds this dict as it is when written (see Logger.start).
        self.kept = {"id": run_id, "logged": []}
        self._relog(context.saved.get("logged") or [])
        if config.mode == "offline":
            from autoenc_cli.artifacts.console import console

            folder = self._offline_folder()
            console.print(f"logger=wandb: offline run in {folder}; `wandb sync {folder}` uploads it", soft_wrap=True)
        return self.kept

    def _relog(self, logged: list[LoggedStep]) -> None:
        """The resumed checkpoint's steps, in the order they were logged (later ones are trained again)."""
        for step, values in logged:
            if step > self.context.start_step:
                continue
            metrics = {key: value for key, value in values.items() if not isinstance(value, str)}
            images = {key: self.context.folder / value for key, value in values.items() if isinstance(value, str)}
            if metrics:
                self.log_metrics(metrics, step)
            # A figure whose copy is gone (the wandb folder emptied by hand) cannot be logged again.
            images = {tag: path for tag, path in images.items() if path.is_file()}
            if images:
                self.log_images(images, step)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.kept["logged"].append([step, {key: float(value) for key, value in metrics.items()}])
        if step >= self.first_new_step:
            self.run.log(dict(metrics), step=step)

    def log_images(self, images: dict[str, Path], step: int, final: bool = False) -> None:
        if step < self.first_new_step:
            return
        logged = {tag: self.wandb.Image(str(path)) for tag, path in images.items()}
        self.run.log(logged, step=step)
        if not final:  # the finished run's figures are logged at its end, never again
            copies = {tag: self._copy_in_run_folder(image) for tag, image in logged.items()}
            kept = {tag: copy for tag, copy in copies.items() if copy is not None}
            if kept:
                self.kept["logged"].append([step, kept])

    def _copy_in_run_folder(self, image: Any) -> Optional[str]:
        """Where W&B copied a logged figure (its run's media folder), relative to the run folder; None when
        it made no copy there (mode=disabled)."""
        copy = getattr(image, "_path", None)
        try:
            return Path(copy).absolute().relative_to(self.context.folder.absolute()).as_posix() if copy else None
        except ValueError:
            return None

    def _offline_folder(self) -> Path:
        return Path(self.run.dir).parent

    def finish(self, status: str) -> None:
        if self.run is None:
            return
        self.run.finish(exit_code=0 if status == "completed" else 1)
        # A checkpoint from before autoenc kept the logged steps was not logged again: its folders stay.
        if self.config.mode == "offline" and "logged" in self.context.saved:  # type: ignore[attr-defined]
            self._remove_superseded_folders()
        self.run = None

    def _remove_superseded_folders(self) -> None:
        """The run's earlier offline folders (interrupted attempts): the finished one holds all their steps
        up to the checkpoint it resumed, and their later steps were trained again."""
        current = self._offline_folder()
        same_run = re.compile(rf"offline-run-\d{{8}}_\d{{6}}-{re.escape(self.kept['id'])}(-\d+)?")
        for folder in current.parent.glob("offline-run-*"):
            if folder != current and folder.is_dir() and not folder.is_symlink() and same_run.fullmatch(folder.name):
                shutil.rmtree(folder)
