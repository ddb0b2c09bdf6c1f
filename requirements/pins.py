"""Checks that keep the pinned sets honest; run with the Python of the environment in question.

    python requirements/pins.py floors                    # pyproject.toml's lower bounds as NAME==VERSION lines
    python requirements/pins.py check-floors FILE         # exit 1 unless FILE pins exactly those lower bounds
    python requirements/pins.py check-installed FILE      # exit 1 if this environment holds a package FILE
                                                          # doesn't pin (pip and autoenc itself aside)

The floors cover [build-system] requires, [project] dependencies and every extra. Each needs a lower bound
(>=, == or ~=): a range with no floor is a claim nobody tests. requirements/oldest.txt must pin exactly
these (.ci/run installs it and runs tests against it); an extra may only name packages that the "test"
extra installs too, or oldest.txt could not pin them.
Runs on any Python 3.10+ that has pip, even in a virtual environment with nothing else installed.
"""

from __future__ import annotations

import importlib.metadata
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    try:
        import tomli as tomllib
    except ModuleNotFoundError:
        from pip._vendor import tomli as tomllib
try:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
    from packaging.version import Version
except ModuleNotFoundError:  # a bare virtual environment: pip carries both
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.utils import canonicalize_name
    from pip._vendor.packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def floors() -> dict[str, str]:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    project = pyproject["project"]
    lines = [*pyproject["build-system"]["requires"], *project["dependencies"]]
    for extra in project.get("optional-dependencies", {}).values():
        lines += extra
    found: dict[str, str] = {}
    for line in lines:
        req = Requirement(line)
        lows = [spec.version for spec in req.specifier if spec.operator in (">=", "==", "~=")]
        if len(lows) != 1:
            sys.exit(f"pins: {line!r} in pyproject.toml needs exactly one lower bound (>=, == or ~=)")
        name = canonicalize_name(req.name)
        if Version(found.get(name, lows[0])) != Version(lows[0]):
            sys.exit(f"pins: {req.name} has two different lower bounds in pyproject.toml")
        found[name] = lows[0]
    return found


def pinned(path: Path) -> dict[str, str]:
    found: dict[str, str] = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            found[canonicalize_name(req.name)] = spec.version
    return found


def refresh_hint(path: Path) -> str:
    return f"Refresh {path} with the command in its 'Written by' line (bash requirements/refresh.sh ...)"


def check_floors(path: Path) -> int:
    pins = pinned(path)
    wrong = [
        f"  {name}: pyproject.toml says >={version}, {path} pins {pins.get(name, 'nothing')}"
        for name, version in sorted(floors().items())
        if name not in pins or Version(pins[name]) != Version(version)
    ]
    if wrong:
        print(f"error: {path} does not pin the lower bounds of pyproject.toml:", *wrong, sep="\n", file=sys.stderr)
        print(refresh_hint(path), file=sys.stderr)
        return 1
    print(f"{path} pins every lower bound in pyproject.toml ({len(floors())} packages)")
    return 0


def check_installed(path: Path) -> int:
    pins = pinned(path)
    installed = {canonicalize_name(dist.metadata["Name"]): dist.version for dist in importlib.metadata.distributions()}
    loose = sorted(f"{name}=={version}" for name, version in installed.items() if name not in {*pins, "pip", "autoenc"})
    if loose:
        print(f"error: installed but not pinned in {path}: {' '.join(loose)}", file=sys.stderr)
        print(refresh_hint(path), file=sys.stderr)
        return 1
    print(f"all {len(installed)} installed packages are pinned in {path}")
    return 0


def main(argv: list[str]) -> int:
    if argv == ["floors"]:
        print("\n".join(f"{name}=={version}" for name, version in sorted(floors().items())))
        return 0
    if len(argv) == 2 and argv[0] == "check-floors":
        return check_floors(Path(argv[1]))
    if len(argv) == 2 and argv[0] == "check-installed":
        return check_installed(Path(argv[1]))
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
