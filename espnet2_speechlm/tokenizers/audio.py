"""Reading audio named by Kaldi data directories, as 16 kHz mono float32.

A ``wav.scp`` line is ``<id> <spec>`` where the spec is a plain path (any
format libsndfile reads: wav, flac, ogg, mp3, ...), a Kaldi ark offset
(``foo.ark:123``) or a shell command ending in ``|`` whose stdout is an audio
file (``sox in.wav -t wav - |``).  With a ``segments`` file the ids of
``wav.scp`` are recordings and each segment is a slice of one.

Every failure is an :class:`AudioError` that names the utterance and the
file, so that a dump of thousands of files can say exactly which ones are
bad.
"""

from __future__ import annotations

import io
import subprocess
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import numpy as np

# The toolkit's audio and token rates.  A fitted speech tokenizer records the
# rates it was fitted at (tokenizer.json), and what it records wins over these.
SAMPLE_RATE = 16000  # Hz: every waveform the toolkit reads or writes
FRAME_RATE = 50  # token frames per second (hop 320 at 16 kHz)


class AudioError(ValueError):
    """An utterance's audio cannot be used (unreadable, empty, too short)."""

    def __init__(self, utt: str, source: str, reason: str):
        self.utt, self.source, self.reason = utt, source, reason
        super().__init__(f"utterance {utt!r} ({source}): {reason}")


class DataDirError(ValueError):
    """A Kaldi data directory file is malformed (names file and line)."""


@dataclass(frozen=True)
class AudioItem:
    """Where one utterance's audio comes from."""

    utt: str
    spec: str  # wav.scp spec of the recording
    start: float = 0.0  # seconds, from segments
    end: float | None = None  # seconds; None = to the end of the recording


def open_utf8(path: str | Path, error: type[Exception] = DataDirError) -> io.TextIOWrapper:
    """``path`` opened for reading as UTF-8 text (newlines as ``open`` reads them).

    Bytes that are not UTF-8 raise ``error`` naming the file, the line and the
    column: a decoding error met while iterating over a file names neither."""
    path = Path(path)
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise error(f"{path}: line {line}: not valid UTF-8 (byte 0x{data[e.start]:02x} at column {col}); "
                    f"convert the file to UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None
    return io.TextIOWrapper(io.BytesIO(data), encoding="utf-8")


def read_table(path: str | Path, min_fields: int = 2) -> list[tuple[str, str, int]]:
    """Read ``<key> <rest>`` lines; return (key, rest, line number).  Duplicate keys are errors."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"file not found: {path}")
    out, seen = [], {}
    with open_utf8(path) as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            parts = line.strip().split(maxsplit=1)
            if len(parts) < min_fields:
                raise DataDirError(f"{path}: line {lineno}: expected '<id> <value>', got {line!r}")
            key = parts[0]
            if key in seen:
                raise DataDirError(f"{path}: line {lineno}: duplicate id {key!r} (first on line {seen[key]})")
            seen[key] = lineno
            out.append((key, parts[1] if len(parts) > 1 else "", lineno))
    return out


def read_data_dir(data_dir: str | Path) -> list[AudioItem]:
    """The utterances of a Kaldi data directory, in file order."""
    data_dir = Path(data_dir)
    wavs = read_table(data_dir / "wav.scp")
    seg_path = data_dir / "segments"
    if not seg_path.exists():
        return [AudioItem(k, v) for k, v, _ in wavs]
    recs = {k: v for k, v, _ in wavs}
    items = []
    for utt, rest, lineno in read_table(seg_path):
        f = rest.split()
        if len(f) != 3:
            raise DataDirError(f"{seg_path}: line {lineno}: expected '<utt> <rec> <start> <end>', got {utt} {rest!r}")
        rec, s, e = f
        if rec not in recs:
            raise DataDirError(f"{seg_path}: line {lineno}: recording {rec!r} is not in {data_dir / 'wav.scp'}")
        try:
            start, end = float(s), float(e)
        except ValueError:
            raise DataDirError(f"{seg_path}: line {lineno}: start/end are not numbers: {s!r} {e!r}") from None
        # Kaldi uses end = -1 for "to the end of the recording"
        items.append(AudioItem(utt, recs[rec], start, None if end < 0 else end))
    return items


def _decode_bytes(data: bytes):
    import soundfile as sf

    return sf.read(io.BytesIO(data), dtype="float32", always_2d=True)


def read_spec(spec: str) -> tuple[np.ndarray, int]:
    """Audio of a wav.scp spec as ``([samples, channels] float32, rate)``; raises OSError/RuntimeError."""
    import soundfile as sf

    spec = spec.strip()
    if spec.endswith("|"):
        proc = subprocess.run(spec[:-1], shell=True, capture_output=True)
        if proc.returncode != 0:
            err = proc.stderr.decode(errors="replace").strip().splitlines()
            raise RuntimeError(f"command exited with {proc.returncode}: {err[-1] if err else ''}")
        if not proc.stdout:
            raise RuntimeError("command wrote no audio")
        return _decode_bytes(proc.stdout)
    if ":" in spec and not Path(spec).exists() and spec.rsplit(":", 1)[1].isdigit():
        import kaldiio

        rate, arr = kaldiio.load_mat(spec)
        arr = np.asarray(arr)
        if arr.dtype.kind == "i":  # Kaldi wav arks hold 16-bit PCM values
            arr = arr.astype(np.float32) / 32768.0
        return arr.reshape(len(arr), -1).astype(np.float32), int(rate)
    return sf.read(spec, dtype="float32", always_2d=True)


def resample(wav: np.ndarray, rate: int, target: int = SAMPLE_RATE) -> np.ndarray:
    """Polyphase resampling (exact rational ratio, so 8 kHz -> 16 kHz is 1:2)."""
    if rate == target:
        return wav
    from scipy.signal import resample_poly

    r = Fraction(target, rate)
    return resample_poly(wav, r.numerator, r.denominator).astype(np.float32)


def load_item(item: AudioItem, target_rate: int = SAMPLE_RATE, min_seconds: float = 0.0) -> np.ndarray:
    """1-D float32 mono audio at ``target_rate``; :class:`AudioError` names the utterance."""
    try:
        wav, rate = read_spec(item.spec)
    except Exception as e:  # soundfile raises LibsndfileError/RuntimeError/OSError
        raise AudioError(item.utt, item.spec, f"cannot read audio: {e}") from None
    if item.start or item.end is not None:
        s = int(round(item.start * rate))
        e = wav.shape[0] if item.end is None else int(round(item.end * rate))
        if s >= wav.shape[0]:
            raise AudioError(item.utt, item.spec, f"segment starts at {item.start} s, after the end of the recording ({wav.shape[0] / rate:.2f} s)")
        wav = wav[s:e]
    wav = wav.mean(axis=1) if wav.shape[1] > 1 else wav[:, 0]
    if wav.size == 0:
        raise AudioError(item.utt, item.spec, "audio is empty")
    if not np.isfinite(wav).all():
        raise AudioError(item.utt, item.spec, "audio contains NaN or infinite samples")
    wav = resample(wav, rate, target_rate)
    if wav.size < min_seconds * target_rate:
        raise AudioError(item.utt, item.spec, f"audio is too short: {wav.size / target_rate:.3f} s < {min_seconds} s")
    return np.ascontiguousarray(wav, dtype=np.float32)


def iter_audio(items, target_rate: int = SAMPLE_RATE, min_seconds: float = 0.0) -> Iterator[tuple[AudioItem, np.ndarray | AudioError]]:
    """(item, audio or the AudioError) for each item; never raises for one bad file."""
    for it in items:
        try:
            yield it, load_item(it, target_rate, min_seconds)
        except AudioError as e:
            yield it, e

