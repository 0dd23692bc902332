"""Losses on the flat weight vector read as a 1-D signal (report 4.5.11–4.5.13)."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from ..cnn import N_PARAMS
from ._common import safe_sqrt
from ._registry import register


@register("fft")
def fft(pred, target, ctx, opt):
    """Fourier difference [4.5.11]: (1/N) Σ_k |F(pred)_k − F(target)_k|, N = 2464, with the
    unnormalised DFT over all N frequencies. By linearity it is mean |F(pred − target)|,
    which is how it is computed (one FFT instead of two)."""
    return torch.fft.fft(pred - target, dim=1).abs().mean(dim=1)


@dataclass(frozen=True)
class MelOptions:
    """STFT + mel filterbank settings.

    The vector has no physical sampling rate: sample_rate only sets where the mel warp
    turns from linear to logarithmic (700 "Hz"). With the defaults (16 kHz, n_fft 128,
    hop 32) the 74 frames tile the 2464 values exactly (2464 = 128 + 73·32), and every one
    of the 16 triangular filters covers at least one FFT bin (checked)."""

    n_fft: int = 128
    hop: int = 32
    n_mels: int = 16
    sample_rate: float = 16000.0

    def __post_init__(self):
        if not (2 <= self.n_fft <= N_PARAMS and 1 <= self.hop and 1 <= self.n_mels):
            raise ValueError(f"need 2 <= n_fft <= {N_PARAMS}, hop >= 1, n_mels >= 1")
        if not self.sample_rate > 0:
            raise ValueError(f"sample_rate must be > 0, got {self.sample_rate}")
        mel_filterbank(self.n_fft, self.n_mels, float(self.sample_rate))  # raises if a filter is empty


@dataclass(frozen=True)
class MsFidOptions(MelOptions):
    """MelOptions plus the floor added before the log."""

    log_eps: float = 1e-6

    def __post_init__(self):
        super().__post_init__()
        if not self.log_eps > 0:
            raise ValueError(f"log_eps must be > 0, got {self.log_eps}")
        if (N_PARAMS - self.n_fft) // self.hop < 1:
            raise ValueError("ms_fid needs at least 2 STFT frames: lower n_fft or hop")


@functools.lru_cache(maxsize=8)
def mel_filterbank(n_fft: int, n_mels: int, sample_rate: float) -> torch.Tensor:
    """[n_fft//2 + 1, n_mels] triangular filters, HTK mel scale, 0 to Nyquist, unnormalised
    (each filter peaks at 1)."""
    freqs = torch.linspace(0.0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    top = 2595.0 * math.log10(1.0 + sample_rate / 2 / 700.0)
    mels = torch.linspace(0.0, top, n_mels + 2, dtype=torch.float64)
    edges = 700.0 * (10.0 ** (mels / 2595.0) - 1.0)
    lo, mid, hi = edges[:-2], edges[1:-1], edges[2:]
    f = freqs[:, None]
    fb = torch.clamp(torch.minimum((f - lo) / (mid - lo), (hi - f) / (hi - mid)), min=0.0)
    empty = (fb.sum(dim=0) == 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(
            f"mel filters {empty} cover no FFT bin (n_fft={n_fft}, n_mels={n_mels}): "
            "use fewer mels or a longer n_fft"
        )
    return fb


def mel_spectrogram(w: torch.Tensor, opt: MelOptions) -> torch.Tensor:
    """[B, N] -> [B, frames, n_mels] power mel spectrogram: Hann-windowed frames of n_fft
    every hop values (no padding; a tail shorter than a frame is dropped), |rfft|², filters."""
    frames = w.unfold(-1, opt.n_fft, opt.hop)
    window = torch.hann_window(opt.n_fft, periodic=True, dtype=w.dtype, device=w.device)
    power = torch.fft.rfft(frames * window, dim=-1).abs() ** 2
    return power @ mel_filterbank(opt.n_fft, opt.n_mels, float(opt.sample_rate)).to(w)


@register("mel", options=MelOptions)
def mel(pred, target, ctx, opt):
    """Mel spectrogram difference [4.5.12]: ‖M(pred) − M(target)‖_F, M the power mel
    spectrogram of the flat vector as a 1-D signal (see MelOptions).
    Power, not log: the report compares the spectrograms themselves, and log-power would
    blow up gradients in near-silent frames."""
    d = mel_spectrogram(pred, opt) - mel_spectrogram(target, opt)
    return safe_sqrt((d**2).sum(dim=(1, 2)))


def _frechet(mu1, cov1, mu2, cov2) -> torch.Tensor:
    """‖μ1 − μ2‖² + Tr(Σ1 + Σ2 − 2 (Σ1^½ Σ2 Σ1^½)^½), batched; Tr of the root is the sum of
    square roots of the symmetric matrix's eigenvalues, so eigh does all the work and keeps
    a gradient (eigenvalues clipped at 0: rounding can make them slightly negative)."""
    evals, evecs = torch.linalg.eigh(cov1)
    root1 = evecs @ torch.diag_embed(safe_sqrt(evals)) @ evecs.transpose(-1, -2)
    inner = root1 @ cov2 @ root1
    tr_root = safe_sqrt(torch.linalg.eigvalsh((inner + inner.transpose(-1, -2)) / 2)).sum(dim=-1)
    trace = torch.diagonal(cov1, dim1=-2, dim2=-1).sum(-1) + torch.diagonal(cov2, dim1=-2, dim2=-1).sum(-1)
    return ((mu1 - mu2) ** 2).sum(dim=-1) + trace - 2 * tr_root


def _gaussian(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean [B, d] and unbiased covariance [B, d, d] of the rows of x [B, n, d]."""
    mu = x.mean(dim=1)
    c = x - mu[:, None]
    return mu, c.transpose(1, 2) @ c / (x.shape[1] - 1)


@register("ms_fid", options=MsFidOptions)
def ms_fid(pred, target, ctx, opt):
    """Mel spectrogram Fréchet distance [4.5.13]: the Fréchet distance between Gaussians
    fitted to the frames of each vector's log-mel spectrogram, log(M + log_eps).

    One weight vector per model, so (as the report suggests) the frames are the samples:
    74 frames × 16 mels at the defaults. Log, unlike `mel`: mel powers span orders of
    magnitude and are far from Gaussian, their logs much less so. Computed in float64
    (16×16 eigendecompositions; float32 loses the trace term to rounding near equality)."""
    feats = [torch.log(mel_spectrogram(w.double(), opt) + opt.log_eps) for w in (pred, target)]
    value = _frechet(*_gaussian(feats[0]), *_gaussian(feats[1]))
    return value.to(pred.dtype)
