"""Train one merge TransformerAE: `python -m sweeps.train_one --config FILE [--resume]`.

Prints a line of metrics per epoch and the test pairs' results next to the baselines at the
end; everything is also written under the config's `out` directory.
"""

from __future__ import annotations

import argparse
import math
import sys

from wsmerge.intervals import few_units_warning, unit_text
from wsmerge.seeds import SEEDS_FILE, train_seeds
from wsmerge.train import RunConfig, train
from wsmerge.zoo import ZooStoreError

# The columns of the closing table: what the generated CNNs do, next to the baselines.
_TABLE = ("acc_in", "acc_out", "forget_c1", "forget_c2", "agreement", "ft_acc_in", "catchup_steps", "ft_stable_rate")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m sweeps.train_one", description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True, help="YAML run config (see sweeps/configs/train_tiny.yaml)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run's last checkpoint, or start if there is none; a finished run is left as it is")
    p.add_argument("--epochs", type=int, help="override the config's epochs (e.g. to extend a resumed run)")
    p.add_argument("--out", help="override the config's out directory")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def _epoch_line(m: dict[str, float]) -> str:
    return (
        f"epoch {m['epoch']:>3}  train loss {m['train/loss']:.4g}  val loss {m['val/loss/loss']:.4g}  "
        f"val acc_in {m['val/generated/acc_in']:.1f}%  (average {m['val/average/acc_in']:.1f}%, "
        f"target {m['val/target/acc_in']:.1f}%)  spearman {m.get('val/corr/spearman', float('nan')):+.2f}"
    )


def _methods(summary: dict[str, float]) -> list[str]:
    names = {k.split("/")[0] for k in summary if "/" in k}
    return sorted((m for m in names if m not in ("corr", "loss") and not m.startswith("vs_")),
                  key=lambda m: (m != "generated", m))


def _units(summary: dict[str, float], unit: str) -> str:
    pairs, targets = int(summary["n_pairs"]), summary.get("n_targets", math.nan)
    if math.isnan(targets):  # a run tested before intervals named their unit
        unit = "pair"
    return unit_text(0 if math.isnan(targets) else int(targets), pairs, unit)


def _bounds(summary: dict[str, float], key: str, spec: str) -> str:
    lo, hi = summary.get(f"{key}_lo", math.nan), summary.get(f"{key}_hi", math.nan)
    return "" if math.isnan(lo) else f" [{lo:{spec}}, {hi:{spec}}]"


def comparisons(summary: dict[str, float], unit: str) -> str:
    """The generated CNNs' accuracy and its paired differences to each baseline, with their
    intervals and the unit they resample, one line each."""
    units = _units(summary, unit)
    lines = []
    for metric in ("acc_in", "ft_acc_in"):
        key = f"generated/{metric}"
        if key not in summary:
            continue
        lines.append(f"generated {metric}: {summary[key]:.1f}{_bounds(summary, key, '.1f')} ({units})")
        for m in _methods(summary):
            d = f"vs_{m}/{metric}"
            if d in summary:
                p = summary.get(f"{d}_p", math.nan)
                lines.append(f"  generated − {m}: {summary[d]:+.1f} points{_bounds(summary, d, '+.1f')}"
                             + ("" if math.isnan(p) else f", Wilcoxon p={p:.2g}"))
    return "\n".join(lines)


def results_table(summary: dict[str, float]) -> str:
    methods = _methods(summary)
    rows = ["| method | " + " | ".join(_TABLE) + " |", "|---" * (len(_TABLE) + 1) + "|"]
    for m in methods:
        cells = [summary.get(f"{m}/{c}") for c in _TABLE]
        rows.append(f"| {m} | " + " | ".join("-" if v is None else f"{v:.2f}" for v in cells) + " |")
    return "\n".join(rows)


def _without(argv: list[str], flag: str = "--resume") -> list[str]:
    return [a for a in argv if a != flag]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    overrides = {k: v for k, v in (("epochs", args.epochs), ("out", args.out)) if v is not None}
    if args.no_progress:
        overrides["progress"] = False
    try:
        cfg = RunConfig.from_yaml(args.config, **overrides)
        if cfg.seeds:
            report = lambda s, m: print(f"seed {s}  {_epoch_line(m)}", flush=True)  # noqa: E731
            repeats = train_seeds(cfg, report=report, resume=args.resume)
        else:
            result = train(cfg, report=lambda m: print(_epoch_line(m), flush=True), resume=args.resume)
    except (ValueError, FileNotFoundError, FileExistsError, ZooStoreError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # The last finished epoch is checkpointed; the one cut short is trained again.
        again = " ".join(["python -m sweeps.train_one", *_without(argv if argv is not None else sys.argv[1:]), "--resume"])
        print(f"\ninterrupted; continue with:\n  {again}", file=sys.stderr)
        return 130
    if cfg.seeds:
        for s, run in repeats.runs.items():
            print(f"\n== seed {s} ==")
            _print_result(cfg, run)
        print(f"\n== across seeds {cfg.seeds} (varying {', '.join(cfg.vary)}), written to {repeats.out / SEEDS_FILE} ==")
        print(spread_table(repeats.spread))
        return 0
    _print_result(cfg, result)
    return 0


def spread_table(spread: dict[str, dict[str, float]]) -> str:
    rows = ["| test metric | mean | std | min | max | seeds |", "|---|---|---|---|---|---|"]
    for m, v in spread.items():
        rows.append(f"| {m} | {v['mean']:.2f} | {v['std']:.2f} | {v['min']:.2f} | {v['max']:.2f} | {v['n']} |")
    return "\n".join(rows)


def _print_result(cfg: RunConfig, result) -> None:
    if result.already_complete:
        print(f"{result.out} is complete ({len(result.history)} epochs, tested epoch {result.best_epoch}); "
              "nothing to do. Its test results:")
    t = result.test
    scales = ", ".join(f"{k} /{v:.4g}" for k, v in result.scales.items())
    print(f"\nloss scales: {scales}")
    print(f"tested: the model of epoch {result.best_epoch} of {len(result.history)} (best validation acc_in)")
    print(f"test pairs ({int(t['n_pairs'])}, targets never seen in training), written to {result.out}:")
    print(results_table(t))
    unit = cfg.evaluation.interval_unit
    print(f"\n{cfg.evaluation.ci:.0%} bootstrap intervals resampling test {unit}s:")
    print(comparisons(t, unit))
    corr = " ".join(f"{k} {t[f'corr/{k}']:+.2f}{_bounds(t, f'corr/{k}', '+.2f')}"
                    for k in ("spearman", "pearson", "kendall") if f"corr/{k}" in t)
    print(f"loss-accuracy correlation: {corr or 'n/a'} ({_units(t, unit)})")
    warning = few_units_warning(int(t["n_targets"])) if unit == "target" and "n_targets" in t else None
    if warning:
        print(f"note: {warning}")

if __name__ == "__main__":
    sys.exit(main())
