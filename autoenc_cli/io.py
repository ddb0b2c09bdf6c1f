"""Files written atomically (temporary file, fsync, rename) and the JSON/CSV helpers every writer uses."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable


def atomic_write_bytes(path: Path, payload: bytes, replace: bool = True) -> None:
    """Write to a temporary file beside ``path``, fsync, then rename over it.

    A crash or a full disk leaves either the old file or the new one, never a torn one. With
    ``replace=False`` the file is published with a hard link, which fails (``FileExistsError``) rather
    than replace a file that another process put there in the meantime.
    """
    atomic_write(path, lambda handle: handle.write(payload), replace)


def staged_name(path: Path) -> Path:
    """Where ``atomic_write`` stages ``path`` before publishing it: ``.NAME.PID.tmp`` beside it."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def atomic_write(path: Path, write: Callable[[BinaryIO], Any], replace: bool = True) -> None:
    """``atomic_write_bytes`` for a writer that streams into the file (``np.save``): nothing is built whole
    in memory first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = staged_name(path)
    try:
        with open(temporary, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        if replace:
            os.replace(temporary, path)
        else:
            os.link(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def json_ready(value: Any) -> Any:
    """JSON has no NaN or infinity: they become null, recursively."""
    if isinstance(value, dict):
        return {str(key): json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: Path, value: Any, replace: bool = True) -> None:
    atomic_write_bytes(path, (json.dumps(json_ready(value), indent=2) + "\n").encode(), replace)


def read_json(path: Path) -> dict[str, Any]:
    """The object in a JSON file; an empty dict when the file is missing or unreadable."""
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def write_csv(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Rows as CSV; the columns are every key seen, in first-seen order."""
    rows = list(rows)
    if not rows:
        return
    columns = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(path, buffer.getvalue().encode())
