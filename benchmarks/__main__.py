"""One command for every benchmark: ``python -m benchmarks NAME [options]``; ``python -m benchmarks NAME --help``
lists a benchmark's options."""

from __future__ import annotations

import importlib
import sys
from typing import Sequence

# name -> (module with main(argv), what it measures)
BENCHMARKS = {
    "core": ("benchmarks.core", "autoenc's training loop, sparsity layers, noise and loggers against baselines"),
    "stacking": ("benchmarks.stacking", "a stacked sweep against the same sweep run job after job: time, memory"),
    "capture": ("benchmarks.capture", "autoenc harvest's capture against the model's own forward pass: tokens/s"),
    "activations": ("benchmarks.activations", "SAE training from a memory-mapped activation cache against a bare loop"),
    "architectures": ("benchmarks.architectures", "a JumpReLU, BatchTopK and Matryoshka SAE's step against top-k's"),
    "spread": ("benchmarks.spread", "how far a stacked sweep's numbers are from job after job, full length"),
}
HINT = "Run 'python -m benchmarks NAME --help' for a benchmark's options (from the repository root)."


def usage() -> str:
    width = max(map(len, BENCHMARKS))
    lines = [f"  {name:<{width}}  {what}" for name, (_, what) in BENCHMARKS.items()]
    return "\n".join(["usage: python -m benchmarks NAME [options]", "", "benchmarks:", *lines, "", HINT])


def main(argv: Sequence[str]) -> int:
    if argv[:1] in (["-h"], ["--help"]):
        print(usage())
        return 0
    if not argv or argv[0] not in BENCHMARKS:
        given = f"unknown benchmark '{argv[0]}'; " if argv else ""
        print(f"python -m benchmarks: error: {given}choose one of {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    module, _ = BENCHMARKS[argv[0]]
    importlib.import_module(module).main(list(argv[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
