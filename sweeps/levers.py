"""Side by side: what each lever does for CNNs the model has never seen (issue 14):
`python -m sweeps.levers [--config FILE] [--name NAME]`.

One training run per variant: the config's base run with the variant's overrides (a
held-out-seed split, permutation augmentation, canonical alignment, training on several
seeds), each in results/<name>/<variant>/. Running the same command again continues a run
that was cut and skips the finished ones. Then, on each variant's test pairs, one table:

- the generated CNNs' acc_in with its interval by target class set, beside copying the
  better parent (per pair, the parent with the higher acc_in: an oracle choice), averaging,
  task arithmetic and the target, and the generated CNNs' acc_in after fine-tuning;
- the paired differences generated − better parent and generated − average, with
  intervals by target and the Wilcoxon p over per-target means.

Written to results/<name>/levers.md, levers.csv and levers.png. With no arguments it runs
sweeps/configs/levers_small.yaml, building the small zoo first if it is missing.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from wsmerge.config import check_int, check_number, from_dict, read_yaml
from wsmerge.files import atomic_write
from wsmerge.intervals import bootstrap_mean, paired_difference, unit_text
from wsmerge.pairs import make_pairs
from wsmerge.results import _figure, _interval, _md_table, _save
from wsmerge.train import RunConfig, read_zoo, train
from wsmerge.zoo import PROFILES, BuildOptions, build_zoo, profile

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "levers_small.yaml"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# The baselines of the table, as the per-pair frame names them ("better_parent" is derived).
_BESIDE = ("better_parent", "average", "task_arithmetic", "target")


def _merged(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `over` laid on it, mappings merged key by key (pairs: {train_seeds: ..}
    changes that key alone)."""
    out = dict(base)
    for k, v in over.items():
        out[k] = _merged(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out


@dataclass(frozen=True)
class LeversConfig:
    """A base run and the variants to train side by side; validated on load."""

    run: dict[str, Any]  # a run config (wsmerge.train.RunConfig) without `out`
    variants: dict[str, dict[str, Any]]  # name -> run config keys that differ from `run`
    zoo_profile: str | None = None  # build this zoo profile at run.zoo when it is missing
    bootstrap: int = 1000  # resamples of every interval
    ci: float = 0.95
    seed: int = 0

    def __post_init__(self):
        if not isinstance(self.run, Mapping):
            raise ValueError(f"run must be a mapping of run config keys, got {type(self.run).__name__}")
        if "out" in self.run:
            raise ValueError("run.out: each variant writes to results/<name>/<variant>; remove out")
        if not isinstance(self.variants, Mapping) or not self.variants:
            raise ValueError("variants must be a non-empty mapping: name -> run config keys to change")
        for name, over in self.variants.items():
            if not isinstance(name, str) or not _NAME.match(name):
                raise ValueError(f"variants: {name!r} is not a usable directory name (letters, digits, _ . -)")
            if not isinstance(over, Mapping):
                raise ValueError(f"variants.{name}: expected a mapping of run config keys, got {over!r}")
        if self.zoo_profile is not None and self.zoo_profile not in PROFILES:
            raise ValueError(f"zoo_profile: unknown profile {self.zoo_profile!r}; known: {sorted(PROFILES)}")
        check_int(self.bootstrap, "bootstrap", 0)
        check_number(self.ci, "ci", 0, 1, open_low=True)
        check_int(self.seed, "seed", 0)
        # Every variant's run config is built here, so a bad override fails before training.
        for name in self.variants:
            self.run_config(name, Path("."))

    def run_config(self, name: str, results: Path) -> RunConfig:
        d = {**_merged(self.run, self.variants[name]), "out": str(results / name)}
        return RunConfig.from_dict(d, f"variants.{name}")

    @classmethod
    def from_yaml(cls, path: str | Path) -> "LeversConfig":
        return from_dict(cls, read_yaml(path), str(path))


def lever_row(per_pair: pd.DataFrame, n_boot: int, ci: float, seed: int) -> dict[str, float]:
    """One variant's line of the table, from its test pairs (test_pairs.csv)."""
    by = {m: rows.sort_values("pair").reset_index(drop=True) for m, rows in per_pair.groupby("method")}
    gen = by["generated"]
    groups = gen["c3"]
    better = np.maximum(by["copy1"]["acc_in"].to_numpy(float), by["copy2"]["acc_in"].to_numpy(float))
    acc = {"generated": gen["acc_in"].to_numpy(float), "better_parent": better,
           **{m: by[m]["acc_in"].to_numpy(float) for m in _BESIDE[1:]}}
    iv = bootstrap_mean(acc["generated"], groups, n_boot, ci, seed)
    row = {"n_pairs": len(gen), "n_targets": groups.nunique(), "generated": iv.value, "generated_lo": iv.lo,
           "generated_hi": iv.hi, **{m: float(np.mean(acc[m])) for m in _BESIDE},
           "generated_ft": float(gen["ft_acc_in"].mean()) if "ft_acc_in" in gen else np.nan}
    for vs in ("better_parent", "average"):
        d = paired_difference(acc["generated"], acc[vs], groups, n_boot, ci, seed)
        row.update({f"vs_{vs}": d.value, f"vs_{vs}_lo": d.lo, f"vs_{vs}_hi": d.hi, f"vs_{vs}_p": d.p_value})
    return row


def levers_markdown(table: pd.DataFrame, ci: float) -> str:
    header = ["variant", "train / test triples", "generated acc_in", "better parent", "average",
              "task arithmetic", "target", "generated after fine-tuning", "generated − better parent",
              "generated − average"]
    rows = [[
        name, f"{r['n_train']:.0f} / {r['n_pairs']:.0f}",
        _interval(r["generated"], r["generated_lo"], r["generated_hi"], ".1f"),
        f"{r['better_parent']:.1f}", f"{r['average']:.1f}", f"{r['task_arithmetic']:.1f}", f"{r['target']:.1f}",
        f"{r['generated_ft']:.1f}",
        _interval(r["vs_better_parent"], r["vs_better_parent_lo"], r["vs_better_parent_hi"], "+.1f")
        + f" (p {r['vs_better_parent_p']:.2g})",
        _interval(r["vs_average"], r["vs_average_lo"], r["vs_average_hi"], "+.1f") + f" (p {r['vs_average_p']:.2g})",
    ] for name, r in table.iterrows()]
    units = unit_text(int(table["n_targets"].max()), int(table["n_pairs"].max()))
    return (f"Test acc_in (%) on the test pairs; [..]: {ci:.0%} bootstrap intervals resampling target class "
            f"sets ({units}); p: Wilcoxon over per-target means. Better parent: per pair, the parent with "
            f"the higher acc_in.\n\n" + _md_table(header, rows) + "\n")


def plot_levers(table: pd.DataFrame, ci: float, path: Path) -> Path:
    fig = _figure(9, 1.6 + 0.45 * len(table))
    ax = fig.add_subplot()
    y = -np.arange(len(table), dtype=float)
    for shift, vs, color in ((0.12, "better_parent", "tab:blue"), (-0.12, "average", "tab:orange")):
        v = table[f"vs_{vs}"].to_numpy(float)
        err = np.vstack([v - table[f"vs_{vs}_lo"].to_numpy(float), table[f"vs_{vs}_hi"].to_numpy(float) - v])
        ax.errorbar(v, y + shift, xerr=np.nan_to_num(err), fmt="o", color=color, capsize=3,
                    label=f"generated − {vs.replace('_', ' ')}")
    ax.axvline(0, color="black", linestyle="--")
    ax.set_yticks(y, list(table.index))
    ax.set_xlabel(f"test acc_in difference, points, paired; {ci:.0%} bootstrap interval resampling targets")
    ax.set_title("What each lever does on CNNs the model has never seen")
    ax.grid(axis="x", alpha=0.3)
    fig.legend(loc="outside lower center", ncols=2, fontsize=8)
    return _save(fig, path)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m sweeps.levers", description=__doc__.split("\n")[0])
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="a levers config (default: %(default)s)")
    p.add_argument("--name", help="results/<name> (default: the config file's stem)")
    p.add_argument("--results", type=Path, default=Path("results"), help="where results/<name> lives")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = LeversConfig.from_yaml(args.config)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = args.results / (args.name or args.config.stem)
    zoo_path = Path(cfg.run["zoo"]) if "zoo" in cfg.run else None
    if cfg.zoo_profile is not None and zoo_path is not None and not zoo_path.exists():
        print(f"building the {cfg.zoo_profile} zoo at {zoo_path}", flush=True)
        build_zoo(profile(cfg.zoo_profile), zoo_path, BuildOptions(progress=False))
    runs = {name: cfg.run_config(name, out) for name in cfg.variants}
    zoos = {}  # each zoo read once, whichever variants share it
    rows = {}
    for i, (name, run) in enumerate(runs.items(), 1):
        print(f"[{i}/{len(runs)}] {name}: {run.out}", flush=True)
        if run.zoo not in zoos:
            zoos[run.zoo] = read_zoo(run.zoo)
        zoo = zoos[run.zoo]
        result = train(run, resume=True, zoo=zoo)
        per_pair = pd.read_csv(result.out / "test_pairs.csv")
        rows[name] = {**lever_row(per_pair, cfg.bootstrap, cfg.ci, cfg.seed),
                      "n_train": len(make_pairs(zoo.checkpoints, run.pairs)["train"]), "best_epoch": result.best_epoch}
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "variant"
    atomic_write(out / "levers.csv", lambda p: table.to_csv(p))
    md = levers_markdown(table, cfg.ci)
    atomic_write(out / "levers.md", lambda p: Path(p).write_text(md))
    plot_levers(table, cfg.ci, out / "levers.png")
    print("\n" + md)
    print(f"written: {out / 'levers.md'}, {out / 'levers.csv'}, {out / 'levers.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
