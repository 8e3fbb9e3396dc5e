"""The joint vocabulary: one id space for special, speech and text tokens.

Layout (compatible with the released OpusLM / ESPnet-SpeechLM checkpoints)::

    [0, 256)                         special tokens (fixed ids, see SPECIALS)
    [256, 256 + S)                   semantic units (k-means of SSL features)
    [.., .. + K * C)                 acoustic codes, codebook k at start + C * k
    [.., .. + V_text)                the base LLM's text tokenizer, id for id

Blocks always come in the canonical order semantic, acoustic, text, then any
extra blocks sorted by name, so the same ingredients give the same ids
whatever order they are listed in.  The layout is written to ``vocab.json``
beside every model and read back from it; it is never recomputed from a
mapping's iteration order (silently re-ordered blocks make a checkpoint
predict the wrong tokens with no error at all).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

FORMAT_VERSION = 1
NUM_SPECIAL = 256

# Fixed special ids.  The values that matter for released checkpoints are
# <pad>=0, <unk>=1, <sos/eos>=5, roles 8-11, modality markers 32-63 (34, 35,
# 37 used by OpusLM) and task markers 64-127 (64, 80-83 used by OpusLM).
SPECIALS: dict[str, int] = {
    "<pad>": 0,
    "<unk>": 1,
    "<blank>": 2,
    "<space>": 3,
    "<continuous_placeholder>": 4,
    "<sos/eos>": 5,
    "<local_sos/eos>": 6,
    "<unknown_unused>": 7,
    "<system>": 8,
    "<user>": 9,
    "<assistant>": 10,
    "<eou>": 11,
    # modality start/end markers
    "<ssl_start/end>": 32,
    "<codec_start/end>": 33,
    "<codec_ssl_start/end>": 34,
    "<text_bpe_start/end>": 35,
    "<g2p_start/end>": 36,
    "<spk_start/end>": 37,
    # task markers
    "<textlm_task>": 64,
    "<asr_task>": 80,
    "<tts_task>": 81,  # TTS with a speaker prompt
    "<plain_tts_task>": 82,
    "<audiolm_task>": 83,
}
PAD, UNK, SOS_EOS = 0, 1, 5

# Kinds of blocks, in canonical order.  "semantic" and "text" tokens live in
# stream 0; "acoustic" codebook k lives in stream k + 1.
BLOCK_ORDER = ("semantic", "acoustic", "text")


class VocabError(ValueError):
    """A vocabulary file is malformed or does not match what it is used with."""


@dataclass(frozen=True)
class Block:
    """A contiguous run of ids owned by one modality."""

    name: str
    start: int
    size: int
    codebooks: int = 1  # acoustic blocks: number of codebooks, each size // codebooks

    @property
    def end(self) -> int:
        return self.start + self.size

    @property
    def codebook_size(self) -> int:
        return self.size // self.codebooks

    def codebook_range(self, k: int) -> tuple[int, int]:
        if not 0 <= k < self.codebooks:
            raise IndexError(f"block {self.name!r} has {self.codebooks} codebooks, asked for {k}")
        s = self.start + k * self.codebook_size
        return s, s + self.codebook_size

    def contains(self, token_id: int) -> bool:
        return self.start <= token_id < self.end


@dataclass
class JointVocab:
    """Immutable description of the joint id space.  Build with :meth:`build`."""

    blocks: tuple[Block, ...]
    num_streams: int
    specials: Mapping[str, int] = field(default_factory=lambda: dict(SPECIALS))
    text_tokenizer: str = ""  # free-form description of the text block's tokenizer
    # The released OpusLM models were trained with semantic unit 0 written as <pad>
    # (id 0) instead of the block's first id (an artefact of how ESPnet offset the
    # units).  Vocabularies imported from them set this, so that speech is turned
    # into the ids those models know; every other vocabulary leaves it False.
    semantic0_is_pad: bool = False

    # ------------------------------------------------------------------ build
    @classmethod
    def build(
        cls,
        blocks: Mapping[str, int] | Iterable[tuple[str, int]],
        num_codebooks: int = 8,
        text_tokenizer: str = "",
    ) -> "JointVocab":
        """Lay out the blocks canonically.

        ``blocks`` maps a block name to its size, e.g. ``{"semantic": 5000,
        "acoustic": 8 * 1024, "text": 49152}``.  The acoustic block must split
        evenly into ``num_codebooks`` codebooks.  N = 1 + num_codebooks streams
        when an acoustic block is present, else 1.
        """
        items = list(blocks.items()) if isinstance(blocks, Mapping) else list(blocks)
        names = [n for n, _ in items]
        if len(set(names)) != len(names):
            raise VocabError(f"duplicate block names in {names}")
        sizes = dict(items)
        for name, size in sizes.items():
            if int(size) <= 0:
                raise VocabError(f"block {name!r} has size {size}; sizes must be positive")
        order = [n for n in BLOCK_ORDER if n in sizes] + sorted(n for n in sizes if n not in BLOCK_ORDER)
        out, start = [], NUM_SPECIAL
        for name in order:
            size = int(sizes[name])
            cb = num_codebooks if name == "acoustic" else 1
            if size % cb:
                raise VocabError(f"acoustic block of {size} ids does not split into {cb} codebooks")
            out.append(Block(name, start, size, cb))
            start += size
        num_streams = 1 + num_codebooks if "acoustic" in sizes else 1
        return cls(tuple(out), num_streams, dict(SPECIALS), text_tokenizer)

    # ---------------------------------------------------------------- queries
    @property
    def size(self) -> int:
        return max([NUM_SPECIAL] + [b.end for b in self.blocks])

    def __len__(self) -> int:
        return self.size

    def block(self, name: str) -> Block:
        for b in self.blocks:
            if b.name == name:
                return b
        raise KeyError(f"vocabulary has no block {name!r}; blocks: {[b.name for b in self.blocks]}")

    def has_block(self, name: str) -> bool:
        return any(b.name == name for b in self.blocks)

    def special(self, name: str) -> int:
        try:
            return self.specials[name]
        except KeyError:
            raise KeyError(f"unknown special token {name!r}") from None

    @property
    def num_codebooks(self) -> int:
        return self.num_streams - 1

    def acoustic_stream_range(self, stream: int) -> tuple[int, int]:
        """Global id range that stream ``stream`` (>= 1) may hold besides <pad>."""
        return self.block("acoustic").codebook_range(stream - 1)

    # ---------------------------------------------------- local <-> global ids
    def text_to_global(self, ids):
        return np.asarray(ids, dtype=np.int64) + self.block("text").start

    def text_to_local(self, ids):
        b = self.block("text")
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size and (ids.min() < b.start or ids.max() >= b.end):
            raise VocabError("text_to_local: ids outside the text block")
        return ids - b.start

    def audio_to_global(self, codes):
        """``[T, N]`` local codes (semantic unit, codebook 0..N-2 code) -> global ids."""
        codes = np.asarray(codes, dtype=np.int64)
        if codes.ndim != 2 or codes.shape[1] != self.num_streams:
            raise VocabError(
                f"audio frames must be [T, {self.num_streams}] (semantic + {self.num_codebooks} codebooks); "
                f"got shape {codes.shape}"
            )
        sem, ac = self.block("semantic"), self.block("acoustic")
        if codes.size:
            if codes[:, 0].min() < 0 or codes[:, 0].max() >= sem.size:
                raise VocabError(f"semantic unit out of range [0, {sem.size}): {codes[:, 0].min()}..{codes[:, 0].max()}")
            if codes[:, 1:].min() < 0 or codes[:, 1:].max() >= ac.codebook_size:
                raise VocabError(f"acoustic code out of range [0, {ac.codebook_size})")
        out = np.empty_like(codes)
        out[:, 0] = codes[:, 0] + sem.start
        if self.semantic0_is_pad:
            out[codes[:, 0] == 0, 0] = PAD
        out[:, 1:] = codes[:, 1:] + ac.start + ac.codebook_size * np.arange(self.num_codebooks)
        return out

    def audio_to_local(self, ids):
        ids = np.asarray(ids, dtype=np.int64)
        sem, ac = self.block("semantic"), self.block("acoustic")
        out = np.empty_like(ids)
        out[:, 0] = ids[:, 0] - sem.start
        if self.semantic0_is_pad:
            out[ids[:, 0] == PAD, 0] = 0
        out[:, 1:] = ids[:, 1:] - ac.start - ac.codebook_size * np.arange(self.num_codebooks)
        return out

    def modality_of(self, token_id: int) -> str:
        """'special', or the name of the block that holds ``token_id``."""
        if 0 <= token_id < NUM_SPECIAL:
            return "special"
        for b in self.blocks:
            if b.contains(token_id):
                return b.name
        raise VocabError(f"token id {token_id} is outside the vocabulary (size {self.size})")

    def token_name(self, token_id: int, text_pieces: Sequence[str] | None = None) -> str:
        token_id = int(token_id)
        if 0 <= token_id < NUM_SPECIAL:
            for name, i in self.specials.items():
                if i == token_id:
                    return name
            return f"<unused_{token_id}>"
        kind = self.modality_of(token_id)
        b = self.block(kind)
        local = token_id - b.start
        if kind == "acoustic":
            return f"<codec_{local // b.codebook_size}_{local % b.codebook_size}>"
        if kind == "semantic":
            return f"<ssl_{local}>"
        if kind == "text" and text_pieces is not None and local < len(text_pieces):
            return repr(text_pieces[local])
        return f"<{kind}_{local}>"

    # ------------------------------------------------------------------- I/O
    def to_dict(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "size": self.size,
            "num_streams": self.num_streams,
            "specials": dict(sorted(self.specials.items(), key=lambda kv: kv[1])),
            "blocks": [
                {"name": b.name, "start": b.start, "size": b.size, "codebooks": b.codebooks} for b in self.blocks
            ],
            "text_tokenizer": self.text_tokenizer,
            **({"semantic0_is_pad": True} if self.semantic0_is_pad else {}),
            "fingerprint": self.fingerprint(),
        }

    def fingerprint(self) -> str:
        """Hash of everything that decides which id means what."""
        key = {
            "blocks": sorted([b.name, b.start, b.size, b.codebooks] for b in self.blocks),
            "specials": sorted(self.specials.items()),
            "num_streams": self.num_streams,
        }
        if self.semantic0_is_pad:  # only then: the fingerprints of every other vocabulary stay as they were
            key["semantic0_is_pad"] = True
        key = json.dumps(key, sort_keys=True)
        return hashlib.sha256(key.encode()).hexdigest()[:16]

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``vocab.json`` (``path`` is the file or its directory), atomically."""
        path = Path(path)
        if path.is_dir() or path.suffix != ".json":
            path = path / "vocab.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "JointVocab":
        path = Path(path)
        if path.is_dir():
            path = path / "vocab.json"
        if not path.exists():
            raise FileNotFoundError(f"vocabulary file not found: {path}")
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise VocabError(f"{path}: line {e.lineno}: not valid JSON ({e.msg})") from None
        try:
            if d.get("format_version") != FORMAT_VERSION:
                raise VocabError(f"{path}: format_version {d.get('format_version')!r}, expected {FORMAT_VERSION}")
            blocks = tuple(Block(b["name"], int(b["start"]), int(b["size"]), int(b.get("codebooks", 1))) for b in d["blocks"])
            vocab = cls(blocks, int(d["num_streams"]), {k: int(v) for k, v in d["specials"].items()}, d.get("text_tokenizer", ""),
                        bool(d.get("semantic0_is_pad", False)))
        except (KeyError, TypeError) as e:
            raise VocabError(f"{path}: malformed vocabulary file ({e!r})") from None
        vocab._validate(path)
        if "fingerprint" in d and d["fingerprint"] != vocab.fingerprint():
            raise VocabError(f"{path}: fingerprint {d['fingerprint']} does not match its contents ({vocab.fingerprint()}); the file was edited")
        if "size" in d and int(d["size"]) != vocab.size:
            raise VocabError(f"{path}: size {d['size']} does not match its blocks ({vocab.size})")
        return vocab

    def _validate(self, where) -> None:
        prev = NUM_SPECIAL
        for b in sorted(self.blocks, key=lambda b: b.start):
            if b.start < prev:
                raise VocabError(f"{where}: block {b.name!r} starts at {b.start}, overlapping the previous block (ends {prev})")
            prev = b.end
        for name, i in self.specials.items():
            if not 0 <= i < NUM_SPECIAL:
                raise VocabError(f"{where}: special {name!r} has id {i} outside [0, {NUM_SPECIAL})")

    def check_matches(self, other: "JointVocab", what: str = "checkpoint", sides: tuple[str, str] | None = None) -> None:
        """Raise a :class:`VocabError` that says how two vocabularies differ.

        ``sides`` names this vocabulary and ``other`` in the message, e.g.
        ``("data", "checkpoint")``: blocks are shown as (start, size) pairs,
        this one's first."""
        if self.fingerprint() == other.fingerprint():
            return
        a = {b.name: (b.start, b.size) for b in self.blocks}
        c = {b.name: (b.start, b.size) for b in other.blocks}
        diffs = [f"{n}: {a.get(n)} vs {c.get(n)}" for n in sorted(set(a) | set(c)) if a.get(n) != c.get(n)]
        if self.num_streams != other.num_streams:
            diffs.append(f"num_streams: {self.num_streams} vs {other.num_streams}")
        if self.semantic0_is_pad != other.semantic0_is_pad:
            diffs.append(f"semantic unit 0 written as <pad>: {self.semantic0_is_pad} vs {other.semantic0_is_pad}")
        legend = f" ((start, size) in the {sides[0]} vs in the {sides[1]})" if sides and diffs else ""
        raise VocabError(f"vocabulary does not match the {what}: " + ("; ".join(diffs) or "special tokens differ") + legend)
