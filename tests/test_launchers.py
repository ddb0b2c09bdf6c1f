"""Sweeps through Hydra's launcher plugins (the `sweep` extra): parallel jobs, same summaries."""

from __future__ import annotations

import csv
import importlib.util

import pytest

from conftest import TINY, run_cli

LAUNCHERS = {"joblib": "hydra_plugins.hydra_joblib_launcher", "submitit_local": "hydra_plugins.hydra_submitit_launcher"}


@pytest.mark.parametrize("launcher", list(LAUNCHERS))
def test_sweep_through_a_launcher_plugin_ends_in_the_same_summary(launcher, tmp_path):
    if importlib.util.find_spec(LAUNCHERS[launcher]) is None:
        pytest.skip(f"pip install -e .[sweep] for hydra/launcher={launcher}")
    extra = ["hydra.launcher.n_jobs=2"] if launcher == "joblib" else ["hydra.launcher.timeout_min=10"]
    result = run_cli(
        ["train", "-m", f"hydra/launcher={launcher}", *extra, "model.code_dim=4,8", *TINY, "trainer.figures=false"],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    (sweep,) = (tmp_path / "outputs" / "sweeps").iterdir()
    with open(sweep / "summary.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["label"], row["status"], row["code_dim"]) for row in rows] == [
        ("model.code_dim=4", "completed", "4"),
        ("model.code_dim=8", "completed", "8"),
    ]
    assert (sweep / "figures" / "frontier.png").is_file()
