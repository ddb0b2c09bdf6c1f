"""How far a stacked sweep's numbers are from the same sweep run job after job, job by job.

Each job's val_mse and dead fraction both ways, over several sweeps and seeds, full length (default epochs
and data).

Each sweep runs in fresh processes (``autoenc train -m ...``, with and without ``hydra/launcher=stacked``,
figures and PCA baselines off: they do not touch the numbers compared). The table has one row per job
and a last line with the largest differences; the sweeps take minutes each on two CPU cores.

    python -m benchmarks spread [--seeds 0 1] [--sweeps topk kl fc adamw] [--device auto] [--out FILE]
"""

from __future__ import annotations

import argparse
import csv
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from benchmarks.stacking import run_sweep

# Four kinds of sweep: the stacked top-k sweep of docs/stacking.md (top-k's discrete choices amplify any
# last-bit difference), a penalty weight and target sweep, plain fc models of two code sizes (two stacks), AdamW.
SWEEPS = {
    "topk": ["model=sparse_fc", "sparsity=topk", "k=4,8,16,32", "optimizer.lr=3e-4,1e-3"],
    "kl": ["model.code_activation=sigmoid", "sparsity=kl", "lam=0.03,0.1,0.3", "sparsity.kl.rho=0.05,0.1"],
    "fc": ["model.code_dim=16,32", "optimizer.lr=3e-4,1e-3,3e-3"],
    "adamw": ["optimizer=adamw", "optimizer.lr=1e-3,3e-3", "optimizer.weight_decay=0.01,0.1"],
}
QUIET = ["trainer.figures=false", "trainer.pca_baseline=false"]


@dataclass
class JobPair:
    sweep: str
    seed: int
    job: str
    overrides: str
    stack: str
    sequential: dict[str, str]
    stacked: dict[str, str]

    def difference(self, key: str) -> float:
        return abs(float(self.stacked[key]) - float(self.sequential[key]))

    def relative(self, key: str) -> float:
        return self.difference(key) / abs(float(self.sequential[key]))


def summary_rows(sweep_dir: Path) -> list[dict[str, str]]:
    with open(sweep_dir / "summary.csv") as handle:
        return list(csv.DictReader(handle))


def sweep_pairs(name: str, arguments: list[str], seed: int, scratch: Path) -> list[JobPair]:
    folders = {
        stacked: run_sweep([*arguments, f"seed={seed}"], stacked, scratch / f"{len(list(scratch.iterdir()))}")[2]
        for stacked in (False, True)
    }
    sequential, stacked = summary_rows(folders[False]), summary_rows(folders[True])
    for ours, theirs in zip(stacked, sequential):
        if (ours["status"], theirs["status"]) != ("completed", "completed"):
            raise SystemExit(f"{name}, seed {seed}: job {theirs['run']} did not complete both ways")
    return [
        JobPair(name, seed, theirs["run"], theirs["label"], ours["stack"], theirs, ours)
        for ours, theirs in zip(stacked, sequential)
    ]


def table(pairs: list[JobPair]) -> list[str]:
    lines = [
        "| sweep | seed | job | stack | val_mse job after job | val_mse stacked | abs. difference | rel. difference "
        "| dead fraction job after job / stacked |",
        "| --- | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for pair in pairs:
        lines.append(
            f"| {pair.sweep} | {pair.seed} | #{pair.job} {pair.overrides} | {pair.stack} "
            f"| {float(pair.sequential['val_mse']):.9g} | {float(pair.stacked['val_mse']):.9g} "
            f"| {pair.difference('val_mse'):.3g} | {pair.relative('val_mse'):.3g} "
            f"| {float(pair.sequential['dead_fraction']):.4g} / {float(pair.stacked['dead_fraction']):.4g} |"
        )
    differing = [pair for pair in pairs if pair.difference("val_mse") or pair.difference("dead_fraction")]
    lines += [
        "",
        f"{len(pairs)} jobs in {len({(pair.sweep, pair.seed) for pair in pairs})} sweeps; jobs whose val_mse or dead "
        f"fraction differ: {len(differing)}; largest val_mse difference: "
        f"{max(pair.difference('val_mse') for pair in pairs):.3g} absolute, "
        f"{max(pair.relative('val_mse') for pair in pairs):.3g} relative; largest dead fraction difference: "
        f"{max(pair.difference('dead_fraction') for pair in pairs):.3g}",
    ]
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks spread", description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--sweeps", nargs="+", choices=sorted(SWEEPS), default=list(SWEEPS))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default=None, help="also write the markdown to this file")
    args = parser.parse_args(argv)
    pairs: list[JobPair] = []
    with tempfile.TemporaryDirectory(prefix="autoenc-stacked-spread-") as scratch:
        for name in args.sweeps:
            for seed in args.seeds:
                arguments = [*SWEEPS[name], *QUIET, f"trainer.device={args.device}"]
                pairs += sweep_pairs(name, arguments, seed, Path(scratch))
                print(f"done: {name}, seed {seed}", flush=True)
    text = "\n".join(table(pairs))
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
