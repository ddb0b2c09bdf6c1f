"""Draw several runs' figures at once, in forked worker processes.

Drawing is most of what a finished run costs after training (about a second a run, single-threaded
matplotlib), so a sweep that finishes many runs at once (a stacked sweep) hands each run's figures to
a worker and goes on with the next run. A worker is a fork of this process: it inherits the drawings
(inputs already computed on the CPU, ``run_figures.run_figure_drawings``) without pickling or a fresh
import, never touches the model's device, and sends back only the files written and the notes.
Where fork is unavailable or unsafe (not Linux) the figures are drawn in this process, as before; a
worker that dies without an answer has its run's figures drawn here instead.
"""

from __future__ import annotations

import json
import os
import select
import signal
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, Optional, Sequence

from autoenc_cli.artifacts.run_figures import Drawing, draw

Drawn = tuple[list[Path], list[str]]
# A worker that has not answered by then is stopped and its run's figures are drawn in this process (a
# run's figures take about a second; a fork of a process whose other threads held a lock could hang).
ANSWER_SECONDS = 300.0


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class FigureWorkers:
    """Up to ``workers`` runs' figures drawn at once, each in a forked process; ``submit`` returns the
    call that waits for that run's files and notes."""

    def __init__(self, workers: Optional[int] = None, in_process: bool = False) -> None:
        self.workers = max(1, workers if workers is not None else usable_cores())
        self.forking = not in_process and sys.platform.startswith("linux") and hasattr(os, "fork")
        self.running: list["_Worker"] = []

    def submit(self, drawings: Sequence[Drawing]) -> Callable[[], Drawn]:
        if not self.forking or not drawings:
            drawn = draw(drawings)
            return lambda: drawn
        self.running = [worker for worker in self.running if not worker.done]
        while len(self.running) >= self.workers:  # the oldest first: it is the likeliest to be done
            self.running.pop(0).wait()
        worker = _Worker(drawings)
        self.running.append(worker)
        return worker.wait


class _Worker:
    def __init__(self, drawings: Sequence[Drawing]) -> None:
        self.drawings, self.done, self.drawn = drawings, False, None
        readable, writable = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # the worker: draw, answer, and leave without running the parent's exit code
            try:
                os.close(readable)
                _draw_and_answer(drawings, writable)
            finally:
                os._exit(0)
        os.close(writable)
        self.answer = os.fdopen(readable, "rb")

    def wait(self) -> Drawn:
        if not self.done:
            payload = self._answer()
            self.done = True
            try:
                written, notes = json.loads(payload)
                self.drawn = ([Path(path) for path in written], list(notes))
            except ValueError:  # the worker died, or hung, before it answered: draw here
                self.drawn = draw(self.drawings)
        return self.drawn

    def _answer(self) -> bytes:
        """The worker's answer, read until it closes the pipe (or ANSWER_SECONDS pass: it is then stopped)."""
        deadline, chunks = time.monotonic() + ANSWER_SECONDS, []
        with self.answer:
            while (left := deadline - time.monotonic()) > 0 and select.select([self.answer], [], [], left)[0]:
                chunk = os.read(self.answer.fileno(), 1 << 16)
                if not chunk:
                    break
                chunks.append(chunk)
            else:
                os.kill(self.pid, signal.SIGKILL)
                chunks = []
        os.waitpid(self.pid, 0)
        return b"".join(chunks)


def _draw_and_answer(drawings: Sequence[Drawing], writable: int) -> None:
    import torch

    # Ctrl-C is the parent's to handle (it finishes writing the results); one thread, as forked workers
    # of a process that has used a thread pool must (PyTorch's DataLoader workers do the same).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    torch.set_num_threads(1)
    # Nothing to the parent's stderr: a lock another of its threads held at the fork could never be freed.
    warnings.simplefilter("ignore")
    written, notes = draw(drawings)
    with os.fdopen(writable, "wb") as answer:
        answer.write(json.dumps([[str(path) for path in written], notes]).encode())
