"""Reading the audio of a Kaldi data directory for scoring.

``read_scp(path)`` reads a ``wav.scp`` (``uttid value`` per line) and
``load_audio(value)`` turns one value into a mono float32 waveform at
16 kHz.  A value is one of:

* a file path readable by soundfile (wav, flac, ogg, ...);
* a Kaldi pipe, ``command args... |`` (run by the shell, WAV on stdout),
  which recipes use for formats soundfile cannot read (``sox x.g722 ... |``);
* a Kaldi ark offset, ``foo.ark:123`` (read by kaldiio).

Other sample rates are resampled with a polyphase filter.  Multi-channel
audio is mixed down to mono (the mean of the channels), as the data stages
and the inference API do, so a test set that passed stages 2-9 is scored
on the same audio the model heard.  ``segments`` files (``uttid recid start
end``) are honoured by :class:`DataDirAudio`.
"""

from __future__ import annotations

import math
import os

import numpy as np

from espnet2_speechlm.score.wer import ScoringInputError

from ..tokenizers.audio import SAMPLE_RATE


def read_scp(path: str | os.PathLike, what: str = "wav.scp") -> dict[str, tuple[str, int]]:
    """``uttid -> (value, line number)``; malformed lines raise with FILE:LINE."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ScoringInputError(f"{path}: no such file (expected a Kaldi {what}: 'uttid value' per line)")
    out: dict[str, tuple[str, int]] = {}
    with open(path, encoding="utf-8", errors="strict") as f:
        try:
            lines = list(f)
        except UnicodeDecodeError as e:
            raise ScoringInputError(f"{path}: not valid UTF-8 ({e.reason})") from None
    for lineno, line in enumerate(lines, 1):
        line = line.rstrip("\r\n")
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or line[0].isspace():
            raise ScoringInputError(f"{path}:{lineno}: malformed line {line!r} (expected 'uttid value')")
        if parts[0] in out:
            raise ScoringInputError(
                f"{path}:{lineno}: duplicate utterance id {parts[0]!r} (first on line {out[parts[0]][1]})"
            )
        out[parts[0]] = (parts[1].strip(), lineno)
    if not out:
        raise ScoringInputError(f"{path}: file is empty")
    return out


def _read_value(value: str) -> tuple[np.ndarray, int]:
    # one reader for the whole toolkit: files, "cmd |" pipes and ark offsets
    from ..tokenizers.audio import read_spec

    if not value.endswith("|") and not os.path.isfile(value) and not _is_ark(value):
        raise FileNotFoundError(f"no such audio file {value!r}")
    return read_spec(value)


def _is_ark(value: str) -> bool:
    return ":" in value and os.path.isfile(value.rsplit(":", 1)[0])


def load_audio(value: str, where: str = "") -> np.ndarray:
    """Mono float32 16 kHz audio of one scp value; ``where`` prefixes errors."""
    prefix = f"{where}: " if where else ""
    try:
        wav, sr = _read_value(value)
    except Exception as e:  # soundfile, kaldiio and the shell raise many types
        raise ScoringInputError(f"{prefix}cannot read audio {value!r}: {e}") from None
    from ..tokenizers.audio import resample

    return resample(wav.mean(axis=1), sr).astype(np.float32, copy=False)


def read_segments(path: str | os.PathLike) -> dict[str, tuple[str, float, float]]:
    path = os.fspath(path)
    out = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            parts = line.split()
            try:
                uid, rec, start, end = parts
                start_f, end_f = float(start), float(end)
            except ValueError:
                raise ScoringInputError(
                    f"{path}:{lineno}: malformed line {line.rstrip()!r} (expected 'uttid recid start end')"
                ) from None
            if not (0 <= start_f and (end_f < 0 or end_f > start_f)) or math.isnan(start_f):
                raise ScoringInputError(f"{path}:{lineno}: bad times {start}..{end}")
            out[uid] = (rec, start_f, end_f)
    return out


class DataDirAudio:
    """Audio of a data dir (``wav.scp`` + optional ``segments``) by utterance id."""

    def __init__(self, wav_scp: str | os.PathLike, segments: str | os.PathLike | None = None):
        self.wav_scp = os.fspath(wav_scp)
        self.scp = read_scp(wav_scp)
        self.segments = read_segments(segments) if segments else None
        if self.segments is not None:
            for uid, (rec, _, _) in self.segments.items():
                if rec not in self.scp:
                    raise ScoringInputError(f"{segments}: recording {rec!r} of {uid!r} is not in {self.wav_scp}")
        self._cache: tuple[str, np.ndarray] | None = None
        # Fail before minutes of transcription, not in the middle of them.
        for uid, (value, lineno) in self.scp.items():
            if not value.endswith("|") and not os.path.isfile(value) and not _is_ark(value):
                raise ScoringInputError(f"{self.wav_scp}:{lineno}: cannot read audio {value!r}: no such file")

    def ids(self) -> list[str]:
        return list(self.segments) if self.segments is not None else list(self.scp)

    def load(self, uttid: str) -> np.ndarray:
        if self.segments is None:
            value, lineno = self.scp[uttid]
            return load_audio(value, f"{self.wav_scp}:{lineno}")
        rec, start, end = self.segments[uttid]
        if self._cache is None or self._cache[0] != rec:
            value, lineno = self.scp[rec]
            self._cache = (rec, load_audio(value, f"{self.wav_scp}:{lineno}"))
        wav = self._cache[1]
        a = int(round(start * SAMPLE_RATE))
        b = len(wav) if end < 0 else int(round(end * SAMPLE_RATE))
        return wav[a:b]
