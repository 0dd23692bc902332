"""bench/gpu.py --quick, the CI smoke of the GPU benchmark: every section runs and prints."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def test_gpu_bench_quick_runs_every_section():
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "bench/gpu.py", "--quick"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    for precision in ("fp32", "bf16"):
        for k in (1, 4, 16):
            assert re.search(rf"{precision}\s+{k} models/step\s+[\d,]+ model-images/s", out), out
        for k in (1, 4, 16):
            assert re.search(rf"{precision}\s+{k} models/step: 5,518,800,000 model-images at [\d,]+/s, "
                             rf"\s*[\d.]+% idle:\s+[\d,.]+ min", out), out
    assert re.search(r"2 classes \(2 jobs\): fp32 [\d.]+%\s+bf16 [\d.]+%", out), out
    assert re.search(r"5 classes \(2 jobs\): fp32 [\d.]+%\s+bf16 [\d.]+%", out), out
    for mix in ("mse only", "paper mix"):
        assert re.search(rf"{mix}\s+[\d.]+ samples/s", out), out
    assert re.search(r"mse-only step: [\d.,]+ GFLOP, [\d.]+ TFLOP/s, [\d.]+% of the measured matmul rate", out), out
    probe = subprocess.run(
        [sys.executable, "-c", "import sys; sys.path.insert(0, 'bench'); import gpu; "
         "print(sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'gudhi', 'ot', 'optuna', 'wandb')))"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )
    assert probe.stdout.strip() == "[]", probe.stderr[-2000:]
