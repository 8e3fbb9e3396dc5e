"""Data directories: what the splicing stage writes and the trainer reads.

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

Lengths are checked when an example is built: a data directory whose
tokens changed since splicing is refused with the example named.  The
splicing stage that writes these directories is :mod:`.splice`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ..tasks import build_sequence, get_task
from ..tokenizers.token_io import unflatten_frames
from ..vocab import JointVocab

FORMAT_VERSION = 1


class SpliceError(ValueError):
    """Bad input to the splicing stage or a malformed data directory."""


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
        opts = self.meta.get("options", {})
        self.speaker_pad_len = int(opts.get("speaker_prompt_len", 0)) if opts.get("speaker_prompt_pad") else 0
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
        seq = build_sequence(self.vocab, self.task, parts, self.loss_region, self.speaker_pad_len)
        if len(seq) != ex["len"]:
            raise SpliceError(
                f"{self.path}/examples.jsonl: example {ex['id']!r} has {len(seq)} frames, the data directory says {ex['len']} "
                f"(tokens changed since splicing? re-run the splicing stage)"
            )
        return seq
