"""Runs' figures drawn in forked workers (a stacked sweep's closing) equal those drawn in the process."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import pytest
import torch

from autoenc_cli.artifacts import figures
from autoenc_cli.artifacts.figure_workers import FigureWorkers
from autoenc_cli.artifacts.run_figures import draw

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="figure workers fork on Linux only")

HISTORY = [{"epoch": epoch, "train_loss": 1 / epoch, "val_loss": 1.2 / epoch, "stage": "train"} for epoch in (1, 2, 3)]


def broken(path: Path) -> Path:
    raise RuntimeError("no such colormap\nsecond line")


def drawings_of(folder: Path, seed: int) -> list:
    atoms = torch.randn(9, 1, 28, 28, generator=torch.Generator().manual_seed(seed))
    vectors = atoms[:, 0, 0]  # no image layout: a note, not a figure
    return [
        ("dictionary.png", functools.partial(figures.dictionary, folder / "dictionary.png", atoms)),
        ("loss_curve.png", functools.partial(figures.loss_curve, folder / "loss_curve.png", HISTORY)),
        ("reconstructions.png", functools.partial(figures.reconstructions, folder / "r.png", vectors, vectors)),
        ("broken.png", functools.partial(broken, folder / "broken.png")),
    ]


def pixels(path: Path) -> torch.Tensor:
    return torch.from_numpy(plt.imread(path))


def test_figures_drawn_in_workers_are_those_drawn_in_the_process(tmp_path):
    workers = FigureWorkers(workers=2)
    assert workers.forking
    waits = [workers.submit(drawings_of(tmp_path / "workers" / str(run), run)) for run in range(3)]
    for run, wait in enumerate(waits):
        written, notes = wait()
        expected_written, expected_notes = draw(drawings_of(tmp_path / "here" / str(run), run))
        assert (
            [path.name for path in written]
            == [path.name for path in expected_written]
            == [
                "dictionary.png",
                "loss_curve.png",
            ]
        )
        assert (
            notes
            == expected_notes
            == [
                "figures/reconstructions.png skipped: vector data (D=28) has no image layout",
                "figures/broken.png skipped: RuntimeError: no such colormap",
            ]
        )
        for ours, theirs in zip(written, expected_written):
            assert torch.equal(pixels(ours), pixels(theirs))
    assert wait() == (written, notes)  # a second wait answers again, without a worker
    for wait in waits:  # every worker was reaped
        with pytest.raises(ChildProcessError):
            os.waitpid(wait.__self__.pid, os.WNOHANG)


def test_a_worker_that_dies_before_it_answers_has_its_figures_drawn_here(tmp_path):
    parent = os.getpid()

    def dies_in_a_worker(path: Path) -> Path:
        if os.getpid() != parent:
            os._exit(3)
        return figures.loss_curve(path, HISTORY)

    written, notes = FigureWorkers(workers=1).submit(
        [("loss.png", functools.partial(dies_in_a_worker, tmp_path / "loss.png"))]
    )()
    assert written == [tmp_path / "loss.png"] and notes == []
    assert pixels(tmp_path / "loss.png").shape[-1] == 4
