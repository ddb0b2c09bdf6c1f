"""Every ``autoenc ...`` command that the code blocks of README.md and the docs site (docs/**/*.md) and the
``--help`` texts show runs.

The commands are read from the documents when the tests are collected: a command added to the README, to a page
of the docs or to a help text is a new test, and fails unless it runs; one shown in several places runs once.
Each runs in this process (``autoenc_cli.cli.main``) in a fresh folder, cheaply:

- placeholders (``outputs/runs/<run>``, ``RUN_DIR``, ``my_images.npz``, ``acts.npy``, ``my_configs``, ...) stand
  for tiny fixtures made once for the module (each test gets its own copy of a run, sweep or study folder);
- outputs it names (``out=my_model``, ``codes.npz``, ``denoised/``) are new paths in that fresh folder;
- a language model (``docs/language-models.md``): ``lm=smollm2`` (harvest's default) stands for a tiny random
  Llama of two blocks (tests/conftest.py), its hooks mapped onto them (``model.layers.15`` -> ``model.layers.1``),
  Python's texts (``text=stdlib|pydoc``) for a few hundred tokens of text, and ``data.path=`` of a training on
  activations (``data=activations``, ``experiment=lm_sae``) for a cache harvested from them once, with held-out
  text to score loss recovered on;
- training is shrunk to its smallest (``SMALLEST``: one epoch of 64 digits, no figures unless a gallery shows
  them; greedy stages of one epoch; two trials; probes of 5 steps; loss recovered on 32 held-out tokens), and a
  harvest too (``HARVEST_SMALLEST``: 200 tokens in contexts of 16); a value the command gives for one of those
  keys is replaced, not repeated (autoenc refuses a key given twice);
- a synopsis (``usage: autoenc eval run=RUN_DIR [split=val|test] ...``) runs in its shortest form: optional
  ``[...]`` parts left out, the first of ``A|B``.

A command that cannot run here is listed in ``CANNOT_RUN`` with the reason, and tested as far as it can be.
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import io
import re
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pytest
import torch
import yaml

from autoenc_cli import cli

from conftest import run_main, train_in

ROOT = Path(__file__).resolve().parents[1]
# The README, then the docs site's pages (a command shown in several is named by the first).
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
# Every help text (autoenc --help, then each command's).
HELP_ARGUMENTS = [
    (),
    ("train",),
    ("tune",),
    ("eval",),
    ("encode",),
    ("reconstruct",),
    ("export",),
    ("report",),
    ("harvest",),
]

# The smallest training a command can stand for: the key and the value it gets (replacing the command's own).
SMALLEST = {
    "trainer.epochs": "1",
    "data.limit": "64",
    "trainer.figures": "false",
    "trainer.pca_baseline": "false",
}
GREEDY_SMALLEST = {"schedule.epochs_per_stage": "1"}  # with schedule=greedy (a greedy preset or the option)
TUNE_SMALLEST = {"tune.trials": "2"}
EVAL_SMALLEST = {"probe.steps": "5"}  # L-BFGS iterations of each probe
STUDY_TRIALS = 2  # the study fixture's trials; `tune resume=` asks for one more
# A harvest from the tiny language model's text (about 300 tokens): 14 contexts of 16 tokens cached (210 rows),
# the 2 before them held out (the model's context is at most 64 tokens).
HARVEST_SMALLEST = {"tokens": "200", "heldout_tokens": "32", "lm.context_size": "16"}
ACTIVATIONS_SMALLEST = {"data.heldout_tokens": "32"}  # loss recovered on the tiny cache's held-out text
TINY_LM_BLOCKS = 2  # conftest's tiny language models
SHIPPED_TEXTS = ("stdlib", "pydoc")  # text= values that are Python's own texts (millions of tokens)

# Commands that cannot run here, with the reason; each is tested as far as it can be (below).
CANNOT_RUN = {
    "autoenc train experiment=hinton2006 data=mnist data.root=DIR": (
        "full MNIST: DIR must hold torchvision's files (DIR/MNIST/raw/*-ubyte, fetched with data.download=true), "
        "which a test cannot download; test_full_mnist_composes_and_names_a_missing_folder covers the rest"
    ),
    "autoenc train experiment=vae_mnist data=mnist data.root=DIR": (
        "full MNIST, as hinton2006's; test_full_mnist_composes_and_names_a_missing_folder covers the rest"
    ),
    "autoenc <command>": (
        "the synopsis of every subcommand; each one's --help is run to collect the commands here "
        "(test_every_help_text_answers)"
    ),
}


# --- reading the commands --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Documented:
    text: str  # the command as documented (a synopsis in its shortest form), in normal_form
    where: str  # the document it is in (README.md, docs/tune.md), or the help text


def normal_form(text: str) -> str:
    """One spelling per command, whatever its quoting: ``autoenc 'resume=outputs/runs/<run>'``."""
    return shlex.join(shlex.split(text, comments=True))


def code_blocks(language: str, document: Path) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", document.read_text(), flags=re.M | re.S)


def document_commands() -> list[Documented]:
    """The ``autoenc`` commands of the documents' shell blocks (continuation lines joined, ``&&`` split)."""
    found = []
    for document in DOCUMENTS:
        where = document.relative_to(ROOT).as_posix()
        for block in code_blocks("bash", document):
            for line in block.replace("\\\n", " ").splitlines():
                for part in line.split("&&"):
                    if shlex.split(part, comments=True)[:1] == ["autoenc"]:
                        found.append(Documented(normal_form(part), where))
    return found


@functools.cache
def help_text(arguments: tuple[str, ...]) -> str:
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        code = run_main([*arguments, "--help"])
    assert code == 0, f"autoenc {' '.join(arguments)} --help exits {code}"
    return output.getvalue()


def help_where(arguments: tuple[str, ...]) -> str:
    return shlex.join(["autoenc", *arguments, "--help"])


SUBCOMMANDS = set(cli.COMMANDS)
SYNOPSIS = re.compile(r"^\s*(?:usage:\s*)?(autoenc\b.*)$", flags=re.I)


def shortest(synopsis: str) -> str:
    """A synopsis's shortest form: optional [...] parts left out, the first of A|B."""
    while re.search(r"\[[^\[\]]*\]", synopsis):
        synopsis = re.sub(r"\s*\[[^\[\]]*\]", "", synopsis)
    return re.sub(r"=([^\s|]+)(\|[^\s]+)+", r"=\1", synopsis)


def help_commands() -> list[Documented]:
    """Each line of a help text that is a command or a synopsis (``usage: autoenc ...``), without the remark
    after it (``autoenc train --cfg job      (print the composed config and exit)``)."""
    found = []
    for arguments in HELP_ARGUMENTS:
        for line in help_text(arguments).splitlines():
            match = SYNOPSIS.match(line)
            if match is None:
                continue
            text = re.sub(r"\s{2,}\(.*$", "", match.group(1)).strip()
            if line.lstrip().lower().startswith("usage:"):
                text = shortest(text)
            words = shlex.split(text)
            if len(words) == 1 or words[1] in SUBCOMMANDS or words[1].startswith(("-", "<")):  # not a title
                found.append(Documented(normal_form(text), help_where(arguments)))
    return found


def documented() -> list[Documented]:
    """Every command once (the first place that shows it names it)."""
    unique: dict[str, Documented] = {}
    for command in [*document_commands(), *help_commands()]:
        unique.setdefault(command.text, command)
    return list(unique.values())


COMMANDS = documented()
RUNNABLE = [command for command in COMMANDS if command.text not in map(normal_form, CANNOT_RUN)]


# --- fixtures: what the placeholders stand for -----------------------------------------------------------------


@dataclass(frozen=True)
class Fixtures:
    run: Path  # a tiny greedy run (stages, so checkpoint=stage2 exists)
    sweep: Path  # a finished two-job sweep
    study: Path  # a tune study of STUDY_TRIALS trials
    images: Path  # an .npz of 80 digits-sized images with labels
    vectors: Path  # an .npy of 80 vectors of 16 floats
    config_dir: Path  # my_configs: model/my_model.yaml
    space: Path  # the documented YAML search space (docs/tune.md)
    sae: Path  # a tiny top-k sparse autoencoder on the vectors (linear output): what format=saelens exports


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread (and many commands run here, one after another)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory) -> Fixtures:
    root = tmp_path_factory.mktemp("documented")
    rng = np.random.default_rng(0)
    images, vectors = root / "images.npz", root / "vectors.npy"
    np.savez(images, images=rng.integers(0, 256, (80, 28, 28), dtype=np.uint8), labels=np.arange(80) % 10)
    np.save(vectors, rng.standard_normal((80, 16)).astype(np.float32))
    run, sweep, study = root / "run", root / "sweep", root / "study"
    greedy = ["schedule=greedy", "model.tied=true", "model.encoder=[{width: 16}]", "model.code_dim=8"]
    more_digits = {**SMALLEST, **GREEDY_SMALLEST, "data.limit": "200"}  # probes with 10 labels per class
    train_in(root, with_values(["train", *greedy, f"hydra.run.dir={run}"], more_digits))
    train_in(root, with_values(["train", "-m", "model.code_dim=4,8", f"hydra.sweep.dir={sweep}"], SMALLEST))
    space = "tune.params={optimizer.lr: float(1e-3, 1e-2, log)}"
    study_argv = ["tune", space, f"tune.trials={STUDY_TRIALS}", f"hydra.sweep.dir={study}"]
    train_in(root, with_values(study_argv, SMALLEST))
    config_dir = root / "my_configs"
    (config_dir / "model").mkdir(parents=True)
    my_model = (ROOT / "configs" / "model" / "fc.yaml").read_text().replace("code_dim: 64", "code_dim: 12")
    (config_dir / "model" / "my_model.yaml").write_text(my_model)
    (space_file := root / "space.yaml").write_text(documented_search_space())
    sae = root / "sae"
    sae_argv = ["train", "model=sparse_fc", "data=vectors", f"data.path={vectors}", "sparsity=topk", "k=4"]
    train_in(root, with_values([*sae_argv, f"hydra.run.dir={sae}"], SMALLEST))
    return Fixtures(run, sweep, study, images, vectors, config_dir, space_file, sae)


def documented_search_space() -> str:
    (block,) = [block for document in DOCUMENTS for block in code_blocks("yaml", document) if "model.encoder:" in block]
    return block


@dataclass(frozen=True)
class LanguageFixtures:
    model: Path  # the tiny Llama folder that lm=smollm2 stands for
    text: Path  # the tiny text folder that text=stdlib|pydoc stands for
    cache: Path  # a cache harvested from them (`autoenc harvest out=DIR`, stood in): data.path= of data=activations


@pytest.fixture(scope="module")
def language_fixtures(tiny_lm_folders, tiny_text_folder, tmp_path_factory) -> LanguageFixtures:
    """Made when a command first needs it (test_a_documented_command_runs asks for it by name), so the
    commands without a language model do not wait for one."""
    root = tmp_path_factory.mktemp("documented_lm")
    language = LanguageFixtures(tiny_lm_folders["llama"], tiny_text_folder, root / "cache")
    train_in(root, cheap(on_the_tiny_language_model(["harvest", f"out={language.cache}"], lambda: language)))
    return language


StandIns = dict[str, Callable[[], object]]


def placeholders(fixtures: Fixtures, cwd: Path) -> StandIns:
    """Each placeholder's stand-in, made when a command names it; the folders a command may change (a
    resumed study, a sweep's rebuilt report, a run's eval.json) are copies in ``cwd``."""
    return {
        "outputs/runs/<run>": lambda: copy(fixtures.run, cwd / "run"),
        "outputs/runs/<sae>": lambda: copy(fixtures.sae, cwd / "sae"),
        "RUN_DIR": lambda: copy(fixtures.run, cwd / "run"),
        "outputs/sweeps/<sweep>": lambda: copy(fixtures.sweep, cwd / "sweep"),
        "paths": lambda: copy(fixtures.sweep, cwd / "sweep"),  # autoenc report's synopsis
        "outputs/sweeps/<study>": lambda: copy(fixtures.study, cwd / "study"),
        "my_images.npz": lambda: fixtures.images,
        "noisy.npz": lambda: fixtures.images,
        "FILE.npz": lambda: fixtures.images,
        "acts.npy": lambda: fixtures.vectors,
        "my_configs": lambda: fixtures.config_dir,
        "space.yaml": lambda: fixtures.space,
        "KEY=V1,V2,...": lambda: "model.code_dim=8,16",  # autoenc train's synopsis of a sweep
        "{KEY: SPEC, ...}": lambda: "{optimizer.lr: float(1e-3, 1e-2, log)}",  # autoenc tune's synopsis
    }


def copy(source: Path, target: Path) -> Path:
    if not target.exists():
        shutil.copytree(source, target)
    return target


def substituted(words: list[str], stand_ins: StandIns) -> list[str]:
    """Each word, or the value of each KEY=VALUE word, that is a placeholder, replaced by its stand-in."""
    result = []
    for word in words:
        key, equals, value = word.partition("=")
        if word in stand_ins:
            word = str(stand_ins[word]())
        elif equals and value in stand_ins:
            word = f"{key}={stand_ins[value]()}"
        result.append(word)
    return result


def given_values(words: list[str]) -> dict[str, str]:
    return dict(word.partition("=")[::2] for word in words if "=" in word)


def on_the_tiny_language_model(words: list[str], language: Callable[[], LanguageFixtures]) -> list[str]:
    """A harvest of SmolLM2 as one of the tiny Llama, and a training on activations on its cache."""
    if words[0] == "harvest":
        return harvest_of_the_tiny_model(words, language)
    if words[0] in ("train", "tune") and picks(given_values(words), "data", "activations"):
        return training_on_the_tiny_cache(words, language)
    return words


def harvest_default(key: str) -> str:
    """What ``autoenc harvest`` uses when the command leaves ``key`` out (configs/harvest.yaml)."""
    config = yaml.safe_load((ROOT / "configs" / "harvest.yaml").read_text())
    defaults = {
        group: option for entry in config["defaults"] if isinstance(entry, dict) for group, option in entry.items()
    }
    return str({**defaults, **config}[key])


def harvest_of_the_tiny_model(words: list[str], language: Callable[[], LanguageFixtures]) -> list[str]:
    """lm=smollm2 (given or by default) -> the tiny Llama (lm=hf lm.name=FOLDER), its hooks on the tiny blocks,
    SmolLM2's separator (lm.bos_token, no word of the tiny vocabulary) left to the tiny tokenizer's BOS token;
    text=stdlib|pydoc (given or by default) -> the tiny text."""
    values = given_values(words)
    if values.get("lm", harvest_default("lm")) != "smollm2":
        return words
    stand_ins = {"lm": "hf", "lm.name": str(language().model)}
    if "lm.hooks" in values:
        stand_ins["lm.hooks"] = on_the_tiny_blocks(values["lm.hooks"])
    if values.get("text", harvest_default("text")) in SHIPPED_TEXTS:
        stand_ins["text"] = str(language().text)
    return with_values([word for word in words if word.partition("=")[0] != "lm.bos_token"], stand_ins)


def training_on_the_tiny_cache(words: list[str], language: Callable[[], LanguageFixtures]) -> list[str]:
    """data.path= (a cache folder) -> the tiny cache, data.hook= -> its hook; a command without data.path= is
    left to fail, as it would for its reader."""
    values = given_values(words)
    if "data.path" not in values:
        return words
    stand_ins = {"data.path": str(language().cache)}
    if "data.hook" in values:
        stand_ins["data.hook"] = on_the_tiny_blocks(values["data.hook"])
    return with_values(words, stand_ins)


BLOCK = re.compile(r"\b(model\.layers\.)(\d+)\b")


def on_the_tiny_blocks(hooks: str) -> str:
    """SmolLM2's blocks (``model.layers.N``) in ``hooks`` mapped onto the tiny model's, the deepest onto its last
    and each shallower one onto the block before (at least the first): 15 -> 1; 5 and 15 -> 0 and 1."""
    named = sorted({int(block) for _, block in BLOCK.findall(hooks)}, reverse=True)
    tiny = {block: max(TINY_LM_BLOCKS - 1 - rank, 0) for rank, block in enumerate(named)}
    return BLOCK.sub(lambda match: f"{match.group(1)}{tiny[int(match.group(2))]}", hooks)


# --- making a command cheap ------------------------------------------------------------------------------------


def preset(name: str) -> dict:
    return yaml.safe_load((ROOT / "configs" / "experiment" / f"{name}.yaml").read_text()) or {}


def presets(values: dict[str, str]) -> list[dict]:
    """The experiment presets a command names (``experiment=deep_fc``, ``'experiment=glob(sparse_*)'``)."""
    experiment = values.get("experiment", "")
    pattern = re.fullmatch(r"glob\((.*)\)", experiment)
    names = [path.stem for path in (ROOT / "configs" / "experiment").glob("*.yaml")]
    return [preset(name) for name in names if fnmatch.fnmatch(name, pattern.group(1) if pattern else experiment)]


def picks(values: dict[str, str], group: str, option: str) -> bool:
    """Whether a command picks ``option`` of config ``group``: ``group=option``, or a preset that does."""
    if group in values:
        return values[group] == option
    return any({f"override /{group}": option} in (found.get("defaults") or []) for found in presets(values))


def trains_greedy(values: dict[str, str]) -> bool:
    return picks(values, "schedule", "greedy")


def draws_a_gallery(values: dict[str, str]) -> bool:
    """Presets with a gallery caption need their figures (the gallery shows them)."""
    return any((found.get("gallery") or {}).get("caption") for found in presets(values))


def with_values(words: list[str], values: dict[str, str]) -> list[str]:
    """``words`` with each KEY=VALUE of ``values`` set: a word that gives the key gets the value, else it is added."""
    given = {word.partition("=")[0]: index for index, word in enumerate(words) if "=" in word}
    words = list(words)
    for key, value in values.items():
        if key in given:
            words[given[key]] = f"{key}={value}"
        else:
            words.append(f"{key}={value}")
    return words


def cheap(words: list[str]) -> list[str]:
    """The command at its smallest size (``words`` starts with the subcommand)."""
    command, values = words[0], given_values(words)
    if command == "eval":
        return with_values(words, EVAL_SMALLEST)
    if command == "harvest":
        return with_values(words, HARVEST_SMALLEST)
    if command not in ("train", "tune") or "--cfg" in words:
        return words
    if "resume" in values:  # a resume repeats what it continues: only the budget of a study may grow
        return with_values(words, {"tune.trials": str(STUDY_TRIALS + 1)}) if command == "tune" else words
    smallest = {
        **SMALLEST,
        **(GREEDY_SMALLEST if trains_greedy(values) else {}),
        **(ACTIVATIONS_SMALLEST if picks(values, "data", "activations") else {}),
    }
    if draws_a_gallery(values):
        del smallest["trainer.figures"]
    return with_values(words, {**smallest, **(TUNE_SMALLEST if command == "tune" else {})})


# --- the tests -------------------------------------------------------------------------------------------------


def test_the_documents_show_commands_of_every_kind():
    """The extraction finds what the documents hold (an empty list would pass every test below)."""
    where = {command.where for command in COMMANDS}
    assert "README.md" in where and {help_where(arguments) for arguments in HELP_ARGUMENTS} <= where
    assert {"docs/tune.md", "docs/loggers.md", "docs/export.md"} <= where, where  # the docs site's pages too
    subcommands = {shlex.split(command.text)[1] for command in COMMANDS}
    assert {"train", "tune", "eval", "encode", "reconstruct", "export", "report", "harvest", "<command>"} <= subcommands
    assert len(RUNNABLE) >= 40, len(RUNNABLE)
    stale = set(map(normal_form, CANNOT_RUN)) - {command.text for command in COMMANDS}
    assert not stale, f"CANNOT_RUN lists commands no document shows any more: {stale}"


def test_every_help_text_answers():
    """``autoenc <command> --help`` for each command (the help texts the commands above are read from)."""
    for arguments in HELP_ARGUMENTS:
        assert re.search(rf"usage: autoenc {' '.join(arguments) or '<command>'}(\s|$)", help_text(arguments), re.I)


@pytest.mark.parametrize("command", RUNNABLE, ids=[command.text for command in RUNNABLE])
def test_a_documented_command_runs(command, fixtures, request, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    words = substituted(shlex.split(command.text)[1:], placeholders(fixtures, tmp_path))
    words = on_the_tiny_language_model(words, lambda: request.getfixturevalue("language_fixtures"))
    unresolved = [word for word in words if re.search(r"<\w+>", word)]
    assert not unresolved, f"{command.where}: give {unresolved} a stand-in in placeholders()"
    argv = cheap(words)
    code = run_main(argv)
    output = capsys.readouterr()
    assert code == 0, f"{command.where}: autoenc {shlex.join(argv)} exits {code}: {output.err[-2000:]}"


@pytest.mark.parametrize(("experiment", "code_dim"), [("hinton2006", 30), ("vae_mnist", 40)])
def test_full_mnist_composes_and_names_a_missing_folder(experiment, code_dim, tmp_path, monkeypatch, capsys):
    """CANNOT_RUN's full-MNIST reproductions: the config composes, and without the files it stops in one line
    that names the folder and how to fetch them, leaving no run folder."""
    monkeypatch.chdir(tmp_path)
    argv = ["train", f"experiment={experiment}", "data=mnist"]
    assert run_main([*argv, "data.root=DIR", "--cfg", "job"]) == 0
    printed = capsys.readouterr().out
    assert "name: mnist" in printed and "root: DIR" in printed and f"code_dim: {code_dim}" in printed
    assert run_main([*argv, "data.root=DIR"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "DIR" in error and "data.download=true" in error, error
    assert not (tmp_path / "outputs").exists()
