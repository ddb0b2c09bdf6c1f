"""``autoenc`` entry point: dispatches subcommands and turns user mistakes into one-line errors.

Only the standard library is imported here, so ``autoenc --help`` answers without loading torch.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Callable, NoReturn, Optional, Sequence

from autoenc_cli import __version__
from autoenc_cli.errors import UserAbort

# command -> (module:function taking the remaining argv, one-line description)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("autoenc_cli.train:main", "train an autoencoder from config groups (Hydra overrides; -m sweeps)"),
    "eval": (
        "autoenc_cli.evaluation.commands:eval_main",
        "score a run: MSE, PSNR, PCA baseline, semi-supervised probes",
    ),
    "encode": ("autoenc_cli.evaluation.commands:encode_main", "write a run's codes for a data set to .npz"),
    "reconstruct": ("autoenc_cli.evaluation.commands:reconstruct_main", "reconstruct (denoise) your images with a run"),
    "report": ("autoenc_cli.report:main", "compare finished runs: a sweep folder or run folders"),
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
"""


def usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = "\n".join(f"  {name:<{width}}  {description}" for name, (_, description) in COMMANDS.items())
    return USAGE.format(commands=lines)


def fail(message: str, code: int = 2) -> NoReturn:
    sys.stderr.write(f"autoenc: error: {message}\n")
    sys.exit(code)


def _load(target: str) -> Callable[[Sequence[str]], Optional[int]]:
    module, _, function = target.partition(":")
    return getattr(importlib.import_module(module), function)


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        sys.stdout.write(usage())
        sys.exit(0 if args else 2)
    if args[0] == "--version":
        sys.stdout.write(f"autoenc {__version__}\n")
        sys.exit(0)
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        fail(f"unknown command '{command}'; choose one of {', '.join(COMMANDS)}")
    keep_traceback = os.environ.get("HYDRA_FULL_ERROR") == "1"
    try:
        code = _load(COMMANDS[command][0])(rest)
    except UserAbort as abort:
        fail(str(abort), abort.error.exit_code)
    except KeyboardInterrupt:  # a second Ctrl-C: stop at once, without a traceback
        fail("interrupted", 130)
    except Exception as error:  # noqa: BLE001 - user mistakes become one line, bugs keep their traceback
        from autoenc_cli.error_report import one_line_or_none

        message = one_line_or_none(error)
        if message is None or keep_traceback:
            raise
        fail(message, getattr(error, "exit_code", 2))
    sys.exit(code or 0)
