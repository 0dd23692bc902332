"""Sweep overhead: a trial of fixed work (about 30 s) through the sweep engine against the
same `wsmerge.train.train` call made directly, side by side in one run.

The trial goes the whole way a sweep trial goes: Ray Tune with OptunaSearch (its space a
single point, so that both paths train the same run), the run config shipped with
tune.with_parameters, a checkpoint reported to Tune every epoch, a W&B run (offline; and
again without W&B, which starts two Ray actors and a wandb service for every trial). Both
train on one thread. Each round calls train directly, then runs each sweep of two such
trials one after the other; rounds alternate (a busy spell on a shared machine hits all)
and ratios are medians over rounds. Ray is started before the clock (a cluster is
long-lived).

What a sweep pays per trial is the second trial's time, from the end of the first to the end
of the sweep: the trial actor is reused (reuse_actors), as it is for every trial after the
first `concurrency` ones. The first trial also pays, once per actor, for starting the Tuner
and for the worker's imports (torch, Ray Tune, wsmerge): printed beside it.

    .venv/bin/python bench/sweep_overhead.py        # about 6 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import ray
import torch

from sweeps.engine import TRIALS, prepare_folder, run_sweep
from sweeps.hparams import HparamSweep
from wsmerge.train import train
from wsmerge.zoo import BuildOptions, build_zoo, profile


def _history(run_dir: Path) -> list[dict]:
    history = json.loads((run_dir / "history.json").read_text())["history"]
    return [{k: v for k, v in h.items() if not k.endswith("/seconds")} for h in history]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--zoo", default="zoo/tiny", help="a zoo (the tiny profile is built there when missing)")
    p.add_argument("--epochs", type=int, default=8, help="the fixed work: about 30 s of training at 8")
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="so", dir="/tmp"))
    try:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private local instance
        ray.init(num_cpus=len(os.sched_getaffinity(0)), include_dashboard=False, _temp_dir=f"{tmp}/r",
                 log_to_driver=False)
        if not Path(args.zoo).exists():
            build_zoo(profile("tiny"), args.zoo, BuildOptions(progress=False))
        sweeps = {mode: HparamSweep.from_dict(
            {
                "space": {"lr": {"choices": [1e-3]}},
                "run": {
                    "zoo": args.zoo,
                    "model": {"preset": "tiny", "d_model": 32, "d_ff": 64, "neck": 16},
                    "pairs": {"overlap": [0, 1], "split_by": "target", "epoch_bins": [3], "seed": 0},
                    "losses": {"mse": 0.5, "behavioral": 0.5},
                    "evaluation": {"images_per_class": 100, "finetune_steps": 0, "bootstrap": 100},
                    "epochs": args.epochs,
                    "batch_size": 16,
                },
                "num_samples": 2,
                "concurrency": 1,
                "cpus_per_trial": 1,
                "scheduler": {"kind": "fifo"},
                "wandb": {"mode": mode},
            },
            "bench",
        ) for mode in ("offline", "disabled")}
        sweep = sweeps["offline"]
        direct = sweep.space.apply(sweep.run, {"lr": 1e-3}).replace(zoo=str(Path(args.zoo).resolve()))
        torch.set_num_threads(1)
        times: dict[str, list[float]] = {}
        for r in range(args.rounds):
            t0 = time.perf_counter()
            train(direct.replace(out=str(tmp / f"direct{r}")))
            times.setdefault("direct", []).append(time.perf_counter() - t0)
            for mode, sweep in sweeps.items():
                folder = tmp / f"sweep-{mode}{r}"
                prepare_folder(sweep, folder)
                start = time.time()
                grid = run_sweep(sweep, folder)
                end = time.time()
                assert grid.num_terminated == 2, grid.errors
                first_end = min((d / "result.json").stat().st_mtime for d in (folder / TRIALS).iterdir())
                times.setdefault(f"first-{mode}", []).append(first_end - start)
                times.setdefault(f"trial-{mode}", []).append(end - first_end)
        same = all(_history(d) == _history(tmp / "direct0") for d in (tmp / "sweep-offline0" / TRIALS).iterdir())

        print(f"\nthe fixed work: tiny zoo, d_model 32, {args.epochs} epochs, mse + behavioral, 1 thread")
        print("\n| path | wall s per round | median s | / (a) |\n|---|---|---|---|")
        rows = (
            ("direct", "(a) train() called directly"),
            ("trial-offline", "(b) a sweep trial: Tune + Optuna + a checkpoint per epoch + W&B offline"),
            ("trial-disabled", "(b') the same without W&B"),
            ("first-offline", "(c) the first trial of a sweep: (b) + the Tuner's start + the worker's imports"),
        )
        for key, name in rows:
            ratio = statistics.median(t / a for a, t in zip(times["direct"], times[key]))
            print(f"| {name} | {', '.join(f'{t:.1f}' for t in times[key])} | {statistics.median(times[key]):.1f} "
                  f"| {ratio:.3f} |")
        for key, name in (("trial-offline", "with W&B"), ("trial-disabled", "without W&B")):
            ratio = statistics.median(b / a for a, b in zip(times["direct"], times[key]))
            print(f"overhead of a sweep trial {name}: {100 * (ratio - 1):+.1f}% (median over {args.rounds} rounds; "
                  f"requirement: under +10%)")
        print(f"same training in both (every epoch's metrics but the timings): {'yes' if same else 'NO'}")
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
