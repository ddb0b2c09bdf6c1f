"""``autoenc report``: rebuild the comparison of a finished sweep folder or of a list of run folders."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Optional, Sequence

from autoenc_cli.folder_layout import (
    DICTIONARIES,
    FRONTIER,
    LOSS_RECOVERED,
    RATE_DISTORTION,
    SUMMARY_CSV,
    ReportLayout,
)


def holding_sweep(paths: Sequence[Path]) -> Optional[Path]:
    """The sweep or study folder that directly holds every run in ``paths``: a report into it rebuilds that
    sweep's own report (the one folder of its kind an out= may be)."""
    from autoenc_cli.output_paths import owner_kind

    parents = {Path(path).resolve().parent for path in paths}
    if len(parents) != 1:
        return None
    (parent,) = parents
    return parent if owner_kind(parent) in ("sweep", "tune study") else None


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="autoenc report",
        description=f"Compare finished runs: writes {SUMMARY_CSV}, {FRONTIER} (FVU vs l0, a line per sparsity "
        f"option), {LOSS_RECOVERED} (loss recovered vs l0, for runs on an activation cache), {RATE_DISTORTION} (KL vs "
        f"reconstruction, for variational runs) and {DICTIONARIES}, and "
        "prints a table.",
    )
    parser.add_argument("paths", nargs="+", type=Path, help="a sweep folder, or run folders")
    parser.add_argument(
        "--out",
        default=None,
        help="where to write: a new or empty folder, not inside a run, sweep or study folder (default: the sweep "
        "folder, or outputs/reports/<time> for a list of runs)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier report in --out")
    args = parser.parse_args(list(argv))
    from autoenc_cli.artifacts.console import console
    from autoenc_cli.artifacts.sweep_report import REPORT_OUTPUTS, find_runs, write_report
    from autoenc_cli.output_paths import check_folder_out, out_path

    single_sweep = len(args.paths) == 1 and find_runs(args.paths) != [args.paths[0]]
    if args.out is None:
        out = args.paths[0] if single_sweep else Path("outputs") / "reports" / time.strftime("%Y-%m-%d_%H-%M-%S")
    else:
        out = out_path(args.out, REPORT_OUTPUTS.example)
    own = args.paths[0] if single_sweep else holding_sweep(args.paths)
    check_folder_out(out, args.overwrite, REPORT_OUTPUTS, own=own)
    _, table = write_report(args.paths, out)
    console.print(table)
    written = [
        name
        for name in (SUMMARY_CSV, FRONTIER, LOSS_RECOVERED, RATE_DISTORTION, DICTIONARIES)
        if (out / name).is_file()
    ]
    console.print(f"report: [bold]{out}[/] ({', '.join(written)})", soft_wrap=True)
    gallery = ReportLayout(out).gallery_html
    if gallery.is_file():
        console.print(f"gallery: [bold]{gallery}[/]", soft_wrap=True)
    return 0
