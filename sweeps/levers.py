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
  intervals by target and the Wilcoxon p over per-target means;
- with `reference: <variant>`, each variant's generated acc_in minus the reference's on
  the same test pairs (variants whose test pairs differ, e.g. another split, get none).

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
from wsmerge.results import BASELINE_CACHE, _figure, _interval, _md_table, _save
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
    reference: str | None = None  # the variant every other is compared with, pair by pair
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
            if not isinstance(name, str) or not _NAME.match(name) or name == BASELINE_CACHE:
                raise ValueError(f"variants: {name!r} is not a usable directory name (letters, digits, _ . -; "
                                 f"not {BASELINE_CACHE}, where the variants keep their baselines)")
            if not isinstance(over, Mapping):
                raise ValueError(f"variants.{name}: expected a mapping of run config keys, got {over!r}")
        if self.reference is not None and self.reference not in self.variants:
            raise ValueError(f"reference: {self.reference!r} is not a variant; variants: {list(self.variants)}")
        if self.zoo_profile is not None and self.zoo_profile not in PROFILES:
            raise ValueError(f"zoo_profile: unknown profile {self.zoo_profile!r}; known: {sorted(PROFILES)}")
        check_int(self.bootstrap, "bootstrap", 0)
        check_number(self.ci, "ci", 0, 1, open_low=True)
        check_int(self.seed, "seed", 0)
        # Every variant's run config is built here, so a bad override fails before training.
        for name in self.variants:
            self.run_config(name, Path("."))

    def run_config(self, name: str, results: Path) -> RunConfig:
        # Variants on the same test triples score the baselines once between them.
        d = {"baseline_cache": str(results / BASELINE_CACHE), **_merged(self.run, self.variants[name]),
             "out": str(results / name)}
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


def vs_reference(
    generated: Mapping[str, pd.DataFrame], reference: str, n_boot: int, ci: float, seed: int
) -> dict[str, dict[str, float]]:
    """Per variant: its generated acc_in minus the reference variant's, paired on the same
    test pairs (generated: variant -> its generated rows with `cnn1`, `cnn2`, `target`, the
    zoo rows of each test triple). A variant tested on other triples, or the reference
    itself, gets NaN."""
    ref = generated[reference]
    out = {}
    for name, gen in generated.items():
        same = name != reference and len(gen) == len(ref) and all(
            np.array_equal(gen[c].to_numpy(), ref[c].to_numpy()) for c in ("cnn1", "cnn2", "target"))
        d = paired_difference(gen["acc_in"], ref["acc_in"], ref["c3"], n_boot, ci, seed) if same else None
        out[name] = {f"vs_reference{k}": np.nan if d is None else getattr(d, a)
                     for k, a in (("", "value"), ("_lo", "lo"), ("_hi", "hi"), ("_p", "p_value"))}
    return out


def levers_markdown(table: pd.DataFrame, ci: float, reference: str | None = None) -> str:
    header = ["variant", "train / test triples", "generated acc_in", "better parent", "average",
              "task arithmetic", "target", "generated after fine-tuning", "generated − better parent",
              "generated − average"] + [f"generated − {reference}"] * (reference is not None)

    def vs_ref(name: str, r: pd.Series) -> list[str]:
        if reference is None:
            return []
        if name == reference or np.isnan(r["vs_reference"]):
            return ["–" if name == reference else "other test pairs"]
        return [_interval(r["vs_reference"], r["vs_reference_lo"], r["vs_reference_hi"], "+.1f")
                + f" (p {r['vs_reference_p']:.2g})"]

    rows = [[
        name, f"{r['n_train']:.0f} / {r['n_pairs']:.0f}",
        _interval(r["generated"], r["generated_lo"], r["generated_hi"], ".1f"),
        f"{r['better_parent']:.1f}", f"{r['average']:.1f}", f"{r['task_arithmetic']:.1f}", f"{r['target']:.1f}",
        f"{r['generated_ft']:.1f}",
        _interval(r["vs_better_parent"], r["vs_better_parent_lo"], r["vs_better_parent_hi"], "+.1f")
        + f" (p {r['vs_better_parent_p']:.2g})",
        _interval(r["vs_average"], r["vs_average_lo"], r["vs_average_hi"], "+.1f") + f" (p {r['vs_average_p']:.2g})",
        *vs_ref(name, r),
    ] for name, r in table.iterrows()]
    units = unit_text(int(table["n_targets"].max()), int(table["n_pairs"].max()))
    return (f"Test acc_in (%) on the test pairs; [..]: {ci:.0%} bootstrap intervals resampling target class "
            f"sets ({units}); p: Wilcoxon over per-target means. Better parent: per pair, the parent with "
            f"the higher acc_in.\n\n" + _md_table(header, rows) + "\n")


def plot_levers(table: pd.DataFrame, ci: float, path: Path, reference: str | None = None) -> Path:
    fig = _figure(9, 1.6 + 0.5 * len(table))
    ax = fig.add_subplot()
    y = -np.arange(len(table), dtype=float)
    series = [(0.15, "better_parent", "tab:blue", "better parent"), (0.0, "average", "tab:orange", "average")]
    if reference is not None:
        series.append((-0.15, "reference", "tab:green", reference))
    for shift, vs, color, label in series:
        v = table[f"vs_{vs}"].to_numpy(float)
        err = np.vstack([v - table[f"vs_{vs}_lo"].to_numpy(float), table[f"vs_{vs}_hi"].to_numpy(float) - v])
        ax.errorbar(v, y + shift, xerr=np.nan_to_num(err), fmt="o", color=color, capsize=3,
                    label=f"generated − {label}")
    ax.axvline(0, color="black", linestyle="--")
    ax.set_yticks(y, list(table.index))
    ax.set_xlabel(f"test acc_in difference, points, paired; {ci:.0%} bootstrap interval resampling targets")
    ax.set_title("What each lever does on CNNs the model has never seen")
    ax.grid(axis="x", alpha=0.3)
    fig.legend(loc="outside lower center", ncols=len(series), fontsize=8)
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
    rows, generated = {}, {}
    for i, (name, run) in enumerate(runs.items(), 1):
        print(f"[{i}/{len(runs)}] {name}: {run.out}", flush=True)
        if run.zoo not in zoos:
            zoos[run.zoo] = read_zoo(run.zoo)
        zoo = zoos[run.zoo]
        result = train(run, resume=True, zoo=zoo)
        per_pair = pd.read_csv(result.out / "test_pairs.csv")
        pairs = make_pairs(zoo.checkpoints, run.pairs)
        rows[name] = {**lever_row(per_pair, cfg.bootstrap, cfg.ci, cfg.seed),
                      "n_train": len(pairs["train"]), "best_epoch": result.best_epoch}
        # test_pairs.csv numbers the test triples in the split's order: their zoo rows, by pair.
        gen = per_pair[per_pair["method"] == "generated"].sort_values("pair").reset_index(drop=True)
        test = pairs["test"]
        generated[name] = gen.assign(**{c: test[c].to_numpy()[gen["pair"].to_numpy()] for c in ("cnn1", "cnn2", "target")})
    if cfg.reference is not None:
        for name, diff in vs_reference(generated, cfg.reference, cfg.bootstrap, cfg.ci, cfg.seed).items():
            rows[name].update(diff)
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "variant"
    atomic_write(out / "levers.csv", lambda p: table.to_csv(p))
    md = levers_markdown(table, cfg.ci, cfg.reference)
    atomic_write(out / "levers.md", lambda p: Path(p).write_text(md))
    plot_levers(table, cfg.ci, out / "levers.png", cfg.reference)
    print("\n" + md)
    print(f"written: {out / 'levers.md'}, {out / 'levers.csv'}, {out / 'levers.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
