"""Word and character error rates with Levenshtein alignments.

Quick use (lists of sentences, index-aligned)::

    from espnet2_speechlm.score.wer import word_error_rate, char_error_rate
    word_error_rate(["the cat sat"], ["the bat sat"])
    # {'wer': 33.33, 'errors': 1, 'ref_words': 3, 'hyp_words': 3, 'cor': 2, 'sub': 1, 'del': 0,
    #  'ins': 0, 'num_utts': 1}

Rates are in percent.  Texts are normalised with
:func:`espnet2_speechlm.score.text_norm.normalize_english` unless
``normalize=False`` (then only whitespace is collapsed).

Definitions:

* Alignment: a minimum-edit-distance alignment (unit costs).  Among the
  alignments with the least edits, the back-trace prefers a match or
  substitution, then a deletion, then an insertion, so counts are
  reproducible; the total number of errors is the same for any tie-break.
* WER = (S + D + I) / N * 100 with N the number of reference words, summed
  over utterances before dividing (a corpus WER, not a mean of per-utterance
  rates).
* CER is the same on characters of the normalised text, the single space
  between words included (an inserted or dropped word boundary is an
  error, as in ESPnet's character scoring).
* Empty reference: every hypothesis word is an insertion.  The utterance
  adds its insertions to the corpus errors and nothing to N.  Its own rate
  is 0 when the hypothesis is empty too and undefined otherwise (``inf``
  here; ``null`` in JSON).  The same rule gives the corpus rate when all
  references are empty.  An empty hypothesis against a non-empty reference
  is all deletions (100 %).

Kaldi-style ``text`` files (``uttid word word ...``) are read with
:func:`read_text`; bad input raises :class:`ScoringInputError` whose message
starts with ``FILE:LINE:``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from espnet2_speechlm.score.text_norm import normalize_english

__all__ = [
    "ScoringInputError",
    "ErrorCounts",
    "UttScore",
    "CorpusScore",
    "align",
    "error_rate",
    "word_error_rate",
    "char_error_rate",
    "score_corpus",
    "score_texts",
    "read_text",
    "match_ids",
    "write_alignments",
]


class ScoringInputError(ValueError):
    """Bad scoring input; the message names the file (and line when known)."""


# ---------------------------------------------------------------- alignment


def error_rate(errors: int, n_ref: int) -> float:
    """Percent error rate; see the module docstring for n_ref == 0."""
    if n_ref > 0:
        return 100.0 * errors / n_ref
    return 0.0 if errors == 0 else math.inf


@dataclass
class ErrorCounts:
    """Counts of one alignment (or a sum of alignments)."""

    ref: int = 0  # N: reference tokens
    hyp: int = 0
    cor: int = 0
    sub: int = 0
    dele: int = 0  # "del" is a Python keyword
    ins: int = 0

    @property
    def errors(self) -> int:
        return self.sub + self.dele + self.ins

    @property
    def rate(self) -> float:
        return error_rate(self.errors, self.ref)

    def __add__(self, other: "ErrorCounts") -> "ErrorCounts":
        return ErrorCounts(
            self.ref + other.ref,
            self.hyp + other.hyp,
            self.cor + other.cor,
            self.sub + other.sub,
            self.dele + other.dele,
            self.ins + other.ins,
        )

    def as_dict(self) -> dict:
        return {
            "errors": self.errors,
            "ref": self.ref,
            "hyp": self.hyp,
            "cor": self.cor,
            "sub": self.sub,
            "del": self.dele,
            "ins": self.ins,
            "rate": self.rate,
        }


def align(ref: Sequence[str], hyp: Sequence[str]) -> list[tuple[str, str | None, str | None]]:
    """Levenshtein alignment of two token sequences.

    Returns ``(op, ref_token, hyp_token)`` triples with op one of
    ``"C"`` (correct), ``"S"``, ``"D"`` (ref token, hyp None), ``"I"``
    (ref None, hyp token).
    """
    n, m = len(ref), len(hyp)
    if n == 0:
        return [("I", None, h) for h in hyp]
    if m == 0:
        return [("D", r, None) for r in ref]
    vocab: dict[str, int] = {}
    r_ids = np.array([vocab.setdefault(t, len(vocab)) for t in ref], dtype=np.int64)
    h_ids = np.array([vocab.setdefault(t, len(vocab)) for t in hyp], dtype=np.int64)
    # Row-by-row DP in numpy.  The insertion term depends on the same row;
    # min_k (tmp[k] + j - k) is a running minimum of tmp[k] - k, plus j.
    cost = np.empty((n + 1, m + 1), dtype=np.int32)
    cost[0] = np.arange(m + 1)
    cols = np.arange(m + 1, dtype=np.int32)
    for i in range(1, n + 1):
        prev = cost[i - 1]
        tmp = np.empty(m + 1, dtype=np.int32)
        tmp[0] = i
        diag = prev[:-1] + (h_ids != r_ids[i - 1])
        tmp[1:] = np.minimum(diag, prev[1:] + 1)
        cost[i] = np.minimum.accumulate(tmp - cols) + cols
    out = []
    i, j = n, m
    while i > 0 or j > 0:
        if i > 0 and j > 0:
            same = ref[i - 1] == hyp[j - 1]
            if cost[i, j] == cost[i - 1, j - 1] + (0 if same else 1):
                out.append(("C" if same else "S", ref[i - 1], hyp[j - 1]))
                i, j = i - 1, j - 1
                continue
        if i > 0 and cost[i, j] == cost[i - 1, j] + 1:
            out.append(("D", ref[i - 1], None))
            i -= 1
        else:
            out.append(("I", None, hyp[j - 1]))
            j -= 1
    out.reverse()
    return out


def count(alignment: Iterable[tuple[str, str | None, str | None]]) -> ErrorCounts:
    c = ErrorCounts()
    for op, r, h in alignment:
        c.ref += r is not None
        c.hyp += h is not None
        if op == "C":
            c.cor += 1
        elif op == "S":
            c.sub += 1
        elif op == "D":
            c.dele += 1
        elif op == "I":
            c.ins += 1
        else:
            raise ValueError(f"unknown alignment op {op!r}")
    return c


# ---------------------------------------------------------------- scoring


@dataclass
class UttScore:
    uttid: str
    ref: str  # the scored (normalised) text
    hyp: str
    words: ErrorCounts
    chars: ErrorCounts
    alignment: list = field(default_factory=list, repr=False)  # word alignment

    def as_dict(self) -> dict:
        return {
            "uttid": self.uttid,
            "ref": self.ref,
            "hyp": self.hyp,
            "words": self.words.as_dict(),
            "chars": self.chars.as_dict(),
        }


@dataclass
class CorpusScore:
    utts: list[UttScore]
    words: ErrorCounts
    chars: ErrorCounts
    normalized: bool

    @property
    def wer(self) -> float:
        return self.words.rate

    @property
    def cer(self) -> float:
        return self.chars.rate

    def totals(self) -> dict:
        return {
            "num_utts": len(self.utts),
            "normalized": self.normalized,
            "wer": self.wer,
            "cer": self.cer,
            "words": self.words.as_dict(),
            "chars": self.chars.as_dict(),
        }


def _prepare(text: str, normalize: bool | Callable[[str], str]) -> str:
    if callable(normalize):
        return " ".join(normalize(text).split())
    if normalize:
        return normalize_english(text)
    return " ".join(text.split())


def score_texts(
    uttids: Sequence[str],
    refs: Sequence[str],
    hyps: Sequence[str],
    normalize: bool | Callable[[str], str] = True,
) -> CorpusScore:
    """Score index-aligned lists; ``normalize`` may be a custom function."""
    if not (len(uttids) == len(refs) == len(hyps)):
        raise ValueError(f"got {len(uttids)} ids, {len(refs)} references and {len(hyps)} hypotheses")
    utts = []
    tot_w, tot_c = ErrorCounts(), ErrorCounts()
    for uid, r, h in zip(uttids, refs, hyps):
        r, h = _prepare(r, normalize), _prepare(h, normalize)
        w_ali = align(r.split(), h.split())
        w = count(w_ali)
        c = count(align(list(r), list(h)))
        utts.append(UttScore(uid, r, h, w, c, w_ali))
        tot_w, tot_c = tot_w + w, tot_c + c
    return CorpusScore(utts, tot_w, tot_c, normalized=bool(normalize))


def _summary(counts: ErrorCounts, key: str, n_key: str, num_utts: int) -> dict:
    return {
        key: counts.rate,
        "errors": counts.errors,
        n_key: counts.ref,
        "hyp_" + n_key.split("_", 1)[1]: counts.hyp,
        "cor": counts.cor,
        "sub": counts.sub,
        "del": counts.dele,
        "ins": counts.ins,
        "num_utts": num_utts,
    }


def word_error_rate(refs: Sequence[str], hyps: Sequence[str], normalize: bool | Callable[[str], str] = True) -> dict:
    """Corpus WER of index-aligned sentence lists.

    Returns ``{"wer": percent, "errors", "ref_words", "hyp_words", "cor",
    "sub", "del", "ins", "num_utts"}``.  Stable API (used by benchmarks).
    """
    s = score_texts([str(i) for i in range(len(refs))], refs, hyps, normalize)
    return _summary(s.words, "wer", "ref_words", len(refs))


def char_error_rate(refs: Sequence[str], hyps: Sequence[str], normalize: bool | Callable[[str], str] = True) -> dict:
    """Corpus CER; same keys as :func:`word_error_rate` with ``cer``,
    ``ref_chars`` and ``hyp_chars``."""
    s = score_texts([str(i) for i in range(len(refs))], refs, hyps, normalize)
    return _summary(s.chars, "cer", "ref_chars", len(refs))


# ---------------------------------------------------------------- files


def read_text(path: str | os.PathLike) -> dict[str, str]:
    """Read a Kaldi ``text`` file: one ``uttid transcript`` per line.

    A line with only an id is an empty transcript.  Blank lines, lines that
    start with whitespace, duplicate ids and undecodable bytes are errors.
    Returns an insertion-ordered dict.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ScoringInputError(f"{path}: no such file (expected a Kaldi text file: 'uttid transcript' per line)")
    out: dict[str, str] = {}
    first_line: dict[str, int] = {}
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ScoringInputError(f"{path}:{lineno}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
            line = line.rstrip("\r\n")
            if lineno == 1:
                line = line.lstrip("\ufeff")
            if not line.strip():
                raise ScoringInputError(f"{path}:{lineno}: empty line (expected 'uttid transcript')")
            if line[0].isspace():
                raise ScoringInputError(f"{path}:{lineno}: line starts with whitespace, so it has no utterance id")
            parts = line.split(maxsplit=1)
            uid = parts[0]
            if uid in out:
                raise ScoringInputError(
                    f"{path}:{lineno}: duplicate utterance id {uid!r} (first on line {first_line[uid]})"
                )
            out[uid] = parts[1].strip() if len(parts) > 1 else ""
            first_line[uid] = lineno
    if not out:
        raise ScoringInputError(f"{path}: file is empty (no utterances)")
    return out


def match_ids(
    ref: Mapping[str, object],
    hyp: Mapping[str, object],
    ref_name: str = "ref",
    hyp_name: str = "hyp",
    allow_missing_hyp: bool = False,
) -> tuple[list[str], list[str]]:
    """Check that ids agree; returns (ids in reference order, ids missing in hyp).

    Ids in the hypothesis that the reference lacks are always an error (it
    cannot be scored).  Ids missing from the hypothesis are an error unless
    ``allow_missing_hyp`` (the caller then scores them as empty hypotheses,
    i.e. all deletions, which is the honest count for a failed decode).
    """
    extra = [k for k in hyp if k not in ref]
    missing = [k for k in ref if k not in hyp]

    def show(ids: list[str]) -> str:
        return ", ".join(repr(i) for i in ids[:5]) + (f" ... ({len(ids)} in all)" if len(ids) > 5 else "")

    if extra:
        raise ScoringInputError(f"{hyp_name}: {len(extra)} utterance id(s) not in {ref_name}: {show(extra)}")
    if missing and not allow_missing_hyp:
        raise ScoringInputError(
            f"{hyp_name}: {len(missing)} utterance id(s) of {ref_name} are missing: {show(missing)} "
            "(pass --allow_missing_hyp to score them as empty hypotheses)"
        )
    return list(ref), missing


def score_corpus(
    ref: Mapping[str, str],
    hyp: Mapping[str, str],
    normalize: bool | Callable[[str], str] = True,
    ref_name: str = "ref",
    hyp_name: str = "hyp",
    allow_missing_hyp: bool = False,
) -> CorpusScore:
    """Score id-keyed references and hypotheses (e.g. from :func:`read_text`)."""
    ids, _ = match_ids(ref, hyp, ref_name, hyp_name, allow_missing_hyp)
    return score_texts(ids, [ref[k] for k in ids], [hyp.get(k, "") for k in ids], normalize)


def _fmt_rate(rate: float) -> str:
    return "n/a" if math.isinf(rate) else f"{rate:.2f}%"


def format_alignment(u: UttScore) -> str:
    """sclite-like block: REF/HYP/EVAL rows, '***' for a gap, then scores."""
    rr, hh, ee = [], [], []
    for op, r, h in u.alignment:
        r = r if r is not None else "*" * len(h)
        h = h if h is not None else "*" * len(r)
        if op != "C":
            r, h = r.upper(), h.upper()
        width = max(len(r), len(h), 1)
        rr.append(r.ljust(width))
        hh.append(h.ljust(width))
        ee.append(("" if op == "C" else op).ljust(width))
    w = u.words
    return (
        f"id: {u.uttid}\n"
        f"REF:  {' '.join(rr).rstrip()}\n"
        f"HYP:  {' '.join(hh).rstrip()}\n"
        f"EVAL: {' '.join(ee).rstrip()}\n"
        f"Scores: (#C #S #D #I) {w.cor} {w.sub} {w.dele} {w.ins}  "
        f"WER {_fmt_rate(w.rate)} ({w.errors} / {w.ref})  CER {_fmt_rate(u.chars.rate)}\n"
    )


def write_alignments(path: str | os.PathLike, score: CorpusScore) -> None:
    """Per-utterance alignments followed by the totals (written atomically)."""
    from espnet2_speechlm.score.results import atomic_write_text

    blocks = [format_alignment(u) for u in score.utts]
    w, c = score.words, score.chars
    blocks.append(
        f"TOTAL: {len(score.utts)} utterances, normalized={score.normalized}\n"
        f"WER {_fmt_rate(w.rate)} [ {w.errors} / {w.ref}, {w.sub} sub, {w.dele} del, {w.ins} ins ]\n"
        f"CER {_fmt_rate(c.rate)} [ {c.errors} / {c.ref}, {c.sub} sub, {c.dele} del, {c.ins} ins ]\n"
    )
    atomic_write_text(path, "\n".join(blocks))
