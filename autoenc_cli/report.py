"""``autoenc report``: rebuild the comparison of a finished sweep folder or of a list of run folders."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Sequence


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="autoenc report",
        description="Compare finished runs: writes summary.csv, figures/frontier.png (val_mse vs l0) and "
        "figures/dictionaries.png, and prints a table.",
    )
    parser.add_argument("paths", nargs="+", type=Path, help="a sweep folder, or run folders")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where to write (default: the sweep folder, or outputs/reports/<time> for a list of runs)",
    )
    args = parser.parse_args(list(argv))
    from autoenc_cli.artifacts.console import console
    from autoenc_cli.artifacts.sweep_report import find_runs, write_report

    out = args.out
    if out is None:
        single_sweep = len(args.paths) == 1 and find_runs(args.paths) != [args.paths[0]]
        out = args.paths[0] if single_sweep else Path("outputs") / "reports" / time.strftime("%Y-%m-%d_%H-%M-%S")
    _, table = write_report(args.paths, out)
    console.print(table)
    console.print(
        f"report: [bold]{out}[/] (summary.csv, figures/frontier.png, figures/dictionaries.png)", soft_wrap=True
    )
    if (out / "gallery.html").is_file():
        console.print(f"gallery: [bold]{out / 'gallery.html'}[/]", soft_wrap=True)
    return 0
