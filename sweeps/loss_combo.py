"""Search loss mixes: `python -m sweeps.loss_combo [--config FILE] [--name NAME] [--resume]`.

For every loss of the space, whether it is in the mix and, if it is, its weight
(log-uniform; the terms are scaled to about 1 by the run's `loss_scaling: first`, so the
weights weigh comparable terms), plus the learning rate. With no arguments it runs the tiny
default (sweeps/configs/loss_combo_tiny.yaml), building the tiny zoo first if it is missing.
Running the same command again continues the sweep; see sweeps/engine.py for what it writes.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

from sweeps.engine import Param, SweepConfig, main as sweep_main
from wsmerge.losses import LOSSES
from wsmerge.train import RunConfig, train

_DEFAULT_WEIGHT = {"low": 0.01, "high": 1.0}


@dataclass(frozen=True)
class LossSpace:
    """Which losses may enter the mix, the range of their weights, and the learning rate
    (None: the run's). A trial's Optuna parameters are `loss.<name>` (in or out),
    `weight.<name>` (only for a loss that is in) and `lr`."""

    losses: tuple[str, ...]
    weight: Param
    lr: Param | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str, run: dict[str, Any]) -> "LossSpace":
        unknown = sorted(set(d) - {"losses", "weight", "lr"})
        if unknown:
            raise ValueError(f"{where}: unknown keys {unknown}; known: ['losses', 'lr', 'weight']")
        losses = d.get("losses")
        if losses == "all":
            losses = list(LOSSES)
        if not isinstance(losses, list) or not losses:
            raise ValueError(f"{where}.losses: expected 'all' or a non-empty list of loss names, got {losses!r}")
        for name in losses:
            if name not in LOSSES:
                raise ValueError(f"{where}.losses: unknown loss {name!r}; known: {', '.join(sorted(LOSSES))}")
        if len(set(losses)) != len(losses):
            raise ValueError(f"{where}.losses: a loss named twice in {losses}")
        weight = Param.parse(d.get("weight", _DEFAULT_WEIGHT), f"{where}.weight", log=True)
        if min(weight.extremes()) <= 0:
            raise ValueError(f"{where}.weight: weights must be > 0 (a loss that is out is not in the mix)")
        lr = Param.parse(d["lr"], f"{where}.lr", log=True) if "lr" in d else None
        if "losses" in run:
            raise ValueError("run.losses: the mix is what this sweep searches (space.losses); remove it")
        if lr is not None and "lr" in run:
            raise ValueError("run.lr: searched (space.lr); remove it from run")
        return cls(tuple(losses), weight, lr)

    def prepare_run(self, run: dict[str, Any]) -> dict[str, Any]:
        # Unscaled, a weight would mostly say on which scale its term lives.
        return {"loss_scaling": "first", **run}

    def check(self, run: RunConfig) -> None:
        for w in self.weight.extremes():
            try:
                run.replace(losses={name: w for name in self.losses})
            except ValueError as e:
                raise ValueError(f"space.weight: {e}") from None
        for lr in self.lr.extremes() if self.lr else ():
            try:
                run.replace(lr=lr)
            except ValueError as e:
                raise ValueError(f"space.lr: {e}") from None

    def __call__(self, trial) -> None:
        if self.lr is not None:
            self.lr.suggest(trial, "lr")
        chosen = 0
        for i, name in enumerate(self.losses):
            # A mix with no term is no mix: when no other loss is in, the last one is, unasked.
            forced = i == len(self.losses) - 1 and not chosen
            if forced or trial.suggest_categorical(f"loss.{name}", [True, False]):
                self.weight.suggest(trial, f"weight.{name}")
                chosen += 1

    def apply(self, run: RunConfig, params: dict[str, Any]) -> RunConfig:
        mix = {n: params[f"weight.{n}"] for n in self.losses if f"weight.{n}" in params}
        return run.replace(losses=mix, **({"lr": params["lr"]} if self.lr is not None else {}))

    def largest(self, run: RunConfig) -> RunConfig:
        """The run of the largest model a sample can have: the run's, as the mix shapes none."""
        return run

    def strip_run(self, run: dict[str, Any]) -> dict[str, Any]:
        searched = {"losses"} | ({"lr"} if self.lr is not None else set())
        return {k: v for k, v in run.items() if k not in searched}

    def to_dict(self) -> dict[str, Any]:
        d = {"losses": list(self.losses), "weight": self.weight.to_dict()}
        if self.lr is not None:
            d["lr"] = self.lr.to_dict()
        return d


@dataclass(frozen=True)
class LossComboSweep(SweepConfig):
    SPACE: ClassVar[type] = LossSpace
    COMMAND: ClassVar[str] = "loss_combo"


def main(argv: list[str] | None = None, *, train_fn: Callable = train) -> int:
    return sweep_main(argv, LossComboSweep, __doc__, train_fn=train_fn)


if __name__ == "__main__":
    sys.exit(main())
