"""Small real speech corpora for tests, benchmarks and demos (espeak-ng, offline).

``make_espeak_data_dir`` synthesises sentences with several espeak-ng voices
and writes a Kaldi data directory (``wav.scp``, ``text``, ``utt2spk``).  The
wav files are written at 22.05 kHz (espeak's rate), so every consumer
exercises the resampling path.  Needs the Debian ``espeak-ng`` package.
"""

from __future__ import annotations

import io
import random
import shutil
import subprocess
from pathlib import Path

import numpy as np

VOICES = ("en-us", "en-gb", "en-us+f3", "en-us+m3", "en-gb+f2", "en-gb-x-rp")
_WORDS = ("the cat sat on a warm mat near the door while rain fell outside and seven birds sang "
          "please call my number after the tone to leave a message for the office team today "
          "green apples taste sweet but lemons are sour so we mix them into a cold drink").split()


def have_espeak() -> bool:
    return shutil.which("espeak-ng") is not None


def espeak_wav(text: str, voice: str = "en-us", speed: int = 170) -> tuple[np.ndarray, int]:
    import soundfile as sf

    raw = subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "--stdout", text], capture_output=True, check=True).stdout
    wav, sr = sf.read(io.BytesIO(raw), dtype="float32")
    return wav, sr


def sentences(n: int, seed: int = 0, min_words: int = 4, max_words: int = 12) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(min_words, max_words))) for _ in range(n)]


def make_espeak_data_dir(out: str | Path, n: int = 10, seed: int = 0, prefix: str = "utt") -> Path:
    """Write ``n`` espeak utterances and a Kaldi data dir under ``out``; returns the data dir."""
    import soundfile as sf

    out = Path(out)
    (out / "wav").mkdir(parents=True, exist_ok=True)
    scp, text, u2s = [], [], []
    for i, s in enumerate(sentences(n, seed)):
        voice = VOICES[i % len(VOICES)]
        wav, sr = espeak_wav(s, voice)
        utt = f"{prefix}{i:04d}"
        path = out / "wav" / f"{utt}.wav"
        sf.write(path, wav, sr)
        scp.append(f"{utt} {path.resolve()}")
        text.append(f"{utt} {s}")
        u2s.append(f"{utt} {voice}")
    (out / "wav.scp").write_text("\n".join(scp) + "\n")
    (out / "text").write_text("\n".join(text) + "\n")
    (out / "utt2spk").write_text("\n".join(u2s) + "\n")
    return out
