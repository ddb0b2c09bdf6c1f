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

from autoenc_cli import folder_layout as layout

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
    return str(path.parent.parent if path.suffix == layout.CHECKPOINT_SUFFIX else path)


# A resumed run keeps the original .hydra/ record and writes its own under .hydra/resumed/<time>/, one per resume.
OmegaConf.register_new_resolver("autoenc_run_dir", resumed_run_dir, replace=True)
OmegaConf.register_new_resolver(
    "autoenc_hydra_subdir",
    lambda resume: layout.HYDRA if resume in (None, "") else layout.resumed_record(time.strftime("%Y-%m-%d_%H-%M-%S")),
    use_cache=True,
    replace=True,
)


class RunComplete(BaseException):
    """Raised before Hydra writes anything when there is nothing to do (a complete run given to resume=):
    the command says why and ends, exit status 0, the folder untouched."""


def run_hydra_app(app: Any, program: str, argv: Sequence[str]) -> None:
    """Run a ``@hydra.main`` app on ``argv``, letting exceptions reach our one-line error reporter."""
    from autoenc_cli.folder_lock import claims_end_with_block, put_back

    previous_argv, previous_flag = sys.argv, os.environ.get("HYDRA_FULL_ERROR")
    sys.argv = [program, *argv]
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        with claims_end_with_block() as claims_made:
            try:
                app()
            except BaseException:  # a refusal or Ctrl-C before work started there leaves no trace
                for claim in claims_made():
                    put_back(claim)
                raise
    except RunComplete as complete:
        from autoenc_cli.artifacts.console import console

        console.print(str(complete), soft_wrap=True)
    finally:
        sys.argv = previous_argv
        if previous_flag is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = previous_flag
