#!/usr/bin/env bash
# Rewrite a pinned set from a fresh virtual environment (then run `bash .ci/run`, and commit if it passes):
#   bash requirements/refresh.sh latest [REQUIREMENT...]  ->  requirements/constraints.txt
#       the newest versions pyproject.toml allows, on python3 (the Python CI uses); hold a package back by
#       naming it, e.g.  bash requirements/refresh.sh latest "torch==2.14.1" "torchvision==0.29.1"
#   bash requirements/refresh.sh oldest  ->  requirements/oldest.txt
#       pyproject.toml's lower bounds exactly (requirements/pins.py floors), whatever else they need as pip
#       resolves it, on the oldest Python that requires-python claims (python3.10; PYTHON=... to change)
set -euo pipefail
cd "$(dirname "$0")/.."

which=${1:-}
shift || true
case "$which" in
    latest) out=requirements/constraints.txt python=${PYTHON:-python3} ;;
    oldest) out=requirements/oldest.txt python=${PYTHON:-python3.10} ;;
    *) sed -n '2,8p' "$0" >&2; exit 2 ;;
esac

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$python" -m venv "$tmp/venv"
py="$tmp/venv/bin/python"
if [[ $which == oldest ]]; then
    "$py" requirements/pins.py floors >"$tmp/floors.txt"
    "$py" -m pip install -e ".[test]" -c "$tmp/floors.txt" "$@"
    how="pip install -e \".[test]\" -c <(python requirements/pins.py floors)"
else
    "$py" -m pip install -e ".[test]" "$@"
    how="pip install -e \".[test]\"${*:+ $*}"
fi

{
    if [[ $which == oldest ]]; then
        echo "# The OLDEST versions this project claims to work with: pyproject.toml's lower bounds exactly (.ci/run"
        echo "# checks that with requirements/pins.py), plus what they pulled in. .ci/run installs"
        echo "#   python -m pip install -e \".[test]\" -c requirements/oldest.txt"
        echo "# into a fresh Python 3.10 environment (the oldest Python that requires-python claims) and runs part"
        echo "# of the tests against it. Not for everyday use: requirements/constraints.txt is the set to install."
    else
        echo "# The pinned, tested set: every package that"
        echo "#   python -m pip install -e \".[test]\" -c requirements/constraints.txt"
        echo "# installs (CPython 3.11, Linux x86_64). The README's set-up commands and .ci/run both install with"
        echo "# it, so a newcomer gets what CI tests; pyproject.toml keeps the ranges, this file picks one tested"
        echo "# point in them. A constraints file only limits versions and never adds a package, so the nvidia-*,"
        echo "# cuda-* and triton pins count only where the CUDA build of torch pulls them in: a CPU build"
        echo "# (torch 2.14.1+cpu matches torch==2.14.1) needs none of them, and neither does macOS or Windows."
    fi
    echo "#"
    echo "# Written by \`bash requirements/refresh.sh $which${*:+ $*}\` ($(date -u +%Y-%m-%d), $("$py" --version),"
    echo "# $("$py" -m pip --version | cut -d' ' -f1-2)): a fresh virtual environment, $how,"
    echo "# then pip freeze. Don't edit by hand: run that again, then bash .ci/run."
    "$py" -m pip freeze --all --exclude-editable | grep -v -i -E '^(#|-e |pip==|wheel==|autoenc==)' | LC_ALL=C sort -f
} >"$tmp/pins.txt"
mkdir -p requirements
mv "$tmp/pins.txt" "$out"
echo "wrote $out ($(grep -c -v '^#' "$out") packages)"
