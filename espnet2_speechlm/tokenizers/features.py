"""Frame-level features at 50 Hz (hop 320 at 16 kHz) for the offline back-ends.

Framing convention shared by every back-end of this package: an utterance of
``n`` samples has ``ceil(n / hop)`` frames and frame ``t`` is centred on the
middle of samples ``[t * hop, (t + 1) * hop)``, the same count a strided
codec encoder gives.  Each utterance is padded on its own before batching,
so a frame's value never depends on which other utterances share its batch
(dumps with different job splits are identical).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

from .audio import FRAME_RATE, SAMPLE_RATE

HOP = SAMPLE_RATE // FRAME_RATE  # 320 samples


def frame_count(num_samples: int, hop: int = HOP) -> int:
    return max(1, math.ceil(num_samples / hop))


def pad_for_frames(wav: torch.Tensor, n_fft: int, hop: int = HOP) -> torch.Tensor:
    """Pad 1-D ``wav`` so that a ``center=False`` STFT yields exactly ``frame_count`` frames."""
    n = wav.shape[-1]
    t = frame_count(n, hop)
    left = (n_fft - hop) // 2
    right = (t - 1) * hop + n_fft - left - n
    mode = "reflect" if n > max(left, right) else "constant"
    return torch.nn.functional.pad(wav[None, None], (left, right), mode=mode)[0, 0]


def stft(x: torch.Tensor, n_fft: int, hop: int, window: torch.Tensor) -> torch.Tensor:
    """``[B, L]`` already padded -> complex ``[B, n_fft // 2 + 1, T]``."""
    return torch.stft(x, n_fft, hop, n_fft, window, center=False, return_complex=True)


def _overlap_add(frames: torch.Tensor, hop: int) -> torch.Tensor:
    """``[B, n, T]`` frames -> ``[B, (T - 1) * hop + n]`` summed at stride ``hop`` (k slices of the frame, k = ceil(n / hop))."""
    b, n, t = frames.shape
    k = -(-n // hop)
    y = frames.new_zeros(b, t + k - 1, hop)
    for i in range(k):
        w = min(hop, n - i * hop)
        y[:, i : i + t, :w] += frames[:, i * hop : i * hop + w, :].transpose(1, 2)
    return y.reshape(b, -1)[:, : (t - 1) * hop + n]


_NORM_CACHE: dict = {}


def istft(spec: torch.Tensor, n_fft: int, hop: int, window: torch.Tensor) -> torch.Tensor:
    """Weighted overlap-add inverse of :func:`stft` (``[B, F, T]`` -> ``[B, L]``).

    Written out because ``torch.istft(center=False)`` refuses windows that are
    zero at the edges (the Hann window is)."""
    frames = torch.fft.irfft(spec, n=n_fft, dim=1) * window[None, :, None]
    t = spec.shape[-1]
    key = (n_fft, hop, t, str(window.device), float(window.sum()))
    norm = _NORM_CACHE.get(key)
    if norm is None:
        norm = _overlap_add((window**2)[None, :, None].expand(1, n_fft, t).contiguous(), hop).clamp_min(1e-8)
        if len(_NORM_CACHE) > 64:
            _NORM_CACHE.clear()
        _NORM_CACHE[key] = norm
    return _overlap_add(frames, hop) / norm


def hz_to_mel(f):
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def mel_to_hz(m):
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(n_mels: int, n_fft: int, sample_rate: int = SAMPLE_RATE, fmin: float = 0.0, fmax: float | None = None) -> torch.Tensor:
    """Triangular filters on the HTK mel scale, ``[n_mels, n_fft // 2 + 1]`` (peak 1, not area-normalised)."""
    fmax = fmax or sample_rate / 2
    freqs = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up = (freqs[None] - lo) / (mid - lo)
    down = (hi - freqs[None]) / (hi - mid)
    fb = np.clip(np.minimum(up, down), 0, None)
    return torch.from_numpy(fb.astype(np.float32))


def dct_matrix(n_out: int, n_in: int) -> torch.Tensor:
    """Orthonormal DCT-II, ``[n_out, n_in]``."""
    k = np.arange(n_out)[:, None]
    i = np.arange(n_in)[None]
    m = np.cos(np.pi / n_in * (i + 0.5) * k) * np.sqrt(2.0 / n_in)
    m[0] /= np.sqrt(2.0)
    return torch.from_numpy(m.astype(np.float32))


def deltas(x: torch.Tensor, width: int = 2) -> torch.Tensor:
    """Regression deltas over time of ``[T, D]``."""
    t = x.shape[0]
    xp = torch.nn.functional.pad(x.T[None], (width, width), mode="replicate")[0].T if t > 0 else x
    num = sum(n * (xp[width + n : width + n + t] - xp[width - n : width - n + t]) for n in range(1, width + 1))
    return num / (2 * sum(n * n for n in range(1, width + 1)))


@dataclass
class SpectralConfig:
    kind: str = "mfcc"  # "mfcc" or "fbank"
    n_fft: int = 640
    n_mels: int = 40
    n_mfcc: int = 20
    use_deltas: bool = True
    cmn: bool = True  # subtract the utterance mean (removes channel/speaker offsets)
    fmin: float = 20.0
    fmax: float = 7600.0
    log_floor: float = 1e-6


class SpectralFeatures:
    """Log-mel filterbank or MFCC (+ deltas) at 50 Hz; CPU or GPU."""

    frame_rate = FRAME_RATE

    def __init__(self, config: SpectralConfig | dict | None = None, device: str = "cpu"):
        if isinstance(config, dict):
            unknown = set(config) - set(SpectralConfig.__dataclass_fields__)
            if unknown:
                raise ValueError(f"unknown spectral feature options {sorted(unknown)}; known: {sorted(SpectralConfig.__dataclass_fields__)}")
            config = SpectralConfig(**config)
        self.config = config or SpectralConfig()
        if self.config.kind not in ("mfcc", "fbank"):
            raise ValueError(f"spectral feature kind must be 'mfcc' or 'fbank', got {self.config.kind!r}")
        c = self.config
        self.device = torch.device(device)
        self.window = torch.hann_window(c.n_fft, device=self.device)
        self.fb = mel_filterbank(c.n_mels, c.n_fft, SAMPLE_RATE, c.fmin, c.fmax).to(self.device)
        self.dct = dct_matrix(c.n_mfcc, c.n_mels).to(self.device)

    @property
    def dim(self) -> int:
        c = self.config
        base = c.n_mfcc if c.kind == "mfcc" else c.n_mels
        return base * (3 if c.use_deltas else 1)

    def to_dict(self) -> dict:
        return asdict(self.config)

    @torch.no_grad()
    def __call__(self, wavs: list[np.ndarray | torch.Tensor]) -> list[torch.Tensor]:
        """One ``[T_i, dim]`` float32 tensor per waveform (16 kHz)."""
        c = self.config
        if not wavs:
            return []
        padded = [pad_for_frames(torch.as_tensor(w, dtype=torch.float32).to(self.device), c.n_fft) for w in wavs]
        lens = [frame_count(len(w)) for w in wavs]
        x = torch.nn.utils.rnn.pad_sequence(padded, batch_first=True)
        mag = stft(x, c.n_fft, HOP, self.window).abs()  # [B, F, T]
        logmel = torch.log(torch.clamp(self.fb @ mag, min=c.log_floor)).transpose(1, 2)  # [B, T, M]
        feats = logmel @ self.dct.T if c.kind == "mfcc" else logmel
        out = []
        for b, t in enumerate(lens):
            f = feats[b, :t]
            if c.cmn:
                f = f - f.mean(0, keepdim=True)
            if c.use_deltas:
                d1 = deltas(f)
                f = torch.cat([f, d1, deltas(d1)], 1)
            out.append(f.float())
        return out
