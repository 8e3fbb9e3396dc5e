"""Task-sequence splicing stage: dumped tokens + transcripts -> a data directory the trainer reads.

The directory's layout, and its reader, are in :mod:`.datadir`.

Long-form examples (``splice_budget`` > 0): utterances of one speaker (or
recording, with ``--utt2spk`` pointing to segments-style groupings) are
concatenated in utterance-id order into one sequence via
:func:`espnet2_speechlm.tasks.build_sequence` with a list of examples, as
long as the spliced sequence stays within the budget in frames.

Lengths are computed from utt2num_frames and the text ids alone
(:func:`espnet2_speechlm.tasks.sequence_length`, the layout ``build_sequence``
produces), so splicing never reads the speech tokens themselves;
:meth:`DataDir.build` checks them when reading.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Protocol

import numpy as np

from ..tasks import MODALITIES, get_task, sequence_length
from ..vocab import JointVocab
from .datadir import FORMAT_VERSION, SpliceError


class TextEncoder(Protocol):
    def encode(self, text: str) -> list[int]: ...


# ----------------------------------------------------------------- readers
def read_kaldi_map(path: str | os.PathLike, what: str, value: Callable[[str, str, int], object] = lambda v, p, n: v) -> dict:
    """``utt value...`` per line -> dict; duplicate ids and empty lines are errors naming file:line."""
    path = Path(path)
    if not path.exists():
        raise SpliceError(f"{what} file not found: {path}")
    from ..tokenizers.audio import open_utf8  # bytes that are not UTF-8: an error naming the line

    out: dict = {}
    with open_utf8(path, SpliceError) as f:
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
    # pad a shorter speaker prompt with all-pad frames up to speaker_prompt_len, the
    # layout the released OpusLM models were trained with (tasks.speaker_padding)
    speaker_prompt_pad: bool = False

    @property
    def speaker_pad_len(self) -> int:
        return self.speaker_prompt_len if self.speaker_prompt_pad else 0


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
    """Write a data directory (see :mod:`.datadir`); returns its meta."""
    t0 = time.time()
    vocab = JointVocab.load(vocab_path)
    tmpl = get_task(opts.task)
    names = {e.name for e in tmpl.entries}
    needs_speech = any(MODALITIES[e.modality][1] == "audio" and not e.optional for e in tmpl.entries)
    if opts.loss_region not in ("target", "all"):
        raise SpliceError(f"loss_region must be 'target' or 'all', got {opts.loss_region!r}")
    if opts.speaker_prompt_len and "speaker" not in names:
        raise SpliceError(f"task {opts.task!r} has no speaker prompt entry; speaker_prompt_len must be 0")
    if opts.speaker_prompt_pad and not opts.speaker_prompt_len:
        raise SpliceError("speaker_prompt_pad needs speaker_prompt_len > 0 (the length to pad a speaker prompt to)")

    # inputs: frames per utterance, text ids per utterance, speaker per utterance
    nframes = _read_frame_counts(opts, tokens_scp, utt2num_frames) if needs_speech or opts.speaker_prompt_len else {}
    texts = _read_texts(opts, text, tokenizer, vocab, vocab_path) if "text" in names else {}
    skip = set(skip)
    if skip:  # utterances the dump stage skipped (bad audio): leave them out everywhere
        nframes = {u: v for u, v in nframes.items() if u not in skip}
        texts = {u: v for u, v in texts.items() if u not in skip}
        log(f"[splice] leaving out {len(skip)} utterances skipped by the token dump")
    if needs_speech and "text" in names:
        _check_same_ids(nframes, texts, utt2num_frames, text)
    utts = sorted(texts if "text" in names else nframes)
    if not utts:
        raise SpliceError(f"no utterances for task {opts.task!r} (inputs: {tokens_scp or ''} {text or ''})")
    spk_of: dict[str, str] = {}
    if utt2spk is not None:
        spk_of = read_kaldi_map(utt2spk, "utt2spk", lambda v, p, n: v.strip())
    elif opts.splice_budget or opts.speaker_prompt_len:
        raise SpliceError("splice_budget and speaker_prompt_len need utt2spk (utterances of one speaker/recording)")

    # examples: speaker prompts, then utterances grouped up to the budget
    prompts = _speaker_prompts(utts, nframes, spk_of, opts) if opts.speaker_prompt_len else {}

    def length(group: list[str]) -> int:
        """Frames of the sequence built from a group, from the entries' content lengths alone."""
        parts = []
        for u in group:
            d = {k: v for k, v in (("text", len(texts.get(u, ()))), ("speech", nframes.get(u, 0))) if k in names}
            if u in prompts:
                d["speaker"] = prompts[u][2]
            parts.append(d)
        return sequence_length(opts.task, parts, vocab.num_streams, opts.speaker_pad_len)

    groups = _group(utts, spk_of, opts, length)
    out_dir = Path(out_dir)
    lengths, dropped = _write_examples(out_dir, groups, opts, texts if "text" in names else None, prompts, length)
    tokens = str(Path(tokens_scp).resolve()) if (tokens_scp and (needs_speech or opts.speaker_prompt_len)) else None
    meta = _meta(opts, vocab, tokens, lengths, len(utts), dropped)
    _finish_dir(out_dir, meta, vocab)
    log(
        f"[splice] task={opts.task} read {len(utts)} utterances, wrote {len(lengths)} examples "
        f"({meta['num_frames']} frames, {dropped} dropped) to {out_dir} in {time.time() - t0:.1f}s"
    )
    return meta


def _read_frame_counts(opts: SpliceOptions, tokens_scp, utt2num_frames) -> dict[str, int]:
    if tokens_scp is None or utt2num_frames is None:
        raise SpliceError(f"task {opts.task!r} needs speech tokens: give tokens_scp and utt2num_frames")
    if not Path(tokens_scp).exists():
        raise SpliceError(f"tokens scp not found: {tokens_scp}")
    nframes = read_kaldi_map(utt2num_frames, "utt2num_frames", _int_value)
    scp_ids = read_kaldi_map(tokens_scp, "tokens scp")
    missing = [u for u in nframes if u not in scp_ids]
    if missing:
        raise SpliceError(f"{utt2num_frames}: {len(missing)} utterances have no tokens in {tokens_scp}, e.g. {missing[:3]}")
    return nframes


def _read_texts(opts: SpliceOptions, text, tokenizer, vocab: JointVocab, vocab_path) -> dict[str, list[int]]:
    if text is None or tokenizer is None:
        raise SpliceError(f"task {opts.task!r} needs a text file and a text tokenizer")
    tsize = vocab.block("text").size
    texts = {}
    for u, (s, p, n) in read_kaldi_map(text, "text", lambda v, p, n: (v, p, n)).items():
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
    return texts


def _check_same_ids(nframes: dict, texts: dict, utt2num_frames, text) -> None:
    only_s = sorted(set(nframes) - set(texts))
    only_t = sorted(set(texts) - set(nframes))
    if only_s or only_t:
        raise SpliceError(
            f"utterance ids do not match: {len(only_s)} in {utt2num_frames} but not in {text} (e.g. {only_s[:3]}), "
            f"{len(only_t)} in {text} but not in {utt2num_frames} (e.g. {only_t[:3]})"
        )


def _speaker_prompts(utts: list[str], nframes: dict[str, int], spk_of: dict[str, str], opts: SpliceOptions) -> dict[str, list]:
    """For each utterance, a window ``[utt, start, length]`` of another
    utterance of its speaker (none for a speaker's only utterance)."""
    by_spk: dict[str, list[str]] = {}
    for u in sorted(nframes):
        by_spk.setdefault(spk_of.get(u, u), []).append(u)
    prompts = {}
    for u in utts:
        others = [o for o in by_spk.get(spk_of.get(u, u), []) if o != u]
        if not others:
            continue
        rng = np.random.default_rng([opts.seed, zlib.crc32(u.encode())])
        o = others[int(rng.integers(len(others)))]
        L = min(opts.speaker_prompt_len, nframes[o])
        start = int(rng.integers(0, nframes[o] - L + 1))
        prompts[u] = [o, start, L]
    return prompts


def _group(utts: list[str], spk_of: dict[str, str], opts: SpliceOptions, length: Callable[[list[str]], int]) -> list[list[str]]:
    """Utterances -> examples: one each, or (``splice_budget``) consecutive
    utterances of one speaker while the spliced sequence fits the budget."""
    if not opts.splice_budget:
        return [[u] for u in utts]
    by_spk: dict[str, list[str]] = {}
    for u in utts:
        by_spk.setdefault(spk_of.get(u, u), []).append(u)
    groups: list[list[str]] = []
    for spk in sorted(by_spk):
        cur: list[str] = []
        for u in by_spk[spk]:
            if cur and length(cur + [u]) > opts.splice_budget:
                groups.append(cur)
                cur = [u]
            else:
                cur = cur + [u]
        if cur:
            groups.append(cur)
    return groups


def _write_examples(out_dir: Path, groups, opts: SpliceOptions, texts, prompts, length) -> tuple[list[int], int]:
    """examples.jsonl and lengths.txt into ``out_dir.tmp`` (made afresh); returns (lengths, number dropped)."""
    if opts.speaker_prompt_len:
        # build_sequence needs the same entries in every spliced example
        groups = [g for gg in groups for g in ([gg] if len({x in prompts for x in gg}) == 1 else [[x] for x in gg])]
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    lengths, dropped = [], 0
    with open(tmp / "examples.jsonl", "w") as fe, open(tmp / "lengths.txt", "w") as fl:
        for g in groups:
            L = length(g)
            if opts.max_len and L > opts.max_len:
                dropped += 1
                continue
            ex = {"id": g[0] if len(g) == 1 else f"{g[0]}+{g[-1]}", "len": L, "utts": g}
            if texts is not None:
                ex["text"] = [texts[x] for x in g]
            if any(x in prompts for x in g):
                ex["spk"] = [prompts[x] for x in g]
            fe.write(json.dumps(ex, separators=(",", ":")) + "\n")
            fl.write(f"{ex['id']} {L}\n")
            lengths.append(L)
    if not lengths:
        shutil.rmtree(tmp)
        raise SpliceError(f"every example is longer than max_len={opts.max_len}; nothing to write")
    return lengths, dropped


def _meta(opts: SpliceOptions, vocab: JointVocab, tokens_scp, lengths: list[int], num_utts: int, dropped: int) -> dict:
    la = np.array(lengths)
    return {
        "format_version": FORMAT_VERSION,
        "task": opts.task,
        "loss_region": opts.loss_region,
        "num_streams": vocab.num_streams,
        "vocab_fingerprint": vocab.fingerprint(),
        "tokens_scp": tokens_scp,
        "num_examples": len(lengths),
        "num_utterances": num_utts,
        "num_dropped": dropped,
        "num_frames": int(la.sum()),
        "length_stats": {
            "min": int(la.min()), "max": int(la.max()), "mean": float(la.mean()),
            "p50": float(np.percentile(la, 50)), "p90": float(np.percentile(la, 90)), "p99": float(np.percentile(la, 99)),
        },
        "options": {
            "splice_budget": opts.splice_budget, "speaker_prompt_len": opts.speaker_prompt_len,
            "speaker_prompt_pad": opts.speaker_prompt_pad, "max_len": opts.max_len, "seed": opts.seed,
        },
    }


def _finish_dir(out_dir: Path, meta: dict, vocab: JointVocab) -> None:
    """meta.json and vocab.json into ``out_dir.tmp``, then it replaces ``out_dir``."""
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    vocab.save(tmp / "vocab.json")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
