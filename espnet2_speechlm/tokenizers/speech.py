"""The speech tokenizer: semantic + acoustic streams, one ``[T, 1 + K]`` frame matrix.

A tokenizer directory holds the fitted files of both halves and
``tokenizer.json``, which records what produced the tokens::

    {"format_version": 1, "sample_rate": 16000, "frame_rate": 50,
     "semantic_vocab_size": 5000, "num_codebooks": 8, "codebook_size": 1024,
     "semantic": {"type": "kmeans", "features": {...}, "kmeans": "/abs/semantic_kmeans.npy", ...},
     "acoustic": {"type": "mel_rvq" | "espnet_codec", ...}}

The vocabulary stage reads the sizes from it instead of guessing.  Frames
are LOCAL ids, ``[semantic unit, code of codebook 0 .. K-1]``; the joint
vocabulary (``vocab.py``) maps them to global ids.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

FORMAT_VERSION = 1
TOKENIZER_FILE = "tokenizer.json"


class FrameMismatchError(ValueError):
    """The semantic and acoustic streams of an utterance differ by more than one frame."""


def align_streams(utt: str, semantic: np.ndarray, acoustic: np.ndarray, max_diff: int = 1) -> np.ndarray:
    """``[T]`` + ``[T', K]`` -> ``[min(T, T'), 1 + K]`` int32; a difference above ``max_diff`` frames is an error."""
    ts, ta = len(semantic), len(acoustic)
    if abs(ts - ta) > max_diff:
        raise FrameMismatchError(
            f"utterance {utt!r}: semantic stream has {ts} frames, acoustic stream {ta}; "
            f"they must agree within {max_diff} frame(s) (check that both tokenizers run at 50 Hz on 16 kHz audio)")
    t = min(ts, ta)
    return np.concatenate([np.asarray(semantic[:t]).reshape(t, 1), np.asarray(acoustic[:t]).reshape(t, -1)], 1).astype(np.int32)


def build_acoustic(entry: dict, device: str = "cpu"):
    kind = entry.get("type")
    if kind == "mel_rvq":
        from .melcodec import MelRVQCodec

        return MelRVQCodec.load(entry["dir"], device=device)
    if kind == "espnet_codec":
        from .espnet_codec import ESPnetCodec

        return ESPnetCodec.from_config(entry, device=device)
    raise ValueError(f"unknown acoustic tokenizer type {kind!r}: use mel_rvq or espnet_codec")


class SpeechTokenizer:
    """Encode 16 kHz waveforms to ``[T, 1 + K]`` int32 frames; decode frames to audio (acoustic part)."""

    def __init__(self, semantic, acoustic, config: dict | None = None):
        self.semantic, self.acoustic = semantic, acoustic
        self.config = config or {}

    @property
    def num_codebooks(self) -> int:
        return int(self.acoustic.num_codebooks)

    @property
    def num_streams(self) -> int:
        return 1 + self.num_codebooks

    def encode(self, wavs, utts=None) -> list[np.ndarray]:
        utts = utts or [f"#{i}" for i in range(len(wavs))]
        sem = self.semantic.encode(wavs)
        ac = self.acoustic.encode(wavs)
        # ESPnet's SSL framing gives up to 2 frames fewer than the codec; both are then cut to the shorter
        lag = int(getattr(getattr(self.semantic, "features", None), "max_frame_lag", 1))
        return [align_streams(u, s, a, lag) for u, s, a in zip(utts, sem, ac)]

    def decode(self, frames) -> np.ndarray:
        """``[T, 1 + K]`` local frames (or ``[T, K]`` acoustic codes) -> 16 kHz float32 audio."""
        frames = np.asarray(frames)
        if frames.ndim == 1:
            if frames.size % self.num_streams:
                raise ValueError(f"a flat token vector of {frames.size} ids is not a whole number of {self.num_streams}-token frames")
            frames = frames.reshape(-1, self.num_streams)
        if frames.shape[1] == self.num_streams:
            frames = frames[:, 1:]
        return self.acoustic.decode(frames)

    # -------------------------------------------------------------------- I/O
    def save(self, directory: str | Path) -> Path:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        sem = self.semantic.save(d)
        ac = self.acoustic.save(d) if hasattr(self.acoustic, "save") else self.acoustic.to_dict()
        self.config = make_config(sem, ac)
        return write_config(d, self.config)

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> "SpeechTokenizer":
        from .semantic import SemanticTokenizer  # torch: imported only when a model is built

        cfg = read_config(path)
        return cls(SemanticTokenizer.from_config(cfg["semantic"], device), build_acoustic(cfg["acoustic"], device), cfg)


def check_fits_vocab(cfg: dict, vocab, where: str) -> None:
    """Refuse a speech tokenizer (its ``tokenizer.json`` as read by :func:`read_config`)
    whose unit or code counts are not the vocabulary's speech blocks: its ids
    would land on other tokens, or outside the model, with no error later."""
    if not (vocab.has_block("semantic") and vocab.has_block("acoustic")):
        raise ValueError(f"{where}: the model's vocabulary has no speech blocks, but a speech tokenizer was given")
    ac = vocab.block("acoustic")
    want = (vocab.block("semantic").size, ac.codebooks, ac.codebook_size)
    got = (int(cfg["semantic_vocab_size"]), int(cfg["num_codebooks"]), int(cfg["codebook_size"]))
    if got != want:
        raise ValueError(
            f"{where}: the speech tokenizer gives {got[0]} semantic units and {got[1]} x {got[2]} codes, "
            f"but the model's vocabulary has {want[0]} units and {want[1]} x {want[2]} codes: they do not fit")


def make_config(sem: dict, ac: dict) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "sample_rate": 16000,
        "frame_rate": 50,
        "semantic_vocab_size": int(sem["vocab_size"]),
        "num_codebooks": int(ac["num_codebooks"]),
        "codebook_size": int(ac["codebook_size"]),
        "frame_layout": "[semantic, codebook 0..K-1] local ids; stored flat (row-major) as int32 Kaldi vectors",
        "semantic": sem,
        "acoustic": ac,
    }


# keys whose values are file or directory paths
PATH_KEYS = ("kmeans", "dir", "config", "model")


def _map_paths(node, fn):
    if isinstance(node, dict):
        return {k: (fn(v) if k in PATH_KEYS and isinstance(v, str) else _map_paths(v, fn)) for k, v in node.items()}
    if isinstance(node, list):
        return [_map_paths(v, fn) for v in node]
    return node


def _relative_inside(directory: Path):
    """Paths inside the tokenizer directory are stored relative to it, so the
    directory can be moved, packed with a model or copied to another machine."""
    root = directory.resolve()

    def fn(v: str) -> str:
        q = Path(v)
        if q.is_absolute():
            try:
                return str(q.resolve().relative_to(root)) or "."
            except ValueError:
                return v  # outside (e.g. a released codec checkpoint): kept absolute
        return v

    return fn


def write_config(directory: str | Path, cfg: dict) -> Path:
    p = Path(directory) / TOKENIZER_FILE
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(json.dumps(_map_paths(cfg, _relative_inside(Path(directory))), indent=2) + "\n")
    tmp.replace(p)
    return p


def read_config(path: str | Path) -> dict:
    p = Path(path)
    if p.is_dir():
        p = p / TOKENIZER_FILE
    if not p.exists():
        raise FileNotFoundError(f"tokenizer config not found: {p} (run the tokenizer fitting stage first)")
    try:
        cfg = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{p}: line {e.lineno}: not valid JSON ({e.msg})") from None
    for key in ("semantic", "acoustic", "semantic_vocab_size", "num_codebooks", "codebook_size"):
        if key not in cfg:
            raise ValueError(f"{p}: missing key {key!r}")
    if cfg.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{p}: format_version {cfg.get('format_version')!r}, expected {FORMAT_VERSION}")
    base = p.parent.resolve()
    return _map_paths(cfg, lambda v: v if Path(v).is_absolute() else str(base / v))
