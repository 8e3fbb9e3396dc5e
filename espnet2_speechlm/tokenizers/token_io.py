"""Reading and writing dumped speech tokens.

Kaldi archives hold int32 data only as vectors, so an utterance's ``[T, N]``
frame matrix (N = 1 semantic + K acoustic streams, local ids) is stored
flattened row-major as one int32 vector of ``T * N`` ids, as the released
ESPnet-SpeechLM dumps do; readers reshape with ``N`` from ``tokenizer.json``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np


def flatten_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 2:
        raise ValueError(f"token frames must be [T, N], got shape {frames.shape}")
    return np.ascontiguousarray(frames, dtype=np.int32).reshape(-1)


def unflatten_frames(vec: np.ndarray, num_streams: int, utt: str = "?") -> np.ndarray:
    vec = np.asarray(vec)
    if vec.ndim == 2 and vec.shape[1] == num_streams:
        return vec.astype(np.int32, copy=False)
    if vec.size % num_streams:
        raise ValueError(f"utterance {utt!r}: {vec.size} tokens is not a whole number of {num_streams}-token frames")
    return vec.reshape(-1, num_streams).astype(np.int32, copy=False)


def read_scp(path: str | os.PathLike) -> dict[str, str]:
    """``utt -> "archive:offset"`` of a kaldiio scp, archive paths made absolute.

    The dump stage writes absolute archive paths.  Dumps written with paths
    relative to the directory the dump ran in are still read from elsewhere:
    a relative path is looked up from the current directory, then from the
    scp's directory and each directory above it.  An archive found nowhere is
    an error naming the scp and its line."""
    path = Path(path)
    found: dict[str, str] = {}
    out: dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            parts = line.strip().split(maxsplit=1)
            if not parts:
                continue
            if len(parts) != 2:
                raise ValueError(f"{path}: line {lineno}: expected '<utt> <archive>:<offset>', got {line.strip()!r}")
            utt, value = parts
            ark, sep, offset = value.rpartition(":")
            if value.endswith("|") or not sep or not offset[:1].isdigit():
                out[utt] = value
                continue
            if ark not in found:
                q = Path(ark)
                cands = [q] if q.is_absolute() else [q, *(d / q for d in [path.parent, *path.resolve().parent.parents])]
                hit = next((c for c in cands if c.is_file()), None)
                if hit is None:
                    raise FileNotFoundError(
                        f"{path}: line {lineno}: token archive {ark} not found"
                        + ("" if q.is_absolute() else f" (looked in the current directory, {path.parent} and above)"))
                found[ark] = str(hit.resolve())
            out[utt] = f"{found[ark]}:{offset}"
    return out


class TokenReader(Mapping):
    """Lazy ``utt -> [T, N]`` int32 frames of a ``tokens.scp`` (or ``.ark``)."""

    def __init__(self, path: str | os.PathLike, num_streams: int | None = None):
        import kaldiio

        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"token file not found: {self.path}")
        if num_streams is None:
            from .speech import read_config

            num_streams = 1 + int(read_config(self.path.parent)["num_codebooks"])
        self.num_streams = num_streams
        if self.path.suffix == ".ark":
            self._d = dict(kaldiio.load_ark(str(self.path)))
        else:
            self._d = read_scp(self.path)

    def __getitem__(self, utt: str) -> np.ndarray:
        v = self._d[utt]
        if isinstance(v, str):
            import kaldiio

            v = kaldiio.load_mat(v)
        return unflatten_frames(v, self.num_streams, utt)

    def __iter__(self) -> Iterator[str]:
        return iter(self._d)

    def __len__(self) -> int:
        return len(self._d)


def write_lines_atomic(path: str | os.PathLike, lines) -> Path:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for line in lines:
            f.write(line.rstrip("\n") + "\n")
    os.replace(tmp, path)
    return path
