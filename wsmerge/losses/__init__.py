"""Loss registry for the TransformerAE: name -> loss on (pred [B,2464], target [B,2464],
context) returning per-sample values [B]; a mix {name: weight} gives the weighted total and
every term unweighted (docs/architecture.md, "Losses"; the seed report's section 4.5).

    from wsmerge.losses import LossContext, mix_loss, paper_mix
    total, terms = mix_loss(pred, target, paper_mix(), LossContext(activation="relu",
                            images=queries, neck=neck, neck_aug=neck_aug))

Each loss's docstring (LOSSES[name].doc) states what it computes, the report section and
its choices; its options go in LossContext.options[name].
"""

# Importing the loss modules registers their losses.
from . import _functional, _latent, _spectral, _structural, _topology, _transport  # noqa: F401
from ._context import LossContext
from ._latent import permute_neurons
from ._mix import loss_fn, mix_loss, paper_mix, required_context, validate_mix
from ._registry import LOSSES, LossSpec

__all__ = [
    "LOSSES",
    "LossContext",
    "LossSpec",
    "loss_fn",
    "mix_loss",
    "paper_mix",
    "permute_neurons",
    "required_context",
    "validate_mix",
]
