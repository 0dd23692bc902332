"""Build a model zoo: `python -m sweeps.zoo --profile tiny` (CI, laptops) or `--profile full`.

A YAML config names a base profile and overrides any of its fields:

    profile: tiny
    activations: [relu, gelu]
    train: {max_epochs: 7, bins: [3, 5, 7]}

Running the same command again resumes: finished models are skipped. `--plan` says what a
build would do (jobs, model-images, disk, time from a short probe) and trains nothing.

The zoo directory (docs/zoo.md):

    <out>/manifest.json            format, the config that built it, the job ids
    <out>/init.parquet             epoch-0 weights of every (activation, init, seed)
    <out>/shards/<job_id>.parquet  one model: a row per epoch bin, its weights and metrics

Read it with `wsmerge.zoo.load(out)` (one row per checkpoint).

On a Ray cluster (cluster/README.md): `--address` (or RAY_ADDRESS) joins it, and actors
spread over its nodes by the CPUs and GPUs they ask for; a relative --out is read under
`--storage` (or WSMERGE_STORAGE). A node lost part-way loses no finished model: its
actors' models are trained again by the actors left, or by the next run of the command.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from wsmerge.cluster import STORAGE_ENV, storage_root, under
from wsmerge.cnn import ACTIVATIONS, INITS
from wsmerge.config import read_yaml
from wsmerge.data import load_mnist
from wsmerge.zoo import (
    PROFILES,
    ActorsLost,
    BuildOptions,
    ZooConfig,
    ZooStore,
    ZooStoreError,
    build_zoo,
    export_csv,
    load,
    plan_build,
    plan_groups,
    probe_rates,
    train_images,
)


def _csv_list(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m sweeps.zoo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"activations: {', '.join(ACTIVATIONS)}\ninits: {', '.join(INITS)}",
    )
    p.add_argument("--profile", choices=sorted(PROFILES), default=None, help="base profile (default tiny)")
    p.add_argument("--config", type=Path, help="YAML file: `profile:` plus fields to override")
    p.add_argument("--out", type=Path, help="zoo directory (default zoo/<name>, under --storage when given)")
    p.add_argument("--storage", help=f"a directory every node sees, for relative paths (default ${STORAGE_ENV}, "
                                     "else the current directory)")
    p.add_argument("--address", help="the Ray cluster to join (default $RAY_ADDRESS, else a local Ray)")
    p.add_argument("--inits", help="'all' or a comma-separated list of inits")
    p.add_argument("--activations", help="'all' or a comma-separated list of activations")
    p.add_argument("--actors", type=int, help="number of Ray actors (default: what the resources hold)")
    p.add_argument("--cpus-per-actor", type=float, default=1.0)
    p.add_argument("--gpus-per-actor", type=float, default=0.0, help="fraction of a GPU per actor")
    p.add_argument("--models-per-step", type=int, default=BuildOptions.models_per_step,
                   help="models one actor trains per step; the zoo is the same whatever it is "
                        "(default: 1 on CPU actors, 256 on GPU actors; bench/gpu.py measures the rates)")
    p.add_argument("--no-compile", action="store_true",
                   help="on a GPU, run the training step eagerly instead of through torch.compile "
                        "(which costs seconds of compilation per actor and gives about 1.7x the speed)")
    p.add_argument("--data-root", help="torchvision MNIST root instead of the packaged copy")
    p.add_argument("--export-csv", type=Path, help="also write the seed report's CSV layout here")
    p.add_argument("--plan", action="store_true",
                   help="print the jobs, model-images, disk size and a projected time (training, evaluation and, "
                        "where the step compiles, compiling), train nothing")
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
            compile=not args.no_compile,
            data_root=args.data_root,
            progress=not args.no_progress,
            address=args.address,
        )
        if args.data_root:
            load_mnist(args.data_root)  # a wrong root fails here, not inside every actor
        out = under(storage_root(args.storage), args.out or Path("zoo") / cfg.name)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.plan:
        return _plan(cfg, out, opts)
    try:
        report = build_zoo(cfg, out, opts)
    except (ZooStoreError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ActorsLost as e:  # what was built is kept
        print(f"error: {e}", file=sys.stderr)
        return 1
    rows = load(out)
    print(
        f"zoo {cfg.name} at {out}: {report.total} models ({report.skipped} already built, "
        f"{report.trained} trained now), {len(rows)} checkpoints; "
        f"test accuracy on own classes at the last bin: "
        f"median {rows.loc[rows.epoch_bin == rows.epoch_bin.max(), 'test_acc_in'].median():.1f}%"
    )
    if len(report.actors) > 1 or report.lost:
        print(f"trained on {len(report.actors)} Ray nodes:\n{report.placement()}")
    if args.export_csv:
        export_csv(rows, args.export_csv)
        print(f"CSV written to {args.export_csv}")
    return 0


def _plan(cfg: ZooConfig, out: Path, opts: BuildOptions) -> int:
    """What `build_zoo` would do, from a probe of one group on this machine's device."""
    store = ZooStore(out, cfg)
    jobs = cfg.jobs()
    if store.manifest.exists():
        try:
            jobs = store.open().pending()  # a zoo of another config is refused here too
        except ZooStoreError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    if not jobs:
        print(f"zoo {cfg.name} at {out}: all {len(cfg.jobs())} models built, nothing to do")
        return 0
    device = "cuda" if opts.gpus_per_actor > 0 and torch.cuda.is_available() else "cpu"
    if opts.gpus_per_actor > 0 and device == "cpu":
        # The actors will train on GPUs this machine lacks: its CPU's rates say nothing of theirs.
        print(f"note: --gpus-per-actor {opts.gpus_per_actor:g} but this machine has no GPU: the probe runs on its "
              f"CPU, so the projected time is a CPU's; run --plan on a GPU node for the GPU's")
    data = load_mnist(opts.data_root)
    plan = plan_build(cfg, jobs, opts.models_per_step, data, device, compile=opts.compile)
    probe = plan_groups(jobs, opts.models_per_step, train_images(jobs, cfg.train, data))[0]
    torch.set_num_threads(max(1, int(opts.cpus_per_actor)))
    rates = probe_rates(probe, data.to(device), cfg.train, compile=opts.compile)
    actors = opts.actors or 1
    # The probe's group has one image count; idle slots stretch the real groups' steps
    # (on a GPU, where a step narrows to a few widths only).
    train_min = plan.model_images / (1 - plan.idle_share) / rates.train / 60
    eval_min = plan.eval_images / rates.evaluate / 60
    # Each actor compiles the graphs of its own groups, beside the others: not divided by the actors.
    compile_min = (plan.step_graphs * rates.step_compile + plan.eval_graphs * rates.eval_compile) / 60
    compiling = (
        f"  compiling: {plan.step_graphs} training-step graph{'s' * (plan.step_graphs != 1)} (one a step width; "
        f"{rates.step_compile:.0f} s the probe's) and {plan.eval_graphs} evaluation "
        f"graph{'s' * (plan.eval_graphs != 1)} ({rates.eval_compile:.0f} s): {compile_min:.1f} min in each actor\n"
        if plan.step_graphs else ""
    )
    print(
        f"zoo {cfg.name} at {out}: {plan.jobs} models to train ({len(cfg.jobs()) - plan.jobs} already built), "
        f"{plan.groups} groups of up to {opts.models_per_step}\n"
        f"  model-images: {plan.model_images:,} trained (every model to epoch {cfg.train.last_epoch}; early "
        f"stopping only lowers it), {100 * plan.idle_share:.1f}% of the group steps' slots idle; "
        f"{plan.eval_images:,} evaluated (validation each epoch, test at each bin)\n"
        f"  disk: {plan.disk_bytes / 2**20:,.1f} MiB of shards\n"
        f"  probe: {rates.train:,.0f} model-images/s trained, {rates.evaluate:,.0f} evaluated, for one actor "
        f"({len(probe)} models per step, {device}, {max(1, int(opts.cpus_per_actor))} threads)\n"
        f"{compiling}"
        f"  projected: {(train_min + eval_min) / actors + compile_min:,.1f} min with {actors} actor{'s' * (actors > 1)} "
        f"({train_min / actors:,.1f} training, {eval_min / actors:,.1f} evaluating"
        f"{f', {compile_min:,.1f} compiling' if plan.step_graphs else ''}), if actors scale linearly"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
