"""``hydra/launcher=stacked`` as Hydra discovers it; the launcher itself is ``autoenc_cli.stacking.launcher``
(imported when used, so Hydra's plugin scan of other applications does not load torch)."""

from __future__ import annotations

from typing import Any, Sequence

from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher


class StackedLauncher(Launcher):
    def __init__(self, **settings: Any) -> None:
        from autoenc_cli.stacking.launcher import StackedSweep

        self.sweep = StackedSweep(**settings)

    def setup(self, **context: Any) -> None:
        self.sweep.setup(**context)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        return self.sweep.launch(job_overrides, initial_job_idx)
