"""Each trial's config, composed from overrides by the same Hydra compose as ``autoenc train`` and checked
whole (type and every rule) before it trains."""

from __future__ import annotations

import threading
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from autoenc_cli.errors import UserError
from autoenc_cli.schema import TrainConfig

CONFIG_MODULE = "autoenc_cli.configs"


def one_line(error: Exception) -> Optional[str]:
    from autoenc_cli.error_report import one_line_or_none

    return one_line_or_none(error)


class Composer:
    """Hydra's compose API for the whole study (one lock: Hydra's global state is not for threads)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._context: Any = None

    def __enter__(self) -> "Composer":
        from hydra import initialize_config_module

        self._context = initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3")
        self._context.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._context.__exit__(*exc)

    def compose(self, config_name: str, overrides: list[str]) -> DictConfig:
        """The composed config; a mistake in an override is a one-line UserError."""
        from hydra import compose

        with self.lock:
            try:
                return compose(config_name=config_name, overrides=list(overrides))
            except Exception as error:  # noqa: BLE001 - Hydra's errors become one line; a bug keeps its traceback
                message = one_line(error)
                if message is None:
                    raise
                raise UserError(message) from None

    def train_config(self, overrides: list[str]) -> tuple[TrainConfig, str, DictConfig]:
        """What ``autoenc train OVERRIDES`` would run: the typed, checked config and its YAML."""
        from autoenc_cli.schema.check import check_shorthands
        from autoenc_cli.schema.resolve import resolve
        from autoenc_cli.train import with_absolute_paths

        check_shorthands(overrides)
        cfg = with_absolute_paths(self.compose("train", overrides))
        return resolve(cfg), OmegaConf.to_yaml(cfg), cfg

    def check(self, overrides: list[str]) -> None:
        self.train_config(overrides)
