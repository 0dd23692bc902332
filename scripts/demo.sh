#!/usr/bin/env bash
# Set everything up, then run the main job on its embedded tiny default: a loss-mix sweep
# (python -m sweeps.loss_combo) that builds the tiny zoo if it is missing, trains and tests
# a TransformerAE per trial, and writes the ranking and plots to results/loss_combo_tiny/.
# Run it again after a crash or Ctrl-C and it continues the sweep. Arguments go to loss_combo.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled}
exec .venv/bin/python -m sweeps.loss_combo "$@"
