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

import hashlib
import json
from pathlib import Path

import numpy as np

from ..vocab import JointVocab
from .audio import FRAME_RATE, SAMPLE_RATE

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
            f"they must agree within {max_diff} frame(s) (check that both tokenizers run at {FRAME_RATE} Hz on {SAMPLE_RATE // 1000} kHz audio)")
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
    def sample_rate(self) -> int:
        """Hz of the audio it reads and writes: what tokenizer.json records, else the toolkit's rate."""
        return int(self.config.get("sample_rate", SAMPLE_RATE))

    @property
    def frame_rate(self) -> float:
        """Token frames per second: what tokenizer.json records, else the toolkit's rate."""
        return float(self.config.get("frame_rate", FRAME_RATE))

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


def code_vectors(tokenizer_dir: str | Path) -> dict[str, np.ndarray]:
    """The code vectors a fitted speech tokenizer stores: ``"semantic"``
    ``[K, d]`` k-means centres and/or ``"acoustic"`` ``[Q, C, M]`` residual
    codebooks (only the kinds this toolkit fits itself).  A speech LM's new
    rows can start from them (``model.speech_init``)."""
    from .kmeans import load_centers
    from .melcodec import MelRVQCodec

    cfg = read_config(tokenizer_dir)
    out = {}
    sem = cfg["semantic"]
    if sem.get("type") == "kmeans":
        out["semantic"] = load_centers(sem["kmeans"]).numpy()
    ac = cfg["acoustic"]
    if ac.get("type") == MelRVQCodec.kind:
        out["acoustic"] = MelRVQCodec.load(ac["dir"]).books.cpu().numpy()  # checks the codebooks' shape too
    return out


def make_config(sem: dict, ac: dict) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "sample_rate": SAMPLE_RATE,
        "frame_rate": FRAME_RATE,
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


# ------------------------------------------------------------ compatibility
class TokenizerMismatchError(ValueError):
    """A speech tokenizer or a token dump does not fit a model (both files named)."""


def _sizes(cfg: dict) -> tuple[int, int, int]:
    return int(cfg["semantic_vocab_size"]), int(cfg["num_codebooks"]), int(cfg["codebook_size"])


def _describe(sizes: tuple[int, int, int]) -> str:
    return f"{sizes[0]} semantic units, {sizes[1]} x {sizes[2]} acoustic codes"


def _config_file(tokenizer) -> Path:
    p = Path(tokenizer)
    return p / TOKENIZER_FILE if p.is_dir() else p


def check_fits_vocab(tokenizer: str | Path, vocab: JointVocab | str | Path, vocab_file: str | Path | None = None) -> dict:
    """Refuse a speech tokenizer whose sizes are not a model's speech blocks.

    ``tokenizer``: a tokenizer directory or its ``tokenizer.json`` (the copy
    a token dump keeps beside ``tokens.scp`` too); ``vocab``: a model's
    ``vocab.json`` or the loaded vocabulary (then ``vocab_file`` names it).
    Tokens of another tokenizer index rows that mean something else, or no
    row at all, so a model must never be used with one.  Returns the
    tokenizer's config."""
    cfg_file = _config_file(tokenizer)
    cfg = read_config(cfg_file)
    if not isinstance(vocab, JointVocab):
        vocab_file = vocab_file or vocab
        vocab = JointVocab.load(vocab)
    got = _sizes(cfg)
    if not (vocab.has_block("semantic") and vocab.has_block("acoustic")):
        raise TokenizerMismatchError(f"{cfg_file}: a speech tokenizer ({_describe(got)}), "
                                     f"but {vocab_file} has no speech blocks: the model reads text only")
    sem, ac = vocab.block("semantic"), vocab.block("acoustic")
    want = (sem.size, ac.codebooks, ac.codebook_size)
    if got != want:
        raise TokenizerMismatchError(
            f"{cfg_file}: {_describe(got)}, but {vocab_file} was built for {_describe(want)}: "
            "the speech tokenizer does not fit the model (use the tokenizer it was trained with)")
    return cfg


def _array_digest(h, name: str, a: np.ndarray) -> None:
    a = np.ascontiguousarray(a)
    h.update(f"{name}:{a.dtype.str}:{a.shape}".encode())
    h.update(a.tobytes())


def _file_digest(h, p: Path) -> None:
    # arrays by value (re-saving a tokenizer, as packing does, rewrites the files
    # with new zip timestamps); checkpoints too large to read again by size
    if p.suffix == ".npy":
        _array_digest(h, p.name, np.load(p, allow_pickle=False))
    elif p.suffix == ".npz":
        with np.load(p, allow_pickle=False) as z:
            for k in sorted(z.files):
                _array_digest(h, f"{p.name}/{k}", z[k])
    elif p.suffix == ".json":
        h.update(p.name.encode() + json.dumps(json.loads(p.read_text()), sort_keys=True).encode())
    elif p.stat().st_size <= 64 * 2**20:
        h.update(p.name.encode() + p.read_bytes())
    else:
        h.update(f"{p.name}:{p.stat().st_size}".encode())


def fingerprint(cfg: dict) -> str | None:
    """What decides the ids a tokenizer gives: its settings and the values in
    its fitted files (``cfg`` as :func:`read_config` returns it).  A token dump
    records it in its ``tokenizer.json``; the same tokenizer copied or packed
    elsewhere has the same fingerprint, one fitted again has another.  None
    when the files it names are gone."""
    if cfg.get("fingerprint"):
        return cfg["fingerprint"]
    h = hashlib.sha256(b"speech-tokenizer-v1")
    paths: list[Path] = []

    def settings(node):
        if isinstance(node, dict):
            out = {}
            for k, v in sorted(node.items()):
                if k in ("fingerprint", "tokenizer_dir", "data_dir", "frame_layout"):
                    continue
                if k in PATH_KEYS and isinstance(v, str):
                    paths.append(Path(v))
                    continue
                out[k] = settings(v)
            return out
        return [settings(v) for v in node] if isinstance(node, list) else node

    h.update(json.dumps(settings(cfg), sort_keys=True).encode())
    for p in paths:
        if p.is_file():
            files = [p]
        elif p.is_dir():
            files = sorted(q for q in p.iterdir() if q.suffix in (".npy", ".npz", ".json") and q.name != TOKENIZER_FILE)
        else:
            return None  # its files are gone: unknown
        for q in files:
            _file_digest(h, q)
    return "v1:" + h.hexdigest()[:20]


def check_same_tokenizer(dump_tokenizer: str | Path, model_tokenizer: str | Path) -> None:
    """Refuse a token dump made with another speech tokenizer than a model's."""
    a_file, b_file = _config_file(dump_tokenizer), _config_file(model_tokenizer)
    a, b = read_config(a_file), read_config(b_file)
    if _sizes(a) != _sizes(b):
        raise TokenizerMismatchError(f"{a_file}: the tokens were made by a tokenizer with {_describe(_sizes(a))}, "
                                     f"but {b_file} has {_describe(_sizes(b))}")
    fa, fb = fingerprint(a), fingerprint(b)
    if fa and fb and fa != fb:
        made_by = f" ({a['tokenizer_dir']})" if a.get("tokenizer_dir") else ""
        raise TokenizerMismatchError(
            f"{a_file}: the tokens were made by another speech tokenizer{made_by} than {b_file} "
            f"(same sizes, other fitted values: fingerprint {fa} vs {fb}); dump the data again with the model's tokenizer")
