"""Checkpoints: written atomically, read back with ``weights_only=True`` so a file cannot run code."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from autoenc_cli.errors import UserError
from autoenc_cli.io import atomic_write_bytes

FORMAT = "autoenc-checkpoint"
VERSION = 1


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "version": VERSION, **state}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Load an autoenc checkpoint; anything else (missing, truncated, foreign) is a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint '{path}' does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file is "not a checkpoint", whatever the unpickler says
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"'{path}' is not a readable autoenc checkpoint ({reason[:160]})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"'{path}' is not an autoenc checkpoint")
    return state
