"""``hydra/sweeper=autoenc`` (autoenc train's default) as Hydra discovers it; the sweeper's work is
``autoenc_cli.sweeps.Sweep`` (imported when used, so Hydra's plugin scan of other applications does not
load autoenc)."""

from __future__ import annotations

from typing import Any, Optional

from hydra.plugins.sweeper import Sweeper


class AutoencSweeper(Sweeper):
    def __init__(self, max_batch_size: Optional[int] = None, params: Optional[dict[str, str]] = None) -> None:
        from autoenc_cli.sweeps import Sweep

        self.work = Sweep(max_batch_size, params)

    def setup(self, **context: Any) -> None:
        self.work.setup(**context)

    def sweep(self, arguments: list[str]) -> Any:
        return self.work.run(arguments)
