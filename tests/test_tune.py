"""`autoenc tune`: the search space, a study of ordinary run folders in study.db, pruning, failures, resume,
two objectives (a Pareto front), parallel trials and Ctrl-C."""

from __future__ import annotations

import csv
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from optuna.trial import TrialState
from PIL import Image

from autoenc_cli.errors import UserError
from autoenc_cli.tuning.search_space import override_text, parse_params

from conftest import TINY, run_main, train_in

# A tiny sparse autoencoder, without the extras that cost time where a test does not look at them.
BASE = ["model=sparse_fc", "sparsity=topk", *TINY, "trainer.figures=false", "trainer.pca_baseline=false"]
SPACE = "tune.params={k: int(2, 16, log), optimizer.lr: float(1e-3, 1e-2, log)}"


def epochs(count: int) -> list[str]:
    return [argument for argument in BASE if not argument.startswith("trainer.epochs=")] + [f"trainer.epochs={count}"]


def only_study(root: Path) -> Path:
    (study,) = (root / "outputs" / "sweeps").iterdir()
    return study


def load(study_dir: Path) -> optuna.Study:
    return optuna.load_study(study_name=None, storage=f"sqlite:///{study_dir / 'study.db'}")


def states(study_dir: Path) -> list[str]:
    return [trial.state.name for trial in load(study_dir).get_trials()]


def read_summary(folder: Path) -> list[dict]:
    with open(folder / "summary.csv") as handle:
        return list(csv.DictReader(handle))


def metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


# --- the search space ---------------------------------------------------------------------------------------


def test_search_space_syntax_inline_per_key_and_yaml(tmp_path):
    params = parse_params(
        "{k: int(4, 64, log), optimizer.lr: float(1e-4,1e-2,log), model.code_dim: int(16, 64, step=16),"
        " trainer.precision: choice(fp32, bf16), model.encoder: choice([256], [512, 256])}",
        {"noise.std": "float(0.1, 0.5, step=0.1)"},
    )
    assert {key: param.text() for key, param in params.items()} == {
        "k": "int(4, 64, log)",
        "optimizer.lr": "float(0.0001, 0.01, log)",
        "model.code_dim": "int(16, 64, step=16)",
        "trainer.precision": "choice(fp32, bf16)",
        "model.encoder": "choice([256], [512, 256])",
        "noise.std": "float(0.1, 0.5, step=0.1)",
    }
    distribution = params["k"].distribution()
    assert (distribution.low, distribution.high, distribution.log) == (4, 64, True)
    assert params["model.code_dim"].distribution().step == 16
    assert params["model.encoder"].override("[512, 256]") == "model.encoder=[512, 256]"
    assert params["optimizer.lr"].corners() == [1e-4, 1e-2]
    # sparsity.k, as the issue writes it, is the k shorthand; a file holds specs, lists and the long form
    space = tmp_path / "space.yaml"
    space.write_text(
        "sparsity.k: int(4, 64, log)\nmodel.code_dim: [32, 64]\n"
        "optimizer.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n"
        "model.encoder: [[128], [256, 128]]\n"
        "model.decoder: {type: choice, choices: [[64], [128, 64]]}\n"
    )
    from_file = parse_params(str(space), {})
    assert {key: param.text() for key, param in from_file.items()} == {
        "k": "int(4, 64, log)",
        "model.code_dim": "choice(32, 64)",
        "optimizer.lr": "float(0.0001, 0.01, log)",
        "model.encoder": "choice([128], [256, 128])",  # a YAML list among the choices is set as that list
        "model.decoder": "choice([64], [128, 64])",
    }
    assert from_file["model.encoder"].override("[256, 128]") == "model.encoder=[256, 128]"
    space.write_text("model.encoder: [2024-01-31, [64]]\n")  # YAML reads a date, which no override can set
    with pytest.raises(UserError, match="is not a choice value"):
        parse_params(str(space), {})
    again = parse_params("{" + ", ".join(f"{k}: {p.text()}" for k, p in params.items()) + "}", {})
    assert again == params  # the canonical text the study folder records reads back the same


ENCODERS_INLINE = "{model.encoder: choice([{width: 16}], [{width: 32}, {width: 16, activation: relu}])}"
ENCODERS_YAML = "model.encoder: [[{width: 16}], [{width: 32}, {width: 16, activation: relu}]]\n"


def test_lists_of_mappings_are_choices_inline_and_in_a_file(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(ENCODERS_YAML + "model.decoder: [null, [{width: 16}, {width: null, activation: 'leaky_relu'}]]\n")
    inline = parse_params(ENCODERS_INLINE, {})["model.encoder"]
    from_file = parse_params(str(space), {})
    assert from_file["model.encoder"] == inline  # the same search, whichever way it is written
    assert inline.choices == ("[{width: 16}]", "[{width: 32}, {width: 16, activation: relu}]")
    assert from_file["model.decoder"].choices == (None, "[{width: 16}, {width: null, activation: leaky_relu}]")
    # Any value reads back through Hydra's grammar as it was (what it would misread is quoted), but for
    # numbers that YAML 1.1 reads as text (1e-3): the override gives the number meant.
    value = {"a b": ["x,y", " pad", "it's", 1e-3, True, None, "a\\b", {"k": [1, 2]}, "leaky_relu", "1e-3"]}
    text = override_text(value)
    assert text == "{a b: ['x,y', ' pad', 'it\\'s', 0.001, true, null, a\\b, {k: [1, 2]}, leaky_relu, 1e-3]}"
    assert OverridesParser.create().parse_override(f"key={text}").value() == {"a b": [*value["a b"][:-1], 1e-3]}


def test_a_study_sets_each_sampled_list_whole(tmp_path, monkeypatch):
    """The YAML form end to end: each trial's config holds the sampled encoder list, the same as the override."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "space.yaml").write_text(ENCODERS_YAML)
    base = [argument for argument in epochs(1) if not argument.startswith(("model=", "sparsity="))]
    space = ["tune.params=space.yaml", "tune.trials=2", "tune.sampler=random", "tune.seed=3"]
    assert run_main(["tune", *base, *space]) == 0
    study_dir = only_study(tmp_path)
    expected = {
        "[{width: 16}]": [{"width": 16}],
        "[{width: 32}, {width: 16, activation: relu}]": [{"width": 32}, {"width": 16, "activation": "relu"}],
    }
    trials = load(study_dir).get_trials()
    assert {trial.params["model.encoder"] for trial in trials} == set(expected)  # this seed draws both
    for trial in trials:
        config = yaml.safe_load(json.loads((study_dir / str(trial.number) / "run.json").read_text())["config"])
        assert config["model"]["encoder"] == expected[trial.params["model.encoder"]]


def test_tune_yaml_lists_exactly_the_schema_defaults():
    from importlib import resources

    from omegaconf import OmegaConf

    from autoenc_cli.tuning.settings import TuneConfig

    listed = OmegaConf.create((resources.files("autoenc_cli.configs") / "tune.yaml").read_text()).tune
    assert OmegaConf.to_container(listed) == OmegaConf.to_container(OmegaConf.structured(TuneConfig))


@pytest.mark.parametrize(
    "value, expected",
    [
        ("{k: int(4, 64, lg)}", "unknown option 'lg'"),
        ("{k: int(64, 4)}", "LOW (64) must not exceed HIGH (4)"),
        ("{k: int(4.5, 8)}", "'4.5' is not a whole number"),
        ("{optimizer.lr: float(0, 1e-2, log)}", "a log range needs LOW > 0"),
        ("{optimizer.lr: float(1e-4, x)}", "'x' is not a number"),
        ("{k: uniform(4, 64)}", "'uniform(4, 64)' is not a spec"),
        ("{k: choice()}", "choice() needs at least one value"),
        ("{k: int(4, 64, log, step=2)}", "log and step cannot be combined"),
        ("{k int(4, 64)}", "'k int(4, 64)' is not KEY: SPEC"),
        ("{k: int(4, 64)", "ends with '}'"),
        ("{hydra.job.name: choice(a, b)}", "'hydra.job.name' is not a config key"),
        ("space.yaml", "'space.yaml' is neither an inline search space"),
        ("", "needs a search space"),
    ],
)
def test_a_bad_spec_is_one_line_naming_the_bad_value(value, expected):
    with pytest.raises(UserError) as raised:
        parse_params(value, {})
    assert expected in str(raised.value) and "\n" not in str(raised.value)


@pytest.mark.parametrize(
    "arguments, expected",
    [
        (["tune.params={foo.bar: int(1, 2)}"], "tune.params.foo.bar: unknown key 'foo'; allowed keys: model"),
        (["tune.params={k: int(4, 128)}"], "reaches k=128, which the config check refuses: sparsity.topk.k=128"),
        (["k=4,8", SPACE], "'k=4,8' is a sweep; autoenc tune searches tune.params instead"),
        (["k=4", SPACE], "tune.params.k: k is also fixed by an override"),
        (["tune.objectives=[val_mse,l0]", "tune.pruner=median", SPACE], "cannot prune: Optuna prunes single-obj"),
        (["tune.objectives=[val_mze]", SPACE], "'val_mze' is not a metric of metrics.json"),
        (["tune.pruner=threshold", SPACE], "tune.pruner=threshold needs tune.threshold=VALUE"),
        (["tune.trails=3", SPACE], "unknown key 'tune.trails'"),
        (["-m", SPACE], "takes KEY=VALUE arguments only"),
        (
            ["tune.params={model.encoder: choice([256], [512, 256])}"],  # widths alone are not layers
            "reaches model.encoder=[256], which the config check refuses: model.encoder[0]=256 has the wrong type",
        ),
        (["seed=1", "seed=2", SPACE], "autoenc: error: seed is given twice (seed=1 and seed=2); give it once"),
    ],
)
def test_a_bad_study_is_refused_before_any_trial(arguments, expected, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert run_main(["tune", *BASE, *arguments]) == 2
    error = capsys.readouterr().err
    assert expected in error and error.count("\n") == 1, error
    assert not (tmp_path / "outputs").exists()


def test_missing_optuna_names_the_extra(monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "optuna", None)
    assert run_main(["tune", *BASE, SPACE]) == 2
    assert "autoenc tune needs the 'tune' extra" in capsys.readouterr().err


def test_a_study_folder_given_bare_is_a_hint_to_resume(tmp_path, capsys):
    (tmp_path / "study.db").touch()
    assert run_main(["tune", str(tmp_path)]) == 2
    assert f"to continue that study write resume={tmp_path}" in capsys.readouterr().err


# --- a study, resumed ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def resumed_study(tmp_path_factory) -> Path:
    """Two trials; then a trial left RUNNING by a process that died; then resume= alone, up to 3 trials."""
    root = tmp_path_factory.mktemp("tune")
    train_in(root, ["tune", *BASE, SPACE, "tune.trials=2"])
    study_dir = only_study(root)
    study = load(study_dir)
    crashed = study.ask({name: d for name, d in study.trials[0].distributions.items()})
    crashed.set_user_attr("host", socket.gethostname())
    crashed.set_user_attr("pid", 2**22 + 12345)  # above the kernel's pid_max: no such process
    (study_dir / "first_run_ids.json").write_text(
        json.dumps([json.loads((study_dir / n / "run.json").read_text())["run_id"] for n in ("0", "1")])
    )
    train_in(root, ["tune", f"resume={study_dir}", "tune.trials=3"])
    return study_dir


def test_a_study_trains_ordinary_run_folders_recorded_in_study_db(resumed_study):
    trials = load(resumed_study).get_trials()
    assert [trial.state for trial in trials] == [TrialState.COMPLETE] * 2 + [TrialState.FAIL, TrialState.COMPLETE]
    for trial in (trials[0], trials[1], trials[3]):
        run_dir = resumed_study / str(trial.number)
        for name in ("run.json", "history.csv", "checkpoints/last.pt", "checkpoints/best.pt", "report.html"):
            assert (run_dir / name).exists(), name
        assert metrics(run_dir)["status"] == "completed"
        assert metrics(run_dir)["val_mse"] == pytest.approx(trial.value)
        overrides = (run_dir / ".hydra" / "overrides.yaml").read_text()
        assert (
            f"- k={trial.params['k']}\n" in overrides
            and f"- optimizer.lr={trial.params['optimizer.lr']!r}" in overrides
        )
        assert "sparsity:\n  topk:\n    k: " in (run_dir / ".hydra" / "config.yaml").read_text()
    from autoenc_cli.evaluation.loading import load_run

    assert load_run(resumed_study / "3").model.code_dim == 64  # eval, encode and export read a trial as a run


def test_resume_continues_to_the_total_and_requeues_a_crashed_trial(resumed_study):
    trials = load(resumed_study).get_trials()
    first = json.loads((resumed_study / "first_run_ids.json").read_text())
    assert [json.loads((resumed_study / n / "run.json").read_text())["run_id"] for n in ("0", "1")] == first
    assert trials[3].user_attrs["retry_of"] == 2 and trials[3].params == trials[2].params
    assert not (resumed_study / "2").exists()  # the crashed trial never made its folder here


def test_the_study_ends_with_a_sweep_report_and_the_best_trial(resumed_study, capsys):
    rows = read_summary(resumed_study)
    assert [row["run"] for row in rows] == ["0", "1", "3"]
    values = {row["run"]: float(row["val_mse"]) for row in rows}
    best = json.loads((resumed_study / "best.json").read_text())
    assert best["front"] == "best" and [entry["run"] for entry in best["best"]] == [min(values, key=values.get)]
    assert [row["best"] for row in rows] == [str(row["run"] == best["best"][0]["run"]) for row in rows]
    # Labels name what varies between trials (k may happen to be sampled alike; lr, a float, never is).
    assert all("optimizer.lr=" in row["label"] for row in rows)
    assert (resumed_study / "report.html").is_file() and (resumed_study / "figures" / "frontier.png").is_file()
    (resumed_study / "summary.csv").unlink()
    assert run_main(["report", str(resumed_study)]) == 0  # autoenc report rebuilds it, best column included
    assert [row["best"] for row in read_summary(resumed_study)] == [row["best"] for row in rows]


def test_a_bare_resume_continues_to_the_total_last_asked_for(resumed_study, capsys):
    assert run_main(["tune", f"resume={resumed_study}"]) == 0
    assert "3 of 3 trials done" in capsys.readouterr().out
    assert len(load(resumed_study).get_trials()) == 4


@pytest.mark.parametrize(
    "arguments, got",
    [
        ([*BASE, "tune.params={k: int(2, 8)}"], "tune.params={k: int(2, 8)}"),
        (["tune.trials=6", "optimizer.name=sgd"], "optimizer.name=sgd"),
        (["tune.sampler=random"], "tune.sampler=random"),
        (["tune.params={k: int(4,16)}"], "tune.params={k: int(4,16)}"),
        (["tune.params.k=int(4, 16)"], "tune.params.k=int(4, 16)"),
    ],
)
def test_resume_with_another_search_is_refused_by_the_resume_rule(resumed_study, arguments, got, capsys):
    before = (resumed_study / "tune.json").read_text(), len(load(resumed_study).get_trials())
    assert run_main(["tune", f"resume={resumed_study}", *arguments]) == 2
    error = capsys.readouterr().err
    assert f"resume={resumed_study} continues the study started with [" in error and error.count("\n") == 1, error
    assert f"only tune.trials, tune.n_jobs and tune.timeout may change (got {got})" in error
    assert ((resumed_study / "tune.json").read_text(), len(load(resumed_study).get_trials())) == before


def test_resume_repeating_the_command_is_allowed(resumed_study, capsys):
    recorded = json.loads((resumed_study / "tune.json").read_text())["arguments"]
    assert run_main(["tune", *recorded, "tune.sampler=auto", f"resume={resumed_study}"]) == 0
    assert "trials done" in capsys.readouterr().out


def test_resume_to_fewer_trials_than_the_study_holds_is_refused(resumed_study, capsys):
    before = (resumed_study / "tune.json").read_text()
    assert run_main(["tune", f"resume={resumed_study}", "tune.trials=1"]) == 2
    error = capsys.readouterr().err
    assert "tune.trials=1 is below the 3 trials the study in" in error and "give 3 or more" in error, error
    assert error.count("\n") == 1 and (resumed_study / "tune.json").read_text() == before


def test_a_study_or_sweep_folder_given_as_run_names_a_trial(resumed_study, tmp_path, capsys):
    from autoenc_cli.evaluation.loading import checkpoint_path

    best = json.loads((resumed_study / "best.json").read_text())["best"][0]["run"]
    assert run_main(["eval", f"run={resumed_study}"]) == 2
    error = capsys.readouterr().err
    expected = f"'{resumed_study}' is a tune study folder (study.db), not a run; give one of its trials, e.g. run="
    assert expected + str(resumed_study / best) in error and error.count("\n") == 1, error
    (tmp_path / "multirun.yaml").touch()
    (tmp_path / "0").mkdir()
    with pytest.raises(UserError, match=r"is a sweep folder \(multirun.yaml\), not a run; give one of its jobs"):
        checkpoint_path(tmp_path, "best")


# --- pruning, failures, two objectives in parallel ----------------------------------------------------------


def test_pruned_trials_are_recorded_as_pruned(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    pruning = ["tune.pruner=threshold", "tune.threshold=1e-9", "tune.warmup_epochs=1"]
    argv = [*epochs(3), SPACE, "tune.trials=2", *pruning]
    assert run_main(["tune", *argv]) == 2
    assert "none of the study's 2 trials completed (2 pruned, 0 failed)" in capsys.readouterr().err
    study_dir = only_study(tmp_path)
    assert states(study_dir) == ["PRUNED", "PRUNED"]
    for run in ("0", "1"):
        pruned = metrics(study_dir / run)
        assert pruned["status"] == "pruned" and pruned["stopped"].startswith("pruned after epoch 2 (val_mse ")
        assert pruned["epochs"] == 2 and pruned["val_mse"] > 0
    assert [row["status"] for row in read_summary(study_dir)] == ["pruned", "pruned"]


def test_a_diverging_trial_fails_the_study_goes_on_and_the_command_exits_2(tmp_path, monkeypatch, capsys):
    """As a sweep with a failed job: every trial runs, the report is written, and the exit code says it."""
    monkeypatch.chdir(tmp_path)
    space = "tune.params={optimizer.lr: choice(0.001, 1000000.0)}"
    argv = [*BASE, "model.output_activation=linear", space, "tune.trials=3", "tune.sampler=random", "tune.seed=3"]
    assert run_main(["tune", *argv]) == 2
    study_dir = only_study(tmp_path)
    trials = load(study_dir).get_trials()
    assert [trial.params["optimizer.lr"] for trial in trials] == [0.001, 1000000.0, 1000000.0]  # this seed's draws
    error = capsys.readouterr().err
    assert error == (
        "autoenc: error: 2 of the 3 trials run failed: 1 (optimizer.lr=1000000.0), 2 (optimizer.lr=1000000.0); "
        "their errors are in each trial's metrics.json (summary.csv lists every trial); a failed trial is not run "
        f"again (more trials: autoenc tune resume={Path('outputs/sweeps') / study_dir.name} tune.trials=N)\n"
    )
    assert (study_dir / "best.json").is_file() and [row["status"] for row in read_summary(study_dir)] == [
        "completed",
        "failed",
        "failed",
    ]
    for trial in trials:
        diverged = trial.params["optimizer.lr"] > 1
        assert trial.state == (TrialState.FAIL if diverged else TrialState.COMPLETE)
        status = metrics(study_dir / str(trial.number))
        assert status["status"] == ("failed" if diverged else "completed")
        if diverged:
            assert "TrainingDiverged" in trial.user_attrs["error"] and "TrainingDiverged" in status["error"]


def test_two_objectives_in_parallel_give_a_pareto_front(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    space = "tune.params={k: int(2, 32, log)}"
    assert run_main(["tune", *BASE, space, "tune.objectives=[val_mse,l0]", "tune.trials=4", "tune.n_jobs=2"]) == 0
    out = capsys.readouterr().out
    assert "pruning is off: Optuna prunes single-objective studies only" in out
    assert "Pareto front, trial " in out and "Pareto front 0" not in out
    study_dir = only_study(tmp_path)
    assert states(study_dir) == ["COMPLETE"] * 4
    rows = read_summary(study_dir)
    points = {row["run"]: (float(row["val_mse"]), float(row["l0"])) for row in rows}

    def dominated(point):
        return any(o != point and o[0] <= point[0] and o[1] <= point[1] for o in points.values())

    assert {row["run"] for row in rows if row["pareto"] == "True"} == {r for r, p in points.items() if not dominated(p)}
    best = json.loads((study_dir / "best.json").read_text())
    assert best["front"] == "pareto" and best["objectives"] == ["val_mse", "l0"]
    with Image.open(study_dir / "figures" / "frontier.png") as image:
        assert image.width > 200


def test_a_resumed_study_draws_new_points(tmp_path, monkeypatch):
    """The process that continues a study seeds its sampler from (seed, trials held), not the seed alone (which
    would draw the first process's points again) nor seed + n (another study's seed)."""
    from autoenc_cli.tuning.study import sampler_seed

    monkeypatch.chdir(tmp_path)
    space = "tune.params={optimizer.lr: float(1e-3, 1e-2, log)}"
    argv = [*epochs(1), space, "tune.sampler=random", "tune.pruner=none"]
    assert run_main(["tune", *argv, "tune.trials=2"]) == 0
    study_dir = only_study(tmp_path)
    assert run_main(["tune", f"resume={study_dir}", "tune.trials=4"]) == 0
    drawn = [trial.params["optimizer.lr"] for trial in load(study_dir).get_trials()]
    assert len(set(drawn)) == 4, drawn
    assert len({sampler_seed(0, 2), sampler_seed(2, 0), sampler_seed(1, 1), sampler_seed(0, 0)}) == 4


# --- Ctrl-C -------------------------------------------------------------------------------------------------


def test_ctrl_c_stops_the_study_and_queues_the_trial_again(tmp_path):
    process = subprocess.Popen(
        [sys.executable, "-m", "autoenc_cli", "tune", *epochs(200), SPACE, "tune.trials=3"],
        cwd=tmp_path,
        stdout=(tmp_path / "out.txt").open("w"),
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob("outputs/sweeps/*/0/history.csv")) and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    study_dir = only_study(tmp_path)
    assert process.returncode == 130, err
    assert f"continue with: autoenc tune resume={Path('outputs/sweeps') / study_dir.name}" in err
    assert metrics(study_dir / "0")["status"] == "interrupted" and (study_dir / "0/checkpoints/last.pt").is_file()
    trials = load(study_dir).get_trials()
    assert [trial.state for trial in trials] == [TrialState.FAIL, TrialState.WAITING]
    assert trials[1].user_attrs["retry_of"] == 0 and trials[1].system_attrs["fixed_params"] == trials[0].params
