"""The offline acoustic codec: residual k-means of log-mel frames, Griffin-Lim back.

Why this codec for small offline recipes: it fits on a recipe's own audio
in a few minutes on one CPU core with no GPU training, its first codebook is
a coarse spectral-envelope class that a tiny LM learns quickly, decoding runs
about 25x faster than real time on one core, and Whisper base transcribes
its decoded audio nearly as well as the original.  Measured with
``tools/venv/bin/python bench/bench_codec.py`` (fit on 363 asterisk prompts +
200 espeak utterances, 23 min; scored on 200 held-out asterisk prompts and
100 espeak utterances, one at a time, seed 0):

    synthesis grid     real WER orig -> round trip (ratio)   espeak (ratio)
    hop 320 (x1)       7.55 % -> 11.93 % (1.58)              23.59 % -> 23.41 % (0.99)
    hop 160 (x2)       7.55 % -> 10.47 % (1.39)              23.59 % -> 20.33 % (0.86)

Griffin-Lim on the unquantised log-mel alone reaches about 1.06 (7.06 % vs
6.66 % in a grouped-scoring run), so most of the remaining loss is
quantisation (8 x 1024 codes for an 80-dim frame).  Ratios move by about
+-0.3 between Griffin-Lim seeds on small sets (see ENVIRONMENT.md).

* Analysis: 16 kHz, Hann window ``n_fft`` (1024), hop 320 (50 Hz), 80 mel
  bands, log magnitude; frames follow ``features.frame_count``.
* Quantisation: the log-mel vector minus its corpus mean, divided by one
  global scale (a per-band scale would divide by almost zero in the bands
  that 8 kHz recordings leave empty), is coded greedily by 8 residual
  k-means codebooks of 1024 centres.
* Synthesis: mel -> linear magnitude by non-negative least squares
  (projected gradient from the pseudo-inverse), then fast Griffin-Lim
  (momentum 0.99) from a seeded phase, so decoding is deterministic.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from . import kmeans as km
from .features import HOP, SAMPLE_RATE, frame_count, istft, mel_filterbank, pad_for_frames, stft


@dataclass
class MelCodecConfig:
    n_fft: int = 1024
    n_mels: int = 80
    fmin: float = 0.0
    fmax: float = 8000.0
    log_floor: float = 1e-5
    num_codebooks: int = 8
    codebook_size: int = 1024
    griffin_lim_iters: int = 32
    momentum: float = 0.99
    nnls_iters: int = 20
    # Griffin-Lim runs on a grid this many times denser than the 50 Hz codes
    # (log-mel interpolated in time): more window overlap, cleaner phase.
    synthesis_upsample: int = 2
    seed: int = 0


class MelRVQCodec:
    """Encode 16 kHz audio to ``[T, num_codebooks]`` codes and decode them back."""

    kind = "mel_rvq"
    sample_rate = SAMPLE_RATE
    hop = HOP

    def __init__(self, config: MelCodecConfig | None = None, mean=None, scale: float = 1.0, books=None, device: str = "cpu"):
        self.config = config or MelCodecConfig()
        c = self.config
        self.device = torch.device(device)
        self.window = torch.hann_window(c.n_fft, device=self.device)
        self.fb = mel_filterbank(c.n_mels, c.n_fft, SAMPLE_RATE, c.fmin, c.fmax).to(self.device)
        self.fb_pinv = torch.linalg.pinv(self.fb)
        self.mean = torch.zeros(c.n_mels) if mean is None else torch.as_tensor(mean, dtype=torch.float32)
        self.mean = self.mean.to(self.device)
        self.scale = float(scale)
        self.books = None if books is None else torch.as_tensor(books, dtype=torch.float32).to(self.device)

    @property
    def num_codebooks(self) -> int:
        return self.config.num_codebooks

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    # --------------------------------------------------------------- analysis
    @torch.no_grad()
    def logmel(self, wavs) -> list[torch.Tensor]:
        c = self.config
        if not wavs:
            return []
        padded = [pad_for_frames(torch.as_tensor(w, dtype=torch.float32).to(self.device), c.n_fft) for w in wavs]
        x = torch.nn.utils.rnn.pad_sequence(padded, batch_first=True)
        mel = self.fb @ stft(x, c.n_fft, HOP, self.window).abs()
        lm = torch.log(mel.clamp_min(c.log_floor)).transpose(1, 2)
        return [lm[b, : frame_count(len(w))] for b, w in enumerate(wavs)]

    # ---------------------------------------------------------------- fitting
    @classmethod
    def fit(cls, wavs, config: MelCodecConfig | None = None, max_frames: int = 200000, device: str = "cpu", verbose: bool = False, **kmeans_kw) -> "MelRVQCodec":
        """Fit normalisation and codebooks on a list of 16 kHz waveforms."""
        codec = cls(config, device=device)
        c = codec.config
        frames = torch.cat([f.cpu() for i in range(0, len(wavs), 16) for f in codec.logmel(wavs[i : i + 16])])
        if frames.shape[0] > max_frames:
            g = torch.Generator().manual_seed(c.seed)
            frames = frames[torch.randperm(frames.shape[0], generator=g)[:max_frames]]
        mean = frames.mean(0)
        scale = float((frames - mean).std().clamp_min(1e-3))
        x = (frames - mean) / scale
        kmeans_kw.setdefault("epochs", 15)
        books = km.fit_residual_kmeans(x, c.num_codebooks, c.codebook_size, seed=c.seed, device=device, verbose=verbose, **kmeans_kw)
        return cls(c, mean, scale, books, device=device)

    # ------------------------------------------------------------ encode/decode
    @torch.no_grad()
    def encode(self, wavs) -> list[np.ndarray]:
        """One ``[T_i, num_codebooks]`` int64 array per waveform."""
        if self.books is None:
            raise RuntimeError("codec is not fitted")
        out = []
        for lm in self.logmel(wavs):
            out.append(km.rvq_encode((lm - self.mean) / self.scale, self.books).cpu().numpy())
        return out

    @torch.no_grad()
    def codes_to_logmel(self, codes) -> torch.Tensor:
        codes = torch.as_tensor(np.asarray(codes), dtype=torch.long, device=self.device)
        if codes.ndim != 2 or codes.shape[1] != self.num_codebooks:
            raise ValueError(f"codes must be [T, {self.num_codebooks}], got {tuple(codes.shape)}")
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise ValueError(f"codes out of range [0, {self.codebook_size})")
        return km.rvq_decode(codes, self.books) * self.scale + self.mean

    @torch.no_grad()
    def logmel_to_wav(self, logmel: torch.Tensor) -> np.ndarray:
        c = self.config
        t = logmel.shape[0]
        r = max(1, int(c.synthesis_upsample))
        hop = HOP // r
        if r > 1:
            # synthesis frame u is centred at original-frame position (u + 0.5) / r - 0.5
            pos = ((torch.arange(t * r, device=logmel.device, dtype=torch.float32) + 0.5) / r - 0.5).clamp(0, t - 1)
            lo = pos.floor().long()
            hi = (lo + 1).clamp(max=t - 1)
            w = (pos - lo.float())[:, None]
            logmel = logmel[lo] * (1 - w) + logmel[hi] * w
        mel = torch.exp(logmel).T  # [M, T']
        # non-negative least squares for the linear magnitude: projected gradient from the pseudo-inverse
        mag = (self.fb_pinv @ mel).clamp_min(0)
        lr = 1.0 / float(torch.linalg.matrix_norm(self.fb, 2) ** 2)
        for _ in range(c.nnls_iters):
            mag = (mag - lr * self.fb.T @ (self.fb @ mag - mel)).clamp_min(0)
        # magnitudes were analysed with hop 320; a denser grid sums more overlapping windows
        mag = mag[None]
        g = torch.Generator().manual_seed(c.seed)
        phase = torch.rand(mag.shape, generator=g).to(self.device) * 2 * np.pi
        spec = torch.polar(mag, phase)
        prev = torch.zeros_like(spec)
        for _ in range(c.griffin_lim_iters):
            wav = istft(spec, c.n_fft, hop, self.window)
            proj = stft(wav, c.n_fft, hop, self.window)
            accel = proj + c.momentum * (proj - prev) if c.momentum else proj
            prev = proj
            # unit phasor without exp/angle (complex exp is the slowest op of the loop)
            spec = mag * accel / accel.abs().clamp_min(1e-8)
        wav = istft(spec, c.n_fft, hop, self.window)[0]
        left = (c.n_fft - hop) // 2
        return wav[left : left + t * HOP].float().cpu().numpy()

    def decode(self, codes) -> np.ndarray:
        """``[T, num_codebooks]`` codes -> 16 kHz float32 waveform of ``T * 320`` samples."""
        return self.logmel_to_wav(self.codes_to_logmel(codes))

    # -------------------------------------------------------------------- I/O
    def save(self, directory: str | Path) -> dict:
        """Write ``mel_codec.json`` and ``mel_codec.npz``; returns the config entry for ``tokenizer.json``."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / "mel_codec.tmp.npz"
        np.savez(tmp, mean=self.mean.cpu().numpy(), scale=np.float32(self.scale), books=self.books.cpu().numpy())
        tmp.replace(d / "mel_codec.npz")
        (d / "mel_codec.json.tmp").write_text(json.dumps(asdict(self.config), indent=2) + "\n")
        (d / "mel_codec.json.tmp").replace(d / "mel_codec.json")
        return {"type": self.kind, "dir": str(d.resolve()), "num_codebooks": self.num_codebooks, "codebook_size": self.codebook_size}

    @classmethod
    def load(cls, directory: str | Path, device: str = "cpu") -> "MelRVQCodec":
        d = Path(directory)
        for name in ("mel_codec.json", "mel_codec.npz"):
            if not (d / name).exists():
                raise FileNotFoundError(f"mel codec file missing: {d / name}")
        cfg = json.loads((d / "mel_codec.json").read_text())
        unknown = set(cfg) - set(MelCodecConfig.__dataclass_fields__)
        if unknown:
            raise ValueError(f"{d / 'mel_codec.json'}: unknown keys {sorted(unknown)}")
        z = np.load(d / "mel_codec.npz")
        codec = cls(MelCodecConfig(**cfg), z["mean"], float(z["scale"]), z["books"], device=device)
        if codec.books.shape != (codec.num_codebooks, codec.codebook_size, codec.config.n_mels):
            raise ValueError(f"{d / 'mel_codec.npz'}: codebooks have shape {tuple(codec.books.shape)}, config says "
                             f"{(codec.num_codebooks, codec.codebook_size, codec.config.n_mels)}")
        return codec
