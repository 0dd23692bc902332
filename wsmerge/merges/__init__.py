"""Merges of two CNNs that need no Transformer: the references a learned merge is measured
against, each a function of the parents' weights and, where a method needs them, unlabeled
training images of the parents' classes.

    MERGES["ties"].run(inputs)      # [P, 2464] for the pairs in a MergeInputs

Data-free: `rebasin` (Git Re-Basin weight matching, then the average), `ties`, `dare`.
Using images: `rebasin_act` (activation matching), `fisher`, `regmean`, `zipit`, `distill`.
`ENSEMBLE` (the two parents together) is not one CNN: `wsmerge.evaluate` scores its
predictions (`ensemble_predict`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ._align import activation_matching, rebasin, weight_matching
from ._distill import distill, ensemble_predict, ensemble_probs
from ._features import LAYERS, layer_inputs
from ._fisher import diagonal_fisher, fisher, fisher_merge
from ._regmean import regmean
from ._task import dare, ties
from ._zipit import zipit

__all__ = [
    "ENSEMBLE",
    "LAYERS",
    "MERGES",
    "Merge",
    "MergeInputs",
    "activation_matching",
    "dare",
    "diagonal_fisher",
    "distill",
    "ensemble_predict",
    "ensemble_probs",
    "fisher",
    "fisher_merge",
    "layer_inputs",
    "rebasin",
    "regmean",
    "ties",
    "weight_matching",
    "zipit",
]

ENSEMBLE = "ensemble"


@dataclass(frozen=True)
class MergeInputs:
    """What the merges of one activation's pairs may use. w1, w2, init [P, 2464]; in1, in2
    [P, 10] class masks of C1 and C2; images1/2/3 [P, N, 1, 28, 28]: unlabeled training images
    of each pair's C1, C2 and C3; batches [P, steps, B]: indices into `pool` (training images)
    of C3, one column a distillation step; lr: the fine-tuning learning rate."""

    w1: torch.Tensor
    w2: torch.Tensor
    init: torch.Tensor | None
    in1: torch.Tensor
    in2: torch.Tensor
    activation: str
    images1: torch.Tensor
    images2: torch.Tensor
    images3: torch.Tensor
    batches: torch.Tensor
    pool: torch.Tensor
    lr: float
    seed: int


@dataclass(frozen=True)
class Merge:
    run: Callable[[MergeInputs], torch.Tensor]
    needs_init: bool = False  # task vectors, or the start of training
    needs_steps: bool = False  # trains for the fine-tuning budget: none without one
    data_free: bool = True  # no images: a bar any merge must clear

    def available(self, has_init: bool, finetune_steps: int) -> bool:
        return (has_init or not self.needs_init) and (finetune_steps > 0 or not self.needs_steps)


def _seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


MERGES: dict[str, Merge] = {
    "rebasin": Merge(lambda m: rebasin(m.w1, m.w2, seed=m.seed)),
    "ties": Merge(lambda m: ties(m.w1, m.w2, m.init), needs_init=True),
    "dare": Merge(lambda m: dare(m.w1, m.w2, m.init, generator=_seeded(m.seed)), needs_init=True),
    "rebasin_act": Merge(
        lambda m: rebasin(m.w1, m.w2, method="activations", images=m.images3, activation=m.activation),
        data_free=False,
    ),
    "fisher": Merge(lambda m: fisher(m.w1, m.w2, m.images1, m.images2, m.activation), data_free=False),
    "regmean": Merge(lambda m: regmean(m.w1, m.w2, m.images1, m.images2, m.activation), data_free=False),
    "zipit": Merge(lambda m: zipit(m.w1, m.w2, m.in1, m.in2, m.images3, m.activation), data_free=False),
    "distill": Merge(
        lambda m: distill(m.w1, m.w2, m.init, m.in1, m.in2, m.activation, m.batches, m.pool, m.lr),
        needs_init=True,
        needs_steps=True,
        data_free=False,
    ),
}
