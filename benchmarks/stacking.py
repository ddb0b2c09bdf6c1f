"""Benchmark of stacked sweeps against the same sweep run job after job, side by side on this machine.

- End to end: the sweep command from start to sweep report (``autoenc train -m ...``, figures, PCA and
  report included) in fresh processes, with and without ``hydra/launcher=stacked``, interleaved so machine
  noise hits both alike (median of repeats); each process's peak resident memory (``wait4``); each job's
  training throughput (samples/s of one member) and the largest difference of a job's val_mse between the
  two sweeps.
- Training steps: the jobs' epochs in one process, one stacked epoch against each job's own epoch in turn
  (validation excluded), interleaved, median of repeats.

    python -m benchmarks stacking [--repeats 3] [--device auto] [--k 4 8 16 32] [--lr 3e-4 1e-3]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

import torch


def sweep_arguments(ks: Sequence[int], lrs: Sequence[float], device: str, extra: Sequence[str] = ()) -> list[str]:
    return [
        "model=sparse_fc",
        "sparsity=topk",
        f"k={','.join(str(k) for k in ks)}",
        f"optimizer.lr={','.join(str(lr) for lr in lrs)}",
        f"trainer.device={device}",
        *extra,
    ]


def run_sweep(arguments: list[str], stacked: bool, root: Path) -> tuple[float, float, Path]:
    """Wall seconds and peak resident MiB of one sweep command in a fresh process, and its sweep folder."""
    root.mkdir(parents=True)
    command = [sys.executable, "-m", "autoenc_cli", "train", "-m", *arguments]
    if stacked:
        command.append("hydra/launcher=stacked")
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"sweep failed: {' '.join(command)}\n{process.stderr.read().decode()[-2000:]}")
    (sweep_dir,) = (root / "outputs" / "sweeps").iterdir()
    return seconds, usage.ru_maxrss / 1024, sweep_dir


def job_metrics(sweep_dir: Path) -> list[dict]:
    with open(sweep_dir / "summary.csv") as handle:
        runs = [row["run"] for row in csv.DictReader(handle)]
    return [json.loads((sweep_dir / run / "metrics.json").read_text()) for run in runs]


def end_to_end(arguments: list[str], one_job: list[str], repeats: int) -> list[str]:
    times: dict[bool, list[float]] = {False: [], True: []}
    memory: dict[bool, list[float]] = {False: [], True: []}
    folders: dict[bool, Path] = {}
    with tempfile.TemporaryDirectory(prefix="autoenc-stacked-bench-") as scratch:
        for repeat in range(repeats):
            for stacked in (False, True):
                seconds, mib, folders[stacked] = run_sweep(arguments, stacked, Path(scratch) / f"{repeat}-{stacked}")
                times[stacked].append(seconds)
                memory[stacked].append(mib)
        sequential, stacked_jobs = job_metrics(folders[False]), job_metrics(folders[True])
        _, alone, _ = run_sweep(one_job, True, Path(scratch) / "one-job")  # the process without the other members
    jobs = len(sequential)
    difference = max(abs(a["val_mse"] - b["val_mse"]) for a, b in zip(sequential, stacked_jobs))
    wall = {mode: statistics.median(values) for mode, values in times.items()}
    peak = {mode: max(values) for mode, values in memory.items()}
    rate = {
        mode: statistics.median(job["samples_per_second"] for job in jobs_)
        for mode, jobs_ in ((False, sequential), (True, stacked_jobs))
    }
    return [
        f"End to end: `autoenc train -m {' '.join(arguments)}` ({jobs} jobs), median of {repeats}",
        "",
        "| sweep | wall seconds | speed-up | samples/s per job (median) | peak RSS (MiB) |",
        "| --- | ---: | ---: | ---: | ---: |",
        f"| job after job | {wall[False]:.1f} | 1.00x | {rate[False]:,.0f} | {peak[False]:.0f} |",
        f"| stacked | {wall[True]:.1f} | {wall[False] / wall[True]:.2f}x | {rate[True]:,.0f} | {peak[True]:.0f} |",
        "",
        f"Peak memory per stacked member: {(peak[True] - alone) / max(jobs - 1, 1):.1f} MiB (the {jobs}-job stacked "
        f"sweep's peak RSS less a 1-job stacked sweep's, {alone:.0f} MiB, over the {jobs - 1} other members)",
        "",
        f"Largest difference of a job's val_mse, stacked against job after job: {difference:.3g}",
        "",
    ]


def training_steps(arguments: list[str], repeats: int) -> list[str]:
    """Median seconds of one training epoch of every job: stacked, and each job's own epoch in turn."""
    from autoenc_cli.build import build_parts
    from autoenc_cli.compose import run_config, sweep_jobs
    from autoenc_cli.stacking.engine import StackedEpoch
    from autoenc_cli.training.loop import Trainer

    def trainers() -> list[Trainer]:
        built, data = [], None
        for overrides in jobs:
            parts = build_parts(run_config(overrides), data)
            data = parts.data
            built.append(Trainer(parts))
        for trainer in built:
            trainer.begin()
            trainer.next_epoch()  # set up the first phase (optimizer, policy)
        return built

    jobs = sweep_jobs(arguments)
    separate, stacked = trainers(), trainers()
    seconds: dict[str, list[float]] = {"separate": [], "stacked": []}
    for repeat in range(repeats + 1):  # the first round warms up
        started = time.perf_counter()
        for trainer in separate:
            trainer.train_epoch()
        separate_seconds = time.perf_counter() - started
        started = time.perf_counter()
        StackedEpoch(stacked).run()
        stacked_seconds = time.perf_counter() - started
        if repeat:
            seconds["separate"].append(separate_seconds)
            seconds["stacked"].append(stacked_seconds)
    steps = separate[0].steps_per_epoch
    median = {mode: statistics.median(values) for mode, values in seconds.items()}
    return [
        f"Training steps: one epoch of all {len(jobs)} jobs ({steps} steps each), median of {repeats}",
        "",
        "| training | ms per step (all jobs) | speed-up |",
        "| --- | ---: | ---: |",
        f"| job after job | {median['separate'] / steps * 1e3:.2f} | 1.00x |",
        f"| stacked | {median['stacked'] / steps * 1e3:.2f} | {median['separate'] / median['stacked']:.2f}x |",
        "",
    ]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks stacking", description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--k", type=int, nargs="+", default=[4, 8, 16, 32])
    parser.add_argument("--lr", type=float, nargs="+", default=[3e-4, 1e-3])
    parser.add_argument("--steps-only", action="store_true", help="skip the end-to-end sweeps")
    parser.add_argument("--out", default=None, help="also write the markdown to this file")
    args = parser.parse_args(argv)
    arguments = sweep_arguments(args.k, args.lr, args.device)
    one_job = sweep_arguments(args.k[:1], args.lr[:1], args.device)
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    lines = [
        f"# Stacked sweeps: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, device {device}, "
        f"torch {torch.__version__}",
        "",
        *training_steps(arguments, args.repeats),
    ]
    if not args.steps_only:
        lines += end_to_end(arguments, one_job, args.repeats)
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
