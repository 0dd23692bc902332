"""Build a model zoo: `python -m sweeps.zoo --profile tiny` (CI, laptops) or `--profile full`.

A YAML config names a base profile and overrides any of its fields:

    profile: tiny
    activations: [relu, gelu]
    train: {max_epochs: 7, bins: [3, 5, 7]}

Running the same command again resumes: finished models are skipped.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from wsmerge.cnn import ACTIVATIONS, INITS
from wsmerge.config import read_yaml
from wsmerge.data import load_mnist
from wsmerge.zoo import PROFILES, BuildOptions, ZooConfig, ZooStoreError, build_zoo, export_csv, load


def _csv_list(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m sweeps.zoo", description=__doc__.split("\n")[0])
    p.add_argument("--profile", choices=sorted(PROFILES), default=None, help="base profile (default tiny)")
    p.add_argument("--config", type=Path, help="YAML file: `profile:` plus fields to override")
    p.add_argument("--out", type=Path, help="zoo directory (default zoo/<name>)")
    p.add_argument("--inits", help="'all' or a comma-separated list of inits")
    p.add_argument("--activations", help="'all' or a comma-separated list of activations")
    p.add_argument("--actors", type=int, help="number of Ray actors (default: what the resources hold)")
    p.add_argument("--cpus-per-actor", type=float, default=1.0)
    p.add_argument("--gpus-per-actor", type=float, default=0.0, help="fraction of a GPU per actor")
    p.add_argument("--models-per-step", type=int, default=1, help="models one actor trains per step (GPU: 64+)")
    p.add_argument("--data-root", help="torchvision MNIST root instead of the packaged copy")
    p.add_argument("--export-csv", type=Path, help="also write the seed report's CSV layout here")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def resolve_config(args: argparse.Namespace) -> ZooConfig:
    """The profile, then the YAML's overrides, then the command line's: all validated here,
    before Ray starts or anything trains."""
    overrides: dict = {}
    base = args.profile
    if args.config is not None:
        overrides = read_yaml(args.config)
        yaml_profile = overrides.pop("profile", None)
        if yaml_profile is not None and yaml_profile not in PROFILES:
            raise ValueError(f"{args.config}: unknown profile {yaml_profile!r}; known: {sorted(PROFILES)}")
        if base is not None and yaml_profile is not None and base != yaml_profile:
            raise ValueError(f"--profile {base} contradicts {args.config}'s profile: {yaml_profile}")
        base = base or yaml_profile
    cfg = PROFILES[base or "tiny"]
    if overrides:
        where = str(args.config)
        merged = cfg.to_dict()
        train = overrides.pop("train", None)
        merged.update(overrides)
        if train is not None:
            if not isinstance(train, dict):
                raise ValueError(f"{where}: train must be a mapping, got {type(train).__name__}")
            merged["train"] = {**merged["train"], **train}
        cfg = ZooConfig.from_dict(merged, where)
    if args.inits:
        cfg = cfg.replace(inits=INITS if args.inits == "all" else _csv_list(args.inits))
    if args.activations:
        cfg = cfg.replace(activations=ACTIVATIONS if args.activations == "all" else _csv_list(args.activations))
    return cfg


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = resolve_config(args)
        opts = BuildOptions(
            actors=args.actors,
            cpus_per_actor=args.cpus_per_actor,
            gpus_per_actor=args.gpus_per_actor,
            models_per_step=args.models_per_step,
            data_root=args.data_root,
            progress=not args.no_progress,
        )
        if args.data_root:
            load_mnist(args.data_root)  # a wrong root fails here, not inside every actor
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = args.out or Path("zoo") / cfg.name
    try:
        report = build_zoo(cfg, out, opts)
    except ZooStoreError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rows = load(out)
    print(
        f"zoo {cfg.name} at {out}: {report.total} models ({report.skipped} already built, "
        f"{report.trained} trained now), {len(rows)} checkpoints; "
        f"test accuracy on own classes at the last bin: "
        f"median {rows.loc[rows.epoch_bin == rows.epoch_bin.max(), 'test_acc_in'].median():.1f}%"
    )
    if args.export_csv:
        export_csv(rows, args.export_csv)
        print(f"CSV written to {args.export_csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
