"""The registry: name -> LossSpec, filled by the `register` decorator in each loss module."""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch

from ..config import from_dict
from ._context import CONTEXT_FIELDS, LossContext

__all__ = ["LOSSES", "LossSpec", "NoOptions", "register"]

LossFn = Callable[[torch.Tensor, torch.Tensor, LossContext], torch.Tensor]


@dataclass(frozen=True)
class NoOptions:
    """A loss without options: any option given to it is an error."""


@dataclass(frozen=True)
class LossSpec:
    """One registered loss.

    fn(pred [B,2464], target [B,2464], ctx) -> [B]; reads its options from
        ctx.options[name] (validated against `options`). It does not check shapes or the
        context: `mix_loss` and `loss_fn` do that first.
    needs: the LossContext fields it requires (the optional ones, project and generator,
        are read when set and never listed here).
    differentiable: False marks an evaluation-only loss (its docstring says why).
    depends_on_pred: False for a term that trains the model through the context only
        (`contrastive`, through the neck); its gradient never reaches pred.
    options: the dataclass of its options and their defaults.
    """

    name: str
    fn: LossFn
    needs: frozenset[str]
    differentiable: bool
    doc: str
    options: type = NoOptions
    depends_on_pred: bool = True

    def parse_options(self, raw: Mapping[str, Any] | None) -> Any:
        """Options instance from a mapping; unknown keys or bad values raise ValueError."""
        raw = {} if raw is None else dict(raw) if isinstance(raw, Mapping) else raw
        return from_dict(self.options, raw, f"options[{self.name!r}]")


LOSSES: dict[str, LossSpec] = {}


def register(
    name: str,
    *,
    options: type = NoOptions,
    needs: tuple[str, ...] = (),
    differentiable: bool = True,
    depends_on_pred: bool = True,
) -> Callable[[Callable[..., torch.Tensor]], Callable[..., torch.Tensor]]:
    """Register impl(pred, target, ctx, opts) -> [B] under `name`; its docstring is the doc."""
    unknown = set(needs) - set(CONTEXT_FIELDS)
    if unknown:
        raise AssertionError(f"{name}: unknown context fields {unknown}")
    if not dataclasses.is_dataclass(options):
        raise AssertionError(f"{name}: options must be a dataclass")

    def deco(impl: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        if name in LOSSES:
            raise AssertionError(f"loss {name!r} registered twice")

        def fn(pred: torch.Tensor, target: torch.Tensor, ctx: LossContext) -> torch.Tensor:
            return impl(pred, target, ctx, spec.parse_options(ctx.options.get(name)))

        fn.__name__ = fn.__qualname__ = f"{name}_loss"
        fn.__doc__ = impl.__doc__
        spec = LossSpec(
            name=name,
            fn=fn,
            needs=frozenset(needs),
            differentiable=differentiable,
            doc=inspect.getdoc(impl) or "",
            options=options,
            depends_on_pred=depends_on_pred,
        )
        LOSSES[name] = spec
        return impl

    return deco
