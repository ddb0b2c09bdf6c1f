"""``autoenc`` entry point: dispatches subcommands and turns user mistakes into one-line errors.

Only the standard library is imported here, so ``autoenc --help`` answers without loading torch.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from typing import Callable, NoReturn, Optional, Sequence

from autoenc_cli import __version__
from autoenc_cli.compose import HYDRA_INFO_VALUES, HYDRA_VALUE_FLAGS
from autoenc_cli.errors import UserAbort
from autoenc_cli.folder_layout import EXPORT_CONFIG, EXPORT_TENSORS, RunLayout, StudyLayout

# command -> (module:function taking the remaining argv, one-line description)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("autoenc_cli.train:main", "train an autoencoder from config groups (Hydra overrides; -m sweeps)"),
    "eval": (
        "autoenc_cli.evaluation.commands:eval_main",
        "score a run: MSE, PSNR, PCA baseline, probes; loss recovered (activation caches)",
    ),
    "encode": ("autoenc_cli.evaluation.commands:encode_main", "write a run's codes for a data set to .npz"),
    "reconstruct": ("autoenc_cli.evaluation.commands:reconstruct_main", "reconstruct (denoise) your images with a run"),
    "tune": ("autoenc_cli.tuning:main", "search hyperparameters with Optuna (pruning, SQLite study, resume)"),
    "report": ("autoenc_cli.report:main", "compare finished runs: a sweep folder or run folders"),
    "harvest": (
        "autoenc_cli.harvest:main",
        "capture a language model's activations into a cache for data=activations",
    ),
    "export": ("autoenc_cli.export:main", f"write a run's model as {EXPORT_TENSORS} + {EXPORT_CONFIG} to share"),
}

USAGE = """usage: autoenc <command> [arguments]

Config-driven experiment runner for autoencoders in PyTorch.

commands:
{commands}

Run 'autoenc <command> --help' for a command's config groups and options.
Examples:
  autoenc train
  autoenc train model.code_dim=32 trainer.epochs=5 optimizer.lr=3e-4
  autoenc train -m model.code_dim=16,32,64
  autoenc train -m model=sparse_fc sparsity=topk k=5,16,32
  autoenc report outputs/sweeps/<sweep>
  autoenc eval run=outputs/runs/<run> probe.labels_per_class=10,100,all
  autoenc encode run=outputs/runs/<run> out=codes.npz
  autoenc train 'logger=[tensorboard,mlflow]'
  autoenc tune model=sparse_fc sparsity=topk 'tune.params={{k: int(4,64,log), optimizer.lr: float(1e-4,1e-2,log)}}'
  autoenc export run=outputs/runs/<run> out=my_model
  autoenc harvest lm=smollm2 'lm.hooks=[model.layers.15]' text=stdlib tokens=2_000_000 out=acts
  autoenc train experiment=lm_sae data.path=acts k=32
"""


def usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = "\n".join(f"  {name:<{width}}  {description}" for name, (_, description) in COMMANDS.items())
    return USAGE.format(commands=lines)


def fail(message: str, code: int = 2) -> NoReturn:
    sys.stderr.write(f"autoenc: error: {message}\n")
    sys.exit(code)


def version() -> str:
    """The installed distribution's version; the source's own where the package is not installed."""
    from importlib import metadata

    try:
        return metadata.version("autoenc")
    except metadata.PackageNotFoundError:
        return __version__


RUN_COMMANDS = ("eval", "encode", "reconstruct", "export")  # they take run=RUN_DIR
PATH_KEYS = {"path", "root", "run", "input", "out", "resume", "output_root", "checkpoint", "dir", "text"}  # take a path


def bare_argument_problem(command: str, args: Sequence[str]) -> Optional[str]:
    """The one-line error for an argument that is not KEY=VALUE, or None when every argument is an
    override or a flag. A bare path is most often a run folder given without ``run=``, or the rest of
    a path with spaces that the shell split into two arguments."""
    import shlex
    from pathlib import Path

    if command not in ("train", "tune", "harvest", *RUN_COMMANDS):
        return None
    previous: Optional[str] = None
    position = 0
    while position < len(args):
        argument = args[position]
        position += 1
        if argument.startswith("-"):
            if command == "train" and argument in HYDRA_VALUE_FLAGS:
                position += 1
            elif argument in ("-i", "--info") and position < len(args) and args[position] in HYDRA_INFO_VALUES:
                position += 1
            previous = None
            continue
        if "=" in argument or argument.startswith("~"):  # ~KEY deletes a key in Hydra's grammar
            previous = argument if "=" in argument else None
            continue
        rest = [argument]
        while position < len(args) and "=" not in args[position] and not args[position].startswith(("-", "~")):
            rest.append(args[position])
            position += 1
        if previous is not None:
            joined = " ".join([previous, *rest])
            key, _, value = joined.partition("=")
            takes_path = key.rpartition(".")[2].lstrip("+") in PATH_KEYS or "/" in value or os.sep in value
            opened = previous.partition("=")[2]  # a YAML list or mapping cut at a space: [{width: 8}]
            unbalanced = opened.count("[") > opened.count("]") or opened.count("{") > opened.count("}")
            if Path(value).exists() or (takes_path and not any(Path(piece).exists() for piece in rest)):
                what = "path"
            elif unbalanced:
                what = "value"
            else:
                what = None
            if what is not None:
                return (
                    f"'{argument}' is not KEY=VALUE; if it is the rest of {key}='{value}', the shell split a "
                    f"{what} with spaces: quote the whole argument, {shlex.quote(joined)}"
                )
        if command in RUN_COMMANDS and not any(other.startswith("run=") for other in args):
            return f"'{argument}' is not KEY=VALUE; to use the run in that folder write run={shlex.quote(argument)}"
        if command == "train" and RunLayout(argument).checkpoints.is_dir():
            return f"'{argument}' is not KEY=VALUE; to continue that run write resume={shlex.quote(argument)}"
        if command == "tune" and StudyLayout(argument).study_db.is_file():
            return f"'{argument}' is not KEY=VALUE; to continue that study write resume={shlex.quote(argument)}"
        return f"'{argument}' is not KEY=VALUE; 'autoenc {command} --help' lists the options"
    return None


# What Hydra's override grammar takes unquoted; a path with any other character (non-ASCII letters,
# brackets, quotes, commas, '=') must be quoted for it, which autoenc does for the user.
PLAIN_VALUE = re.compile(r"[A-Za-z0-9_\-/\\+.$%*@?|: ]*")


def quoted_paths(command: str, args: Sequence[str]) -> list[str]:
    """Paths (``data.path=``, ``output_root=``, ...) passed to Hydra as quoted strings when its grammar
    would not read them as typed: ``data.path=données.npz``, ``output_root='runs (new)'``."""
    if command not in ("train", "tune", "harvest", *RUN_COMMANDS):
        return list(args)
    return [_quoted_path(argument) for argument in args]


def _quoted_path(argument: str) -> str:
    key, equals, value = argument.partition("=")
    if argument.startswith("-") or not equals or not value or value[0] in "'\"":
        return argument
    if key.rpartition(".")[2].lstrip("+~") not in PATH_KEYS or PLAIN_VALUE.fullmatch(value):
        return argument
    if _hydra_reads(argument):  # a sweep over paths (a.npz,b.npz) or a glob stays as it is
        return argument
    # Hydra's quoted strings: a quote, and backslashes just before a quote or the closing one, are escaped.
    escaped = re.sub(r"(\\*)('|$)", lambda match: match.group(1) * 2 + ("\\'" if match.group(2) else ""), value)
    return f"{key}='{escaped}'"


def _hydra_reads(argument: str) -> bool:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        OverridesParser.create().parse_override(argument)
    except Exception:  # noqa: BLE001 - any parse error: Hydra cannot read it as typed
        return False
    return True


def _load(target: str) -> Callable[[Sequence[str]], Optional[int]]:
    module, _, function = target.partition(":")
    return getattr(importlib.import_module(module), function)


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        sys.stdout.write(usage())
        sys.exit(0 if args else 2)
    command, rest = args[0], args[1:]
    if command in ("--version", "-V") or (command in COMMANDS and "--version" in rest):
        sys.stdout.write(f"autoenc {version()}\n")  # also for `autoenc train --version`, not Hydra's
        sys.exit(0)
    if command not in COMMANDS:
        fail(f"unknown command '{command}'; choose one of {', '.join(COMMANDS)}")
    problem = bare_argument_problem(command, rest)
    if problem is not None:
        fail(problem)
    rest = quoted_paths(command, rest)
    keep_traceback = os.environ.get("HYDRA_FULL_ERROR") == "1"
    try:
        code = _load(COMMANDS[command][0])(rest)
    except UserAbort as abort:
        fail(str(abort), abort.error.exit_code)
    except KeyboardInterrupt:  # a second Ctrl-C: stop at once, without a traceback
        fail("interrupted", 130)
    except Exception as error:  # noqa: BLE001 - user mistakes become one line, bugs keep their traceback
        from autoenc_cli.error_report import one_line_or_none, with_sweep_hint

        message = one_line_or_none(error)
        if message is None or keep_traceback:
            raise
        fail(with_sweep_hint(message, rest), getattr(error, "exit_code", 2))
    sys.exit(code or 0)
