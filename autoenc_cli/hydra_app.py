"""Running Hydra applications under ``autoenc``; the YAML groups ship as the package autoenc_cli.configs."""

from __future__ import annotations

import os
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from omegaconf import OmegaConf

CONFIG_PATH = "pkg://autoenc_cli.configs"

# A short random token, cached per config like Hydra's ${now:}, keeps run folders unique even
# when two runs start in the same second.
OmegaConf.register_new_resolver("autoenc_uid", lambda: secrets.token_hex(3), use_cache=True, replace=True)


def resumed_run_dir(resume: Any, new_run_dir: str) -> str:
    """``resume=RUN_DIR`` (or ``RUN_DIR/checkpoints/NAME.pt``) continues in that folder.

    Under torchrun, ranks other than 0 write nothing of their own; Hydra's files for them go to a
    scratch folder so the run folder is rank 0's alone.
    """
    rank = int(os.environ.get("RANK", "0"))
    if rank > 0:
        return str(Path(tempfile.gettempdir()) / f"autoenc-rank{rank}-{os.environ.get('TORCHELASTIC_RUN_ID', 'run')}")
    if resume in (None, ""):
        return new_run_dir
    path = Path(str(resume))
    return str(path.parent.parent if path.suffix == ".pt" else path)


# A resumed run keeps the original .hydra/ record and writes its own under .hydra/resumed/<time>/, one per resume.
OmegaConf.register_new_resolver("autoenc_run_dir", resumed_run_dir, replace=True)
OmegaConf.register_new_resolver(
    "autoenc_hydra_subdir",
    lambda resume: ".hydra" if resume in (None, "") else f".hydra/resumed/{time.strftime('%Y-%m-%d_%H-%M-%S')}",
    use_cache=True,
    replace=True,
)


def register_launcher() -> None:
    """Make ``hydra/launcher=stacked`` known to Hydra also where its plugin scan cannot list our package
    (an editable install's import hook hides ``hydra_plugins.autoenc_stacked_launcher`` from ``pkgutil``)."""
    from hydra.core.plugins import Plugins

    from hydra_plugins.autoenc_stacked_launcher.stacked_launcher import StackedLauncher

    name = f"{StackedLauncher.__module__}.{StackedLauncher.__name__}"
    Plugins.instance().class_name_to_class.setdefault(name, StackedLauncher)


def run_hydra_app(app: Any, program: str, argv: Sequence[str]) -> None:
    """Run a ``@hydra.main`` app on ``argv``, letting exceptions reach our one-line error reporter."""
    register_launcher()
    previous_argv, previous_flag = sys.argv, os.environ.get("HYDRA_FULL_ERROR")
    sys.argv = [program, *argv]
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        app()
    finally:
        sys.argv = previous_argv
        if previous_flag is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = previous_flag
