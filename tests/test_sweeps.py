"""Sweeps end in a comparison; `autoenc report` rebuilds it for any finished runs."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
from PIL import Image

from conftest import TINY, run_main, train_in


def read_summary(folder: Path) -> list[dict]:
    with open(folder / "summary.csv") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def topk_sweep(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sweep")
    train_in(root, ["train", "-m", "sparsity=topk", "k=2,8", *TINY])
    (sweep,) = (root / "outputs" / "sweeps").iterdir()
    return sweep


def test_multirun_writes_summary_frontier_and_dictionary_grid(topk_sweep):
    rows = read_summary(topk_sweep)
    assert [row["label"] for row in rows] == ["k=2", "k=8"]
    assert [float(row["l0"]) for row in rows] == [2.0, 8.0]
    assert all(row["status"] == "completed" and float(row["val_mse"]) > 0 for row in rows)
    assert float(rows[0]["val_mse"]) > float(rows[1]["val_mse"])  # fewer active units, worse fit
    for row, k in zip(rows, (2, 8)):  # PCA at the run's l0: the k-th point of the run's own PCA curve
        curve = json.loads((topk_sweep / row["run"] / "metrics.json").read_text())["pca_val_mse_by_k"]
        assert float(row["pca_val_mse_at_l0"]) == pytest.approx(curve[k - 1])
        assert curve == sorted(curve, reverse=True)  # more components never fit worse
    for figure in ("frontier.png", "dictionaries.png"):
        with Image.open(topk_sweep / "figures" / figure) as image:
            assert image.width > 200
    for job in ("0", "1"):
        assert (topk_sweep / job / "figures" / "code_density.png").is_file()
    page = (topk_sweep / "report.html").read_text()
    links = re.findall(r'href="([^"]+)"', page) + re.findall(r'src="([^"]+)"', page)
    assert links == ["0/report.html", "1/report.html", "figures/frontier.png", "figures/dictionaries.png"]
    assert all((topk_sweep / link).is_file() for link in links)


def test_report_rebuilds_from_a_sweep_folder_and_from_run_folders(topk_sweep, tmp_path, capsys):
    (topk_sweep / "summary.csv").unlink()
    assert run_main(["report", str(topk_sweep)]) == 0
    assert len(read_summary(topk_sweep)) == 2
    assert "k=8" in capsys.readouterr().out
    out = tmp_path / "chosen"
    assert run_main(["report", str(topk_sweep / "1"), str(topk_sweep / "0"), "--out", str(out)]) == 0
    assert [row["run"] for row in read_summary(out)] == ["1", "0"]
    assert (out / "figures" / "frontier.png").is_file()


def page_links(page: Path) -> list[str]:
    text = page.read_text()
    return re.findall(r'href="([^"]+)"', text) + re.findall(r'src="([^"]+)"', text)


def test_report_links_resolve_for_runs_gathered_from_two_places(topk_sweep, tmp_path, monkeypatch):
    """Runs copied from elsewhere, one reached through a symbolic link and one without its report.html: each
    link is computed from where the page is written and points at a file that is there; a run with no page
    of its own is named, not linked."""
    import shutil

    shutil.copytree(topk_sweep / "0", tmp_path / "lab" / "runs" / "a")
    shutil.copytree(topk_sweep / "1", tmp_path / "home" / "deep" / "b")
    (tmp_path / "home" / "deep" / "b" / "report.html").unlink()
    (tmp_path / "via").symlink_to(tmp_path / "lab" / "runs")
    work = tmp_path / "work" / "here"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    runs = ["../../via/a", str(tmp_path / "home" / "deep" / "b")]
    for out in ("../../shared/report", None):  # a chosen folder, and the default outputs/reports/<time>
        assert run_main(["report", *runs, *(["--out", out] if out else [])]) == 0
        folder = Path(out) if out else next((work / "outputs" / "reports").iterdir())
        links = page_links(folder / "report.html")
        assert links[1:] == ["figures/frontier.png", "figures/dictionaries.png"]
        assert links[0].endswith("lab/runs/a/report.html")
        assert all((folder / link).resolve().is_file() for link in links)
        assert '<td>b <span class="note">(no report.html)</span></td>' in (folder / "report.html").read_text()


def test_report_out_follows_the_shared_out_rule(topk_sweep, tmp_path, capsys):
    runs = [str(topk_sweep / "0"), str(topk_sweep / "1")]
    before = (topk_sweep / "0" / "report.html").read_bytes()
    assert run_main(["report", *runs, "--out", str(topk_sweep / "0" / "cmp")]) == 2  # inside a run
    assert f"is inside the run folder '{topk_sweep / '0'}', where only that run writes" in capsys.readouterr().err
    assert not (topk_sweep / "0" / "cmp").exists() and (topk_sweep / "0" / "report.html").read_bytes() == before
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    assert run_main(["report", *runs, "--out", str(tmp_path / "mine")]) == 2
    assert "already holds other files (notes.txt); give a report a new or empty folder" in capsys.readouterr().err
    out = tmp_path / "cmp"
    assert run_main(["report", *runs, "--out", str(out)]) == 0
    assert run_main(["report", *runs, "--out", str(out)]) == 2
    assert "already holds a report (report.html, ...); add --overwrite" in capsys.readouterr().err
    assert run_main(["report", runs[0], "--out", str(out), "--overwrite"]) == 0
    assert [row["run"] for row in read_summary(out)] == ["0"]
    assert run_main(["report", *runs, "--out", str(topk_sweep)]) == 0  # runs of that sweep: its own report
    assert [row["run"] for row in read_summary(topk_sweep)] == ["0", "1"]


def test_report_on_a_folder_without_runs_is_a_one_line_error(tmp_path, capsys):
    assert run_main(["report", str(tmp_path)]) == 2
    assert "holds no run folders" in capsys.readouterr().err


def test_the_frontier_line_joins_only_runs_no_other_run_beats_on_both_l0_and_mse():
    from autoenc_cli.artifacts.figures import non_dominated

    points = [("a", 4, 0.03), ("b", 4, 0.02), ("c", 8, 0.025), ("d", 8, 0.015), ("e", 16, 0.016), ("f", 32, 0.01)]
    assert [label for label, _, _ in non_dominated(points)] == ["b", "d", "f"]


def test_the_sweeper_runs_every_combination_in_batches_and_sweep_values_from_a_config(tmp_path, monkeypatch, capsys):
    """hydra/sweeper=autoenc (the default) runs what Hydra's basic sweeper runs: every combination, of the
    command's values and of hydra.sweeper.params, in batches of max_batch_size, numbered across batches."""
    monkeypatch.chdir(tmp_path)
    quick = [*TINY, "trainer.epochs=1", "trainer.figures=false", "trainer.pca_baseline=false"]
    params = "+hydra.sweeper.params={model.code_dim: '8,16'}"
    batches = "hydra.sweeper.max_batch_size=3"
    assert run_main(["train", "-m", *quick, params, "seed=1,2", batches, "hydra.sweep.dir=s"]) == 0
    rows = read_summary(tmp_path / "s")
    assert [row["run"] for row in rows] == ["0", "1", "2", "3"]
    assert [row["label"] for row in rows] == [
        "model.code_dim=8 seed=1", "model.code_dim=8 seed=2", "model.code_dim=16 seed=1", "model.code_dim=16 seed=2"
    ]  # fmt: skip
    assert {row["status"] for row in rows} == {"completed"}
    capsys.readouterr()
    assert run_main(["train", "-m", *quick, "seed=1,2", "hydra.sweeper.max_batch_size=0", "hydra.sweep.dir=t"]) == 2
    assert capsys.readouterr().err == (
        "autoenc: error: hydra.sweeper.max_batch_size=0: give a whole number >= 1\n"
    )
    assert not (tmp_path / "t").exists()
