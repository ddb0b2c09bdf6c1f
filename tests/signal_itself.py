"""``autoenc train`` that signals itself at an exact point: a real Ctrl-C or hard kill, deterministically.

``python tests/signal_itself.py SIGNAL:WHEN:N train ARGS...`` runs ``autoenc train ARGS...`` in a fresh
interpreter; tests in the same process install ``hooks(...)`` on RunFolderWriter with monkeypatch.
SIGNAL: KILL (SIGKILL), INT (Ctrl-C), INT2 (two Ctrl-C at once). WHEN: ``after_checkpoint`` or
``before_checkpoint`` of epoch N (the loggers have logged the epoch by then), or ``step``: once global step N
was logged.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any, Callable

from autoenc_cli.artifacts.run_folder import RunFolderWriter


def hooks(where: str) -> dict[str, Callable[..., None]]:
    """RunFolderWriter's on_epoch_end and on_step, signalling the process at ``where``."""
    name, when, number = where.split(":")
    at = int(number)

    def fire() -> None:
        for _ in range(2 if name == "INT2" else 1):
            os.kill(os.getpid(), signal.SIGKILL if name == "KILL" else signal.SIGINT)

    checkpoint = RunFolderWriter.on_epoch_end

    def on_epoch_end(self: RunFolderWriter, event: Any) -> None:
        if when == "before_checkpoint" and event.record.epoch == at:
            fire()
        checkpoint(self, event)
        if when == "after_checkpoint" and event.record.epoch == at:
            fire()

    def on_step(self: RunFolderWriter, event: Any) -> None:  # the writer sees each step after the loggers
        if when == "step" and event.global_step == at:
            fire()

    return {"on_epoch_end": on_epoch_end, "on_step": on_step}


if __name__ == "__main__":
    for attribute, hook in hooks(sys.argv[1]).items():
        setattr(RunFolderWriter, attribute, hook)
    from autoenc_cli.cli import main

    main(sys.argv[2:])
