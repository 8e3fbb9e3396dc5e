"""Task-sequence splicing: dumped tokens + transcripts -> a data directory the trainer reads.

One data directory holds the examples of one (corpus, task) pair.  It refers
to the dumped speech tokens by utterance id (paper-scale dumps are far too
large to copy) and stores the text token ids inline (they are small).

Layout of a data directory::

    meta.json        format_version, task, loss_region, num_streams,
                     vocab_fingerprint, tokens_scp (absolute path of the
                     kaldiio scp of the dump stage: int32 [T, N] LOCAL ids
                     stored flattened (tokenizers/token_io.py), column 0 the
                     semantic unit, 1..N-1 the codec codes; null for textlm),
                     num_examples, num_frames, length statistics
                     (min/max/mean/p50/p90/p99 in frames), how it was made
    vocab.json       the joint vocabulary the lengths were computed for
    examples.jsonl   one JSON object per line, one per example:
                       id     example id (the utterance id, or "first+last"
                              for spliced long-form examples)
                       len    frames of the built sequence (after splicing,
                              before the N-1 delay steps)
                       utts   utterance ids whose speech tokens it uses (in order)
                       text   list (one per utterance) of text token ids
                              (local ids of the text tokenizer); absent for
                              speech-only tasks
                       spk    optional: list (one per utterance) of
                              [utt_id, start, length] speaker-prompt windows
                              (another utterance of the same speaker)
    lengths.txt      "id len" per line, the same lengths for quick inspection

Long-form examples (``splice_budget`` > 0): utterances of one speaker (or
recording, with ``--utt2spk`` pointing to segments-style groupings) are
concatenated in utterance-id order into one sequence via
:func:`espnet2_speechlm.tasks.build_sequence` with a list of examples, as
long as the spliced sequence stays within the budget in frames.

Lengths are computed arithmetically from utt2num_frames and the text ids
(the same layout ``build_sequence`` produces) so splicing never reads the
speech tokens themselves; :class:`DataDir.build` checks them when reading.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Protocol, Sequence

import numpy as np

from ..tasks import MODALITIES, build_sequence, get_task, sequence_length
from ..tokenizers.token_io import unflatten_frames
from ..vocab import JointVocab

FORMAT_VERSION = 1


class SpliceError(ValueError):
    """Bad input to the splicing stage or a malformed data directory."""


class TextEncoder(Protocol):
    def encode(self, text: str) -> list[int]: ...


# ----------------------------------------------------------------- readers
def read_kaldi_map(path: str | os.PathLike, what: str, value: Callable[[str, str, int], object] = lambda v, p, n: v) -> dict:
    """``utt value...`` per line -> dict; duplicate ids and empty lines are errors naming file:line."""
    path = Path(path)
    if not path.exists():
        raise SpliceError(f"{what} file not found: {path}")
    out: dict = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            parts = line.split(maxsplit=1)
            key = parts[0]
            rest = parts[1] if len(parts) > 1 else ""
            if key in out:
                raise SpliceError(f"{path}:{n}: duplicate utterance id {key!r}")
            out[key] = value(rest, str(path), n)
    return out


def _int_value(v: str, path: str, n: int) -> int:
    try:
        return int(v.split()[0])
    except (ValueError, IndexError):
        raise SpliceError(f"{path}:{n}: expected an integer frame count, got {v!r}") from None


class IdsTokenizer:
    """Text that is already token ids ("12 7 301"): for tests and pre-tokenised corpora."""

    def encode(self, text: str) -> list[int]:
        return [int(x) for x in text.split()]


class HFTokenizerFile:
    """A ``tokenizers`` library tokenizer (tokenizer.json), no special tokens added."""

    def __init__(self, path):
        from tokenizers import Tokenizer

        self.tok = Tokenizer.from_file(str(path))

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids


def load_text_tokenizer(spec: str) -> TextEncoder:
    """``ids`` (pre-tokenised text) | path of a ``tokenizers`` tokenizer.json |
    anything :func:`espnet2_speechlm.tokenizers.text.load_text_tokenizer`
    takes (a Hugging Face tokenizer directory, a sentencepiece ``.model``)."""
    if spec == "ids":
        return IdsTokenizer()
    p = Path(spec)
    if p.suffix == ".json" and p.is_file():
        return HFTokenizerFile(p)
    from ..tokenizers.text import load_text_tokenizer as load_tok

    try:
        return load_tok(p)
    except FileNotFoundError as e:
        raise SpliceError(f"text tokenizer {spec!r}: {e}") from None


# ----------------------------------------------------------------- splicing
@dataclass
class SpliceOptions:
    task: str
    loss_region: str = "target"
    splice_budget: int = 0  # frames; 0 = one utterance per example
    speaker_prompt_len: int = 0  # frames; 0 = no speaker prompts (tts only)
    max_len: int = 0  # drop examples longer than this (frames); 0 = keep all
    seed: int = 0


def splice(
    out_dir: str | os.PathLike,
    vocab_path: str | os.PathLike,
    opts: SpliceOptions,
    tokens_scp: str | os.PathLike | None = None,  # int32 vectors of T*N local ids (tokenizers/token_io.py)
    utt2num_frames: str | os.PathLike | None = None,
    text: str | os.PathLike | None = None,
    tokenizer: TextEncoder | None = None,
    utt2spk: str | os.PathLike | None = None,
    log: Callable[[str], None] = print,
    skip: Iterable[str] = (),
) -> dict:
    """Write a data directory (see the module docstring); returns meta."""
    t0 = time.time()
    vocab = JointVocab.load(vocab_path)
    tmpl = get_task(opts.task)
    N = vocab.num_streams
    names = {e.name: e for e in tmpl.entries}
    needs_speech = any(MODALITIES[e.modality][1] == "audio" and not e.optional for e in tmpl.entries)
    needs_text = "text" in names
    if opts.loss_region not in ("target", "all"):
        raise SpliceError(f"loss_region must be 'target' or 'all', got {opts.loss_region!r}")
    if opts.speaker_prompt_len and "speaker" not in names:
        raise SpliceError(f"task {opts.task!r} has no speaker prompt entry; speaker_prompt_len must be 0")

    nframes: dict[str, int] = {}
    if needs_speech or opts.speaker_prompt_len:
        if tokens_scp is None or utt2num_frames is None:
            raise SpliceError(f"task {opts.task!r} needs speech tokens: give tokens_scp and utt2num_frames")
        if not Path(tokens_scp).exists():
            raise SpliceError(f"tokens scp not found: {tokens_scp}")
        nframes = read_kaldi_map(utt2num_frames, "utt2num_frames", _int_value)
        scp_ids = read_kaldi_map(tokens_scp, "tokens scp")
        missing = [u for u in nframes if u not in scp_ids]
        if missing:
            raise SpliceError(f"{utt2num_frames}: {len(missing)} utterances have no tokens in {tokens_scp}, e.g. {missing[:3]}")
    texts: dict[str, list[int]] = {}
    if needs_text:
        if text is None or tokenizer is None:
            raise SpliceError(f"task {opts.task!r} needs a text file and a text tokenizer")
        tsize = vocab.block("text").size
        raw = read_kaldi_map(text, "text", lambda v, p, n: (v, p, n))
        for u, (s, p, n) in raw.items():
            try:
                ids = list(tokenizer.encode(s))
            except (ValueError, KeyError) as e:  # e.g. text that maps to <unk> in a strict tokenizer
                raise SpliceError(f"{p}:{n}: utterance {u!r}: {e}") from None
            if not ids:
                raise SpliceError(f"{p}:{n}: utterance {u!r} has an empty transcript")
            bad = [i for i in ids if not 0 <= i < tsize]
            if bad:
                raise SpliceError(f"{p}:{n}: token ids {bad[:5]} outside the text block [0, {tsize}) of {vocab_path}")
            texts[u] = ids
    skip = set(skip)
    if skip:  # utterances the dump stage skipped (bad audio): leave them out everywhere
        nframes = {u: v for u, v in nframes.items() if u not in skip}
        texts = {u: v for u, v in texts.items() if u not in skip}
        log(f"[splice] leaving out {len(skip)} utterances skipped by the token dump")
    if needs_speech and needs_text:
        only_s = sorted(set(nframes) - set(texts))
        only_t = sorted(set(texts) - set(nframes))
        if only_s or only_t:
            raise SpliceError(
                f"utterance ids do not match: {len(only_s)} in {utt2num_frames} but not in {text} (e.g. {only_s[:3]}), "
                f"{len(only_t)} in {text} but not in {utt2num_frames} (e.g. {only_t[:3]})"
            )
    utts = sorted(texts if needs_text else nframes)
    if not utts:
        raise SpliceError(f"no utterances for task {opts.task!r} (inputs: {tokens_scp or ''} {text or ''})")
    spk_of: dict[str, str] = {}
    if utt2spk is not None:
        spk_of = read_kaldi_map(utt2spk, "utt2spk", lambda v, p, n: v.strip())
    elif opts.splice_budget or opts.speaker_prompt_len:
        raise SpliceError("splice_budget and speaker_prompt_len need utt2spk (utterances of one speaker/recording)")

    def content(u: str) -> dict:
        d = {}
        if "text" in names:
            d["text"] = len(texts[u])
        for nm in ("speech",):
            if nm in names:
                d[nm] = nframes[u]
        return d

    # speaker prompts: a window of another utterance of the same speaker
    prompts: dict[str, list] = {}
    if opts.speaker_prompt_len:
        by_spk: dict[str, list[str]] = {}
        for u in sorted(nframes):
            by_spk.setdefault(spk_of.get(u, u), []).append(u)
        for u in utts:
            others = [o for o in by_spk.get(spk_of.get(u, u), []) if o != u]
            if not others:
                continue
            rng = np.random.default_rng([opts.seed, zlib.crc32(u.encode())])
            o = others[int(rng.integers(len(others)))]
            L = min(opts.speaker_prompt_len, nframes[o])
            start = int(rng.integers(0, nframes[o] - L + 1))
            prompts[u] = [o, start, L]

    # group into examples
    groups: list[list[str]] = []
    if opts.splice_budget:
        by_spk: dict[str, list[str]] = {}
        for u in utts:
            by_spk.setdefault(spk_of.get(u, u), []).append(u)
        for spk in sorted(by_spk):
            cur: list[str] = []
            for u in by_spk[spk]:
                cand = cur + [u]
                parts = [{**content(x), **({"speaker": prompts[x][2]} if x in prompts else {})} for x in cand]
                if cur and sequence_length(opts.task, parts, N) > opts.splice_budget:
                    groups.append(cur)
                    cur = [u]
                else:
                    cur = cand
            if cur:
                groups.append(cur)
    else:
        groups = [[u] for u in utts]
    if opts.speaker_prompt_len:
        # build_sequence needs the same entries in every spliced example
        groups = [g for gg in groups for g in ([gg] if len({x in prompts for x in gg}) == 1 else [[x] for x in gg])]

    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    lengths, dropped = [], 0
    with open(tmp / "examples.jsonl", "w") as fe, open(tmp / "lengths.txt", "w") as fl:
        for g in groups:
            parts = [{**content(x), **({"speaker": prompts[x][2]} if x in prompts else {})} for x in g]
            L = sequence_length(opts.task, parts, N)
            if opts.max_len and L > opts.max_len:
                dropped += 1
                continue
            ex = {"id": g[0] if len(g) == 1 else f"{g[0]}+{g[-1]}", "len": L, "utts": g}
            if needs_text:
                ex["text"] = [texts[x] for x in g]
            if any(x in prompts for x in g):
                ex["spk"] = [prompts[x] for x in g]
            fe.write(json.dumps(ex, separators=(",", ":")) + "\n")
            fl.write(f"{ex['id']} {L}\n")
            lengths.append(L)
    if not lengths:
        shutil.rmtree(tmp)
        raise SpliceError(f"every example is longer than max_len={opts.max_len}; nothing to write")
    la = np.array(lengths)
    meta = {
        "format_version": FORMAT_VERSION,
        "task": opts.task,
        "loss_region": opts.loss_region,
        "num_streams": N,
        "vocab_fingerprint": vocab.fingerprint(),
        "tokens_scp": str(Path(tokens_scp).resolve()) if (tokens_scp and (needs_speech or opts.speaker_prompt_len)) else None,
        "num_examples": len(lengths),
        "num_utterances": len(utts),
        "num_dropped": dropped,
        "num_frames": int(la.sum()),
        "length_stats": {
            "min": int(la.min()), "max": int(la.max()), "mean": float(la.mean()),
            "p50": float(np.percentile(la, 50)), "p90": float(np.percentile(la, 90)), "p99": float(np.percentile(la, 99)),
        },
        "options": {"splice_budget": opts.splice_budget, "speaker_prompt_len": opts.speaker_prompt_len, "max_len": opts.max_len, "seed": opts.seed},
    }
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    vocab.save(tmp / "vocab.json")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    log(
        f"[splice] task={opts.task} read {len(utts)} utterances, wrote {len(lengths)} examples "
        f"({meta['num_frames']} frames, {dropped} dropped) to {out_dir} in {time.time() - t0:.1f}s"
    )
    return meta


# ----------------------------------------------------------------- reading
class _LazyExamples(Sequence):
    """``examples[i]`` reads line i of examples.jsonl (by byte offset) when asked."""

    def __init__(self, path: Path, offsets: np.ndarray):
        self.path, self.offsets, self._fh, self._pid = path, offsets, None, None

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, i: int) -> dict:
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        if self._fh is None or self._pid != os.getpid():
            # one handle per process: a handle inherited by forked loader workers would
            # share its file position with the parent
            self._fh, self._pid = open(self.path, "rb"), os.getpid()
        self._fh.seek(int(self.offsets[i]))
        return json.loads(self._fh.readline())

    def __getstate__(self):
        return {"path": self.path, "offsets": self.offsets, "_fh": None, "_pid": None}


class DataDir:
    """A data directory written by :func:`splice`; builds sequences on demand."""

    def __init__(self, path: str | os.PathLike, vocab: JointVocab | None = None, loss_region: str | None = None):
        self.path = Path(path)
        if not (self.path / "meta.json").exists():
            raise SpliceError(f"{self.path}: not a data directory (no meta.json); run the splicing stage (bin/splice)")
        self.meta = json.loads((self.path / "meta.json").read_text())
        if self.meta.get("format_version") != FORMAT_VERSION:
            raise SpliceError(f"{self.path}/meta.json: format_version {self.meta.get('format_version')}, expected {FORMAT_VERSION}")
        own = JointVocab.load(self.path / "vocab.json")
        if vocab is not None:
            vocab.check_matches(own, f"data directory {self.path}")
        self.vocab = vocab or own
        self.task = self.meta["task"]
        self.loss_region = loss_region or self.meta["loss_region"]
        # only byte offsets and lengths stay in memory: paper-scale directories hold
        # millions of examples, and every loader worker would otherwise copy them all
        f = self.path / "examples.jsonl"
        offsets, lengths = [], []
        with open(f, "rb") as fh:
            pos = 0
            for n, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        ex = json.loads(line)
                        lengths.append(int(ex["len"]))
                        ex["id"], ex["utts"]  # noqa: B018 - required keys
                    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                        raise SpliceError(f"{f}:{n}: malformed example ({e!r})") from None
                    offsets.append(pos)
                pos += len(line)
        if not lengths:
            raise SpliceError(f"{f}: no examples")
        self.lengths = np.array(lengths, dtype=np.int64)
        self._offsets = np.array(offsets, dtype=np.int64)
        self.examples = _LazyExamples(f, self._offsets)
        self._scp = None

    def __len__(self) -> int:
        return len(self.examples)

    def _tokens(self, utt: str) -> np.ndarray:
        if self._scp is None:  # opened lazily: once per loader worker process
            import kaldiio

            self._scp = kaldiio.load_scp(self.meta["tokens_scp"])
        try:
            # the dump stores [T, N] frames flattened (Kaldi int32 data are vectors)
            return unflatten_frames(self._scp[utt], self.vocab.num_streams, utt)
        except KeyError:
            raise SpliceError(f"{self.meta['tokens_scp']}: no tokens for utterance {utt!r} (used by {self.path})") from None

    def build(self, i: int):
        """Example ``i`` -> :class:`~espnet2_speechlm.tasks.SplicedSequence`."""
        ex = self.examples[i]
        tmpl = get_task(self.task)
        names = {e.name for e in tmpl.entries}
        parts = []
        for k, u in enumerate(ex["utts"]):
            d = {}
            if "text" in names:
                d["text"] = np.asarray(ex["text"][k], dtype=np.int64)
            if "speech" in names:
                d["speech"] = self._tokens(u)
            if ex.get("spk"):
                o, s, L = ex["spk"][k]
                d["speaker"] = self._tokens(o)[s : s + L]
            parts.append(d)
        seq = build_sequence(self.vocab, self.task, parts, self.loss_region)
        if len(seq) != ex["len"]:
            raise SpliceError(
                f"{self.path}/examples.jsonl: example {ex['id']!r} has {len(seq)} frames, the data directory says {ex['len']} "
                f"(tokens changed since splicing? re-run the splicing stage)"
            )
        return seq
