"""The double-encoder TransformerAE of the seed report (section 4.1, figures 4 and 5).

Two CNN weight vectors go in, one comes out:

    w1 ─► tokens ─► Encoder1 ─► Σ_tokens ─┐
                                           ├─ concat ─► Linear(2·d_model → neck) ─► tanh ─► neck
    w2 ─► tokens ─► Encoder2 ─► Σ_tokens ─┘
    neck ─► Linear(neck → 50·d_model) ─► 50 tokens ─► + PE ─► N layers ─► norm ─► head ─► w3

Tokens (the report's `EmbedderNeuronGroup`): the flat 2464-vector is cut, in order, into
26 tokens of 80 values (positions 0..2079) and 24 tokens of 16 values (2080..2463). All
80-value tokens share one Linear(80, d_model) and all 16-value tokens share one
Linear(16, d_model) (figure 5 counts 77,760 + 16,320 parameters: one layer per size).

Positional encoding: the report's fixed sinusoidal `PositionalEncoder`, applied as
x·√d_model + PE (no parameters). Each layer is pre-norm: x + drop(attn(norm(x))), then
x + drop(ff(norm(x))), with attention through `scaled_dot_product_attention` (the report
applies dropout to the attention weights too: SDPA's dropout_p while training) and a
feed-forward Linear → ReLU → dropout → Linear. Each encoder and the decoder end in a norm.

Decoder head (`ModelConfig.head`):
  - "flat" (the report's `SeqVec`, the default): flatten the 50 tokens and one
    Linear(50·d_model → 2464). This single layer is 118 M of the seed preset's 210.5 M.
  - "token": one Linear(d_model → 80) for the 26 big tokens and one Linear(d_model → 16)
    for the 24 small ones, reassembled in order: the mirror image of the embedding,
    far fewer parameters (not the report's choice).

The two encoders do not share weights, so the model is not symmetric in its inputs:
forward(w1, w2) and forward(w2, w1) differ (`wsmerge.pairs` fixes which parent is first).

All weight matrices are initialised xavier-uniform, as in the report; biases and norms
keep PyTorch's defaults.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from wsmerge.cnn import N_PARAMS
from wsmerge.config import check_int, check_number, from_dict_with_base

__all__ = [
    "BIG_TOKEN",
    "HEADS",
    "N_BIG",
    "N_SMALL",
    "N_TOKENS",
    "PRESETS",
    "SMALL_TOKEN",
    "MergeOutput",
    "ModelConfig",
    "TransformerAE",
    "detokenize",
    "n_params",
    "preset",
    "token_slices",
    "tokenize",
]

# -- tokens -------------------------------------------------------------------------------
N_BIG, BIG_TOKEN = 26, 80
N_SMALL, SMALL_TOKEN = 24, 16
N_TOKENS = N_BIG + N_SMALL  # 50: the report's max_seq_len
_SPLIT = N_BIG * BIG_TOKEN  # 2080: where the small tokens start
assert _SPLIT + N_SMALL * SMALL_TOKEN == N_PARAMS


def token_slices() -> list[slice]:
    """The 50 token positions in the flat weight vector, in token order."""
    big = [slice(i * BIG_TOKEN, (i + 1) * BIG_TOKEN) for i in range(N_BIG)]
    small = [slice(_SPLIT + i * SMALL_TOKEN, _SPLIT + (i + 1) * SMALL_TOKEN) for i in range(N_SMALL)]
    return big + small


def _check_weights(w: Any, name: str) -> torch.Tensor:
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor [B, {N_PARAMS}], got {type(w).__name__}")
    if w.dim() != 2 or w.shape[1] != N_PARAMS:
        raise ValueError(f"{name}: expected shape [B, {N_PARAMS}], got {list(w.shape)}")
    if not w.is_floating_point():
        raise ValueError(f"{name}: expected floating-point weights, got {w.dtype}")
    return w


def tokenize(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, 2464] → (big [B, 26, 80], small [B, 24, 16]); views, no copy."""
    if not isinstance(w, torch.Tensor) or w.dim() != 2 or w.shape[1] != N_PARAMS:
        shape = list(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__
        raise ValueError(f"tokenize: expected a tensor [B, {N_PARAMS}], got {shape}")
    b = w.shape[0]
    return w[:, :_SPLIT].reshape(b, N_BIG, BIG_TOKEN), w[:, _SPLIT:].reshape(b, N_SMALL, SMALL_TOKEN)


def detokenize(big: torch.Tensor, small: torch.Tensor) -> torch.Tensor:
    """The inverse of `tokenize`: (big [B, 26, 80], small [B, 24, 16]) → [B, 2464]."""
    if big.dim() != 3 or tuple(big.shape[1:]) != (N_BIG, BIG_TOKEN):
        raise ValueError(f"detokenize: big tokens must be [B, {N_BIG}, {BIG_TOKEN}], got {list(big.shape)}")
    if small.dim() != 3 or tuple(small.shape[1:]) != (N_SMALL, SMALL_TOKEN):
        raise ValueError(
            f"detokenize: small tokens must be [B, {N_SMALL}, {SMALL_TOKEN}], got {list(small.shape)}"
        )
    if big.shape[0] != small.shape[0]:
        raise ValueError(f"detokenize: batch sizes differ: {big.shape[0]} vs {small.shape[0]}")
    b = big.shape[0]
    return torch.cat([big.reshape(b, -1), small.reshape(b, -1)], dim=1)


# -- config -------------------------------------------------------------------------------
HEADS = ("flat", "token")


@dataclass(frozen=True)
class ModelConfig:
    """Hyperparameters of the TransformerAE (the report's table in section 4.1)."""

    d_model: int = 64
    n_layers: int = 1  # the report's N: layers in each encoder and in the decoder
    n_heads: int = 4
    d_ff: int = 128
    neck: int = 32
    dropout: float = 0.0
    head: str = "flat"  # "flat": the report's Linear(50·d_model → 2464); "token": per-size
    # Output size of the contrastive loss's projection head (neck → ReLU MLP → projection),
    # 0 for none. The behavioral paper (after SANE) puts NT-Xent on such a head, so that the
    # contrastive term does not shape the neck the decoder reads.
    projection: int = 32

    def __post_init__(self):
        for name in ("d_model", "n_layers", "n_heads", "d_ff", "neck"):
            check_int(getattr(self, name), f"model.{name}", 1)
        check_int(self.projection, "model.projection", 0)
        if self.d_model % self.n_heads:
            raise ValueError(
                f"model.n_heads ({self.n_heads}) must divide model.d_model ({self.d_model}); "
                f"each head gets d_model / n_heads dimensions"
            )
        object.__setattr__(self, "dropout", check_number(self.dropout, "model.dropout", 0, 1))
        if self.head not in HEADS:
            raise ValueError(f"model.head must be one of {list(HEADS)}, got {self.head!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Any, where: str = "model") -> "ModelConfig":
        """From a mapping; `{"preset": "tiny", "d_model": 32}` starts from a preset and
        overrides the keys given. Unknown keys are an error."""
        return from_dict_with_base(cls, d, where, "preset", preset)

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


PRESETS: dict[str, ModelConfig] = {
    # The report's configuration (section 4.1): 210,546,336 parameters plus our 279,072 of the
    # contrastive projection head (projection=0 gives the report's count), a GPU model.
    "seed": ModelConfig(d_model=960, n_layers=4, n_heads=4, d_ff=960, neck=512, dropout=0.07),
    # Tests and laptops: about 8.1 M parameters, nearly all in the flat head.
    "tiny": ModelConfig(d_model=64, n_layers=1, n_heads=4, d_ff=128, neck=32, dropout=0.0),
}


def preset(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; known: {', '.join(PRESETS)}")
    return PRESETS[name]


# -- modules ------------------------------------------------------------------------------
class PositionalEncoding(nn.Module):
    """The report's fixed sinusoidal encoding: x·√d_model + PE[:seq_len]."""

    def __init__(self, d_model: int, max_len: int = N_TOKENS):
        super().__init__()
        self.scale = math.sqrt(d_model)
        position = torch.arange(max_len, dtype=torch.float32).unsqueeze(1)
        div = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
        pe = torch.zeros(max_len, d_model)
        pe[:, 0::2] = torch.sin(position * div)
        pe[:, 1::2] = torch.cos(position * div[: d_model // 2])
        self.register_buffer("pe", pe, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.pe[: x.shape[1]].to(x.dtype)


class SelfAttention(nn.Module):
    """Multi-head self-attention through scaled_dot_product_attention."""

    def __init__(self, d_model: int, n_heads: int, dropout: float):
        super().__init__()
        self.n_heads = n_heads
        self.dropout = dropout
        self.qkv = nn.Linear(d_model, 3 * d_model)  # the report's q, k, v linears, fused
        self.out = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(b, t, d))


class FeedForward(nn.Module):
    def __init__(self, d_model: int, d_ff: int, dropout: float):
        super().__init__()
        self.linear1 = nn.Linear(d_model, d_ff)
        self.linear2 = nn.Linear(d_ff, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(self.dropout(F.relu(self.linear1(x))))


class Block(nn.Module):
    """Pre-norm layer: x + drop(attn(norm(x))), then x + drop(ff(norm(x)))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.d_model, eps=1e-6)
        self.attn = SelfAttention(cfg.d_model, cfg.n_heads, cfg.dropout)
        self.norm2 = nn.LayerNorm(cfg.d_model, eps=1e-6)
        self.ff = FeedForward(cfg.d_model, cfg.d_ff, cfg.dropout)
        self.drop1 = nn.Dropout(cfg.dropout)
        self.drop2 = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop1(self.attn(self.norm1(x)))
        return x + self.drop2(self.ff(self.norm2(x)))


class Encoder(nn.Module):
    """Tokens → embeddings → PE → N blocks → norm: [B, 2464] → [B, 50, d_model]."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_big = nn.Linear(BIG_TOKEN, cfg.d_model)
        self.embed_small = nn.Linear(SMALL_TOKEN, cfg.d_model)
        self.pe = PositionalEncoding(cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.LayerNorm(cfg.d_model, eps=1e-6)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        big, small = tokenize(w)
        x = self.pe(torch.cat([self.embed_big(big), self.embed_small(small)], dim=1))
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)


class Decoder(nn.Module):
    """neck → Linear(neck → 50·d_model) → PE → N blocks → norm → head: [B, neck] → [B, 2464]."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.d_model = cfg.d_model
        self.head_kind = cfg.head
        # One Linear(neck, 50·d_model) holds exactly the report's 50 Linear(neck, d_model).
        self.expand = nn.Linear(cfg.neck, N_TOKENS * cfg.d_model)
        self.pe = PositionalEncoding(cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.LayerNorm(cfg.d_model, eps=1e-6)
        if cfg.head == "flat":
            self.head = nn.Linear(N_TOKENS * cfg.d_model, N_PARAMS)
        else:
            self.head_big = nn.Linear(cfg.d_model, BIG_TOKEN)
            self.head_small = nn.Linear(cfg.d_model, SMALL_TOKEN)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        b = z.shape[0]
        x = self.pe(self.expand(z).view(b, N_TOKENS, self.d_model))
        for layer in self.layers:
            x = layer(x)
        x = self.norm(x)
        if self.head_kind == "flat":
            return self.head(x.reshape(b, N_TOKENS * self.d_model))
        return detokenize(self.head_big(x[:, :N_BIG]), self.head_small(x[:, N_BIG:]))


class MergeOutput(NamedTuple):
    weights: torch.Tensor  # [B, 2464] the predicted CNN3
    neck: torch.Tensor  # [B, neck], after tanh
    latents: tuple[torch.Tensor, torch.Tensor]  # (h1, h2), each [B, d_model]: the report's z_t^{neck-1}
    neck_aug: torch.Tensor | None = None  # [B, neck] of the permuted views, when forward was given them


class TransformerAE(nn.Module):
    """The report's double-encoder TransformerAE; see the module docstring."""

    def __init__(self, cfg: ModelConfig | None = None):
        super().__init__()
        cfg = PRESETS["tiny"] if cfg is None else cfg
        if not isinstance(cfg, ModelConfig):
            raise TypeError(f"TransformerAE needs a ModelConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        self.encoders = nn.ModuleList([Encoder(cfg), Encoder(cfg)])
        self.to_neck = nn.Linear(2 * cfg.d_model, cfg.neck)  # the report's vec2neck
        self.decoder = Decoder(cfg)
        self.projection = (
            nn.Sequential(nn.Linear(cfg.neck, cfg.neck), nn.ReLU(), nn.Linear(cfg.neck, cfg.projection))
            if cfg.projection
            else None
        )
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        # Per-position standardisation of the weights read and written (buffers: they travel
        # with the state dict). Zoo weights are ~0.2 in scale while a fresh decoder writes
        # ~1: un-normalised, the first CNNs it writes have logits thousands of times too
        # large, and the behavioral loss explodes. `set_normalization` sets them from the zoo.
        self.register_buffer("w_mean", torch.zeros(N_PARAMS))
        self.register_buffer("w_std", torch.ones(N_PARAMS))

    @torch.no_grad()
    def set_normalization(self, weights: torch.Tensor) -> None:
        """Standardise inputs and outputs by the per-position mean and std of `weights`
        [R, 2464] (the training zoo); positions that never vary keep std 1."""
        w = _check_weights(weights, "set_normalization").to(self.w_mean)
        std = w.std(dim=0) if len(w) > 1 else torch.ones_like(self.w_std)
        self.w_mean.copy_(w.mean(dim=0))
        self.w_std.copy_(torch.where(std > 1e-8, std, torch.ones_like(std)))

    def encode(self, w: torch.Tensor, which: int) -> torch.Tensor:
        """Encoder `which` (0 or 1) summed over its 50 tokens: [B, 2464] → [B, d_model]."""
        if which not in (0, 1):
            raise ValueError(f"encode: which must be 0 or 1, got {which!r}")
        _check_weights(w, f"encode(which={which})")
        return self.encoders[which]((w - self.w_mean) / self.w_std).sum(dim=1)

    def fuse(self, h1: torch.Tensor, h2: torch.Tensor) -> torch.Tensor:
        """tanh(Linear(h1 ‖ h2)): two [B, d_model] encodings → neck [B, neck]."""
        return torch.tanh(self.to_neck(torch.cat([h1, h2], dim=1)))

    def decode(self, neck: torch.Tensor) -> torch.Tensor:
        """neck [B, neck] → predicted weights [B, 2464]."""
        if neck.dim() != 2 or neck.shape[1] != self.cfg.neck:
            raise ValueError(f"decode: expected a neck of shape [B, {self.cfg.neck}], got {list(neck.shape)}")
        return self.decoder(neck) * self.w_std + self.w_mean

    def project(self, neck: torch.Tensor) -> torch.Tensor:
        """The contrastive projection head: neck [B, neck] → [B, projection]."""
        if self.projection is None:
            raise ValueError("project: this model has no projection head (model.projection is 0)")
        return self.projection(neck)

    def forward(
        self, w1: torch.Tensor, w2: torch.Tensor, views: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> MergeOutput:
        """views: (w1', w2'), the same pairs after behaviour-preserving permutations (the
        contrastive term's second view). Their neck, `neck_aug`, comes out of the same encoder
        calls as the pair's own, at twice the batch: one pass instead of two (with fused AdamW,
        1.31× the seed preset's paper-mix samples per second at batch 64 on an H200, against
        a second pass for the views). The decoder runs for the pairs alone."""
        _check_weights(w1, "w1")
        _check_weights(w2, "w2")
        b = w1.shape[0]
        if w2.shape[0] != b:
            raise ValueError(f"w1 and w2 batch sizes differ: {b} vs {w2.shape[0]}")
        if views is not None:
            for name, v in zip(("views[0]", "views[1]"), views, strict=True):
                if _check_weights(v, name).shape[0] != b:
                    raise ValueError(f"{name} has {v.shape[0]} rows, the pairs {b}")
            w1, w2 = torch.cat([w1, views[0]]), torch.cat([w2, views[1]])
        h1, h2 = self.encode(w1, 0), self.encode(w2, 1)
        necks = self.fuse(h1, h2)
        neck = necks[:b]
        return MergeOutput(self.decode(neck), neck, (h1[:b], h2[:b]), necks[b:] if views is not None else None)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def parameter_breakdown(self) -> dict[str, int]:
        """Parameters per part, in the spirit of the report's figure 5."""
        count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
        dec = self.decoder
        head = count(dec.head) if self.cfg.head == "flat" else count(dec.head_big) + count(dec.head_small)
        return {
            "encoder1": count(self.encoders[0]),
            "encoder2": count(self.encoders[1]),
            "to_neck": count(self.to_neck),
            "decoder.expand": count(dec.expand),
            "decoder.layers+norm": count(dec.layers) + count(dec.norm),
            "decoder.head": head,
            "projection": 0 if self.projection is None else count(self.projection),
        }


def n_params(cfg: ModelConfig | str) -> int:
    """Parameter count of a config or preset name, without allocating its weights."""
    cfg = preset(cfg) if isinstance(cfg, str) else cfg
    with torch.device("meta"):
        return TransformerAE(cfg).num_parameters()
