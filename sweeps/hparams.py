"""Search the TransformerAE and its optimiser for a fixed loss mix:
`python -m sweeps.hparams [--config FILE] [--name NAME] [--resume]`.

The model's width is searched as heads × head size (d_model = n_heads · head_dim), so every
sample is a valid model: no trial is spent on heads that do not divide d_model. The levers
against the CNNs' permutation symmetry, `permutations` and `align`, are searchable too. With no
arguments it runs the tiny default (sweeps/configs/hparams_tiny.yaml), building the tiny zoo
first if it is missing. Running the same command again continues the sweep; see
sweeps/engine.py for what it writes.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

from sweeps.engine import Param, SweepConfig, main as sweep_main
from wsmerge.align import ALIGN
from wsmerge.train import RunConfig, train

_MODEL = ("n_layers", "d_ff", "neck", "dropout")
_RUN = ("lr", "weight_decay", "batch_size", "warmup_steps", "permutations", "align")
_INTEGER = ("n_heads", "head_dim", "n_layers", "d_ff", "neck", "batch_size", "warmup_steps", "permutations")
_LOG = ("lr", "weight_decay")
_SIZES = ("n_heads", "head_dim", "n_layers", "d_ff", "neck")  # more of any is more parameters
_NAMES = {"align": ALIGN}  # settings searched as choices of these names


@dataclass(frozen=True)
class HparamSpace:
    """The searched settings (None: the run's). A searched head count or head size sets
    d_model; the other one then comes from run.model (head_dim = d_model / n_heads)."""

    n_heads: Param | None = None
    head_dim: Param | None = None
    n_layers: Param | None = None
    d_ff: Param | None = None
    neck: Param | None = None
    dropout: Param | None = None
    lr: Param | None = None
    weight_decay: Param | None = None
    batch_size: Param | None = None
    warmup_steps: Param | None = None
    permutations: Param | None = None
    align: Param | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str, run: dict[str, Any]) -> "HparamSpace":
        names = [f.name for f in dataclasses.fields(cls)]
        if "d_model" in d:
            raise ValueError(f"{where}.d_model: d_model is n_heads × head_dim; search those instead")
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise ValueError(f"{where}: unknown keys {unknown}; known: {names}")
        if not d:
            raise ValueError(f"{where}: empty search space; search at least one of {names}")
        for key in _RUN:
            if key in d and key in run:
                raise ValueError(f"run.{key}: searched (space.{key}); remove it from run")
        return cls(**{
            name: Param.parse(
                raw, f"{where}.{name}", integer=name in _INTEGER, log=name in _LOG, names=_NAMES.get(name)
            )
            for name, raw in d.items()
        })

    def _searched(self) -> dict[str, Param]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}

    def prepare_run(self, run: dict[str, Any]) -> dict[str, Any]:
        return run

    def check(self, run: RunConfig) -> None:
        for name, param in self._searched().items():
            for value in param.extremes():
                try:
                    self.apply(run, {name: value})
                except ValueError as e:
                    raise ValueError(f"space.{name}: {e}") from None

    def __call__(self, trial) -> None:
        for name, param in self._searched().items():
            param.suggest(trial, name)

    def apply(self, run: RunConfig, params: dict[str, Any]) -> RunConfig:
        model = {k: params[k] for k in _MODEL if k in params}
        if "n_heads" in params or "head_dim" in params:
            n_heads = params.get("n_heads", run.model.n_heads)
            head_dim = params.get("head_dim", run.model.d_model // run.model.n_heads)
            model.update(n_heads=n_heads, d_model=n_heads * head_dim)
        return run.replace(model=run.model.replace(**model), **{k: params[k] for k in _RUN if k in params})

    def largest(self, run: RunConfig) -> RunConfig:
        """The run of the largest model a sample can have: every searched size at its top."""
        sizes = {k: max(p.extremes()) for k, p in self._searched().items() if k in _SIZES}
        return self.apply(run, sizes)

    def strip_run(self, run: dict[str, Any]) -> dict[str, Any]:
        searched = self._searched()
        return {k: v for k, v in run.items() if not (k in _RUN and k in searched)}

    def to_dict(self) -> dict[str, Any]:
        return {name: param.to_dict() for name, param in self._searched().items()}


@dataclass(frozen=True)
class HparamSweep(SweepConfig):
    SPACE: ClassVar[type] = HparamSpace
    COMMAND: ClassVar[str] = "hparams"


def main(argv: list[str] | None = None, *, train_fn: Callable = train) -> int:
    return sweep_main(argv, HparamSweep, __doc__, train_fn=train_fn)


if __name__ == "__main__":
    sys.exit(main())
