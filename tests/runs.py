"""Helpers of the training and sweep tests: tiny run and sweep configs, and what a crash-and-resume test needs."""

import json

from wsmerge.train import RunConfig


def tiny_run(zoo, out, **kw):
    base = dict(
        zoo=str(zoo),
        out=str(out),
        model={"preset": "tiny", "d_model": 32, "d_ff": 64, "neck": 16},
        # The last bin, two class pairs a target: 12 train, 4 val and 4 test triples.
        pairs={"overlap": [0, 1], "split_by": "target", "epoch_bins": [2], "max_pairs_per_target": 2},
        losses={"mse": 1.0, "behavioral": 0.5},
        query_images=16,
        # The merges of wsmerge.merges have tests of their own; the runs that score them say so.
        evaluation={"images_per_class": 40, "finetune_steps": 10, "finetune_eval_every": 5, "bootstrap": 50,
                    "merges": []},
        epochs=3,
        batch_size=8,
        lr=1e-3,
        # The exact-loss table runs every loss at full size: its own tests cover it.
        predictiveness_images=2,
        progress=False,
    )
    return RunConfig.from_dict({**base, **kw})


def tiny_sweep(zoo, **changes):
    """A loss_combo sweep config of a few short trials of a tiny TransformerAE on `zoo`."""
    cfg = {
        "space": {
            "losses": ["mse", "behavioral", "contrastive"],
            "weight": {"low": 0.1, "high": 1.0},
            "lr": {"low": 1e-3, "high": 3e-3},
        },
        "run": {
            "zoo": str(zoo),
            "model": {"preset": "tiny", "d_model": 32, "d_ff": 64, "neck": 16},
            # The last bin, two class pairs a target: 6 train, 2 val and 2 test triples.
            "pairs": {"overlap": [0, 1], "split_by": "target", "epoch_bins": [2], "max_pairs_per_target": 2},
            "evaluation": {"images_per_class": 20, "finetune_steps": 0, "bootstrap": 0, "merges": []},
            "epochs": 2,
            "batch_size": 8,
        },
        "num_samples": 3,
        "concurrency": 2,
        "startup_trials": 2,
        "scheduler": {"kind": "fifo"},
        "wandb": {"mode": "offline"},
    }
    return {**cfg, **changes}


class Crash(Exception):
    pass


def crash_after(epoch):
    def report(m):
        if m["epoch"] == epoch:
            raise Crash

    return report


def same(a, b):
    """Equal including NaNs in the same places (catch-up steps of pairs that never caught up)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def strip_time(history):
    return [{k: v for k, v in h.items() if not k.endswith("/seconds")} for h in history]
