"""Shared fixtures: tiny configs composed the way the CLI composes them, and CLI runners."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import pytest
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

from autoenc_cli.cli import main

# Small enough for a 2-core CPU: 400 digits, 2 epochs.
TINY = ["data.limit=400", "trainer.epochs=2", "trainer.log_every=2"]
TINY_KEYS = {override.partition("=")[0] for override in TINY}


def with_tiny_defaults(argv: Sequence[str]) -> list[str]:
    """TINY's values are defaults a test's own later value replaces (autoenc refuses a key given twice)."""
    argv = list(argv)
    later = [override.partition("=")[0] for override in argv]
    return [
        argument
        for position, argument in enumerate(argv)
        if argument not in TINY or later[position] not in later[position + 1 :]
    ]

# A small .npz of 28 x 28 images for options that need a file (the config check reads its header).
SAMPLE_NPZ = Path(tempfile.mkdtemp(prefix="autoenc-tests-")) / "images.npz"
np.savez(SAMPLE_NPZ, images=np.random.default_rng(0).integers(0, 256, (40, 28, 28), dtype=np.uint8))
# And a .npy of 40 vectors of 16 floats, for data=vectors.
SAMPLE_VECTORS = SAMPLE_NPZ.with_name("vectors.npy")
np.save(SAMPLE_VECTORS, np.random.default_rng(0).standard_normal((40, 16)).astype(np.float32))


def compose_config(overrides: Sequence[str] = ()) -> DictConfig:
    with initialize_config_module(config_module="autoenc_cli.configs", version_base="1.3"):
        return compose(config_name="train", overrides=with_tiny_defaults(overrides))


@pytest.fixture(autouse=True)
def root_logging_as_it_was():
    """A command run in the test's process configures the root logger (Hydra's logging, a run's train.log);
    each test leaves it as it found it, so no handler bound to the test's captured output, closed once the
    test ends, receives a later test's records."""
    root = logging.getLogger()
    before, level = set(root.handlers), root.level
    yield
    for handler in [handler for handler in root.handlers if handler not in before]:
        if not type(handler).__module__.startswith("_pytest"):
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)


@pytest.fixture
def tiny() -> list[str]:
    return list(TINY)


def run_main(argv: Sequence[str]) -> int:
    """Run ``autoenc`` in this process; returns the exit code."""
    try:
        main(with_tiny_defaults(argv))
    except SystemExit as exit_:
        return int(exit_.code or 0)
    return 0


def run_cli(argv: Sequence[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``autoenc`` in a fresh interpreter, as a user would."""
    environment = {**os.environ, **(env or {})}
    environment.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(
        [sys.executable, "-m", "autoenc_cli", *with_tiny_defaults(argv)],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )


def only_run_dir(root: Path) -> Path:
    runs = sorted((root / "outputs" / "runs").iterdir())
    assert len(runs) == 1, runs
    return runs[0]


def read_metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def train_in(root: Path, argv: Sequence[str]) -> None:
    """Run ``autoenc`` in ``root`` (for module-scoped fixtures, which cannot use monkeypatch)."""
    previous = Path.cwd()
    os.chdir(root)
    try:
        assert run_main(argv) == 0
    finally:
        os.chdir(previous)
