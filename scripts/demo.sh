#!/usr/bin/env bash
# Set everything up, then run the main job on its tiny default: build the tiny zoo (resumes
# if it exists) and train, evaluate and checkpoint one merge Transformer on it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled}
.venv/bin/python -m sweeps.zoo --profile tiny --out zoo/tiny
exec .venv/bin/python -m sweeps.train_one --config sweeps/configs/train_tiny.yaml "$@"
