"""bench/gpu.py --quick --levers --profile, the CI smoke of the GPU benchmark: every section runs and prints."""

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
    done = subprocess.run([sys.executable, "bench/gpu.py", "--quick", "--levers", "--profile"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    for precision in ("fp32", "bf16"):
        for k in (1, 4, 16):
            assert re.search(rf"{precision}\s+{k} models/step\s+compiled\s+[\d,]+ model-images/s  \(an epoch\s+[\d,]+/s, "
                             rf"\s*[\d.]+ s a group besides; warm-up\s+[\d.]+ s, of which compiling the step\s+[\d.]+ s "
                             rf"and the evaluation\s+[\d.]+ s\)", out), out
            if k > 1:
                # A CPU compiles nothing.
                assert re.search(rf"{precision}\s+{k} models/step:\s+\d+ groups,\s+[\d.]+% of step slots idle; "
                                 rf"training\s+[\d,.]+ min, evaluation\s+[\d,.]+ min, compiling  0.0 min "
                                 rf"\(0 step graphs, 0 evaluation\):\s+[\d,.]+ min", out), out
    assert "5,518,800,000 model-images trained, 1,468,440,000 evaluated" in out, out
    for k in (4, 16):
        assert re.search(rf"^\s+{k} models:\s+[\d,]+ model-images/s$", out, re.M), out
        assert re.search(rf"bf16\s+{k} models/step\s+eager\s+[\d,]+ model-images/s", out), out
        assert re.search(rf"bf16\s+{k} models/step: compiled / eager = [\d.]+", out), out
    assert re.search(r"bf16\s+16 models/step: patches padded to 32 / unpadded = [\d.]+ \(an epoch's rate\)", out), out
    assert re.search(r"bf16\s+16 models/step: CUDA graphs / default compile = [\d.]+ \(an epoch's rate\)", out), out
    assert re.search(r"\(the profile, the validation forward and CUDA graphs: \d+ s of this part\)", out), out
    assert re.search(r"16 models of\s+128 images:\s+[\d.]+ s in place,\s+[\d.]+ s built apart \([\d.]+x\)", out), out
    assert re.search(r"fp32, 16 models a step, one epoch of 64 images a class: [\d.]+ s under the profiler", out), out
    for phase in ("steps", "validation", "test", "draw"):
        assert re.search(rf"zoo\.{phase}\s+host\s+[\d.]+ s\s+device\s+[\d.]+ s", out), out
    assert re.search(r"[\d.]+ s\s+\d+x\s+aten::\w+", out), out
    assert re.search(r"float32 under the profiler: [\d.]+ s\n    no device: the host operations", out), out
    for label in ("float32", "float32, TF32 matmuls", "bf16 autocast", "float32, conv1 grouped"):
        assert re.search(rf"{label}\s+[\d,]+ model-images/s \(\s*[\d.]+x\); accuracy moved at most [\d.]+ points, median [\d.]+", out), out
    assert re.search(r"\(zoo_parts: \d+ s\)", out) and re.search(r"\(merge_part: \d+ s\)", out), out
    assert re.search(r"^total \d+ s$", out, re.M), out
    assert re.search(r"2 classes \(2 jobs\): fp32 [\d.]+%\s+bf16 [\d.]+%", out), out
    assert re.search(r"5 classes \(2 jobs\): fp32 [\d.]+%\s+bf16 [\d.]+%", out), out
    assert re.search(r"tiny preset \([\d,]+ parameters; a sample's step: mse only [\d.]+ GFLOP, "
                     r"paper mix [\d.]+ GFLOP, [\d.]+x\)", out), out
    eager = ("mse only", "paper mix", "mse + contrastive", "mse + behavioral")
    for batch, kind, mixes in ((4, "eager", eager), (8, "eager", eager), (4, "plain", eager[:2]),
                               (4, "heuristic", eager[:2]), (8, "compiled", eager[:2])):
        for mix in mixes:
            assert re.search(rf"batch\s+{batch} {kind}\s+{re.escape(mix)}\s+[\d.]+ samples/s\s+[\d.]+x mse's step",
                             out), out
        assert re.search(rf"batch\s+{batch} {kind}\s+the host dispatches \d+ operations in an mse-only step, \d+ in a "
                         rf"paper-mix step \([\d.]+x\)", out), out
        assert re.search(rf"batch\s+{batch} {kind}\s+paper mix costs [\d.]+x mse alone \(median of 2 alternating "
                         rf"rounds\); mse-only step [\d.]+ TFLOP/s, [\d.]+% of the measured matmul rate", out), out
    probe = subprocess.run(
        [sys.executable, "-c", "import sys; sys.path.insert(0, 'bench'); import gpu; "
         "print(sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'gudhi', 'ot', 'optuna', 'wandb')))"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )
    assert probe.stdout.strip() == "[]", probe.stderr[-2000:]
