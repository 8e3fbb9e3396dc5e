"""Task templates: how an example becomes one ``[T, N]`` frame sequence, and back.

A sequence is ``<sos/eos>``, a task marker, then for each entry of the task a
modality start marker, the entry's frames and N-1 all-pad frames; a target
entry closes with ``<sos/eos>`` before its pad frames.  Conditions come
first, targets last.  The pad frames keep the delayed acoustic streams of one
segment from overlapping the next segment's marker (see ``interleave``).

    asr:   <sos/eos> <asr_task>  <codec_ssl> speech... pad*(N-1)  <text_bpe> text... <sos/eos> pad*(N-1)
    tts:   <sos/eos> <plain_tts> <text_bpe> text... pad*(N-1)  <codec_ssl> speech... <sos/eos> pad*(N-1)

Every frame is N global ids: a text or special frame has its id in stream 0
and ``<pad>`` elsewhere; a speech frame is ``[semantic, codebook 0..N-2]``.
Several examples can be spliced into one long sequence (one ``<sos/eos>`` and
task marker, then each example's entries in turn).

Entry values are *local* ids: text entries a 1-D array of the text
tokenizer's ids, speech entries a ``[T, N]`` array of (semantic unit, codec
code per codebook), exactly as the token dump stores them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from .interleave import segment_tail
from .vocab import PAD, SOS_EOS, JointVocab, VocabError

# modality of an entry -> (start marker, kind of tokens)
MODALITIES = {
    "text": ("<text_bpe_start/end>", "text"),
    "audio": ("<codec_ssl_start/end>", "audio"),
    "speaker": ("<spk_start/end>", "audio"),  # speaker prompt: speech frames of the same speaker
}


class SequenceError(ValueError):
    """An example or a frame matrix does not fit its task template."""


@dataclass(frozen=True)
class Entry:
    name: str
    modality: str
    optional: bool = False


@dataclass(frozen=True)
class TaskTemplate:
    name: str
    marker: str
    conditions: tuple[Entry, ...]
    targets: tuple[Entry, ...]
    # marker used when every optional entry is absent (TTS without speaker prompt)
    plain_marker: str | None = None

    @property
    def entries(self) -> tuple[Entry, ...]:
        return self.conditions + self.targets

    def marker_for(self, present: set[str]) -> str:
        missing_optional = any(e.optional and e.name not in present for e in self.entries)
        return self.plain_marker if (missing_optional and self.plain_marker) else self.marker


TASKS: dict[str, TaskTemplate] = {
    "textlm": TaskTemplate("textlm", "<textlm_task>", (), (Entry("text", "text"),)),
    "audiolm": TaskTemplate("audiolm", "<audiolm_task>", (), (Entry("speech", "audio"),)),
    "asr": TaskTemplate("asr", "<asr_task>", (Entry("speech", "audio"),), (Entry("text", "text"),)),
    "tts": TaskTemplate(
        "tts",
        "<tts_task>",
        (Entry("text", "text"), Entry("speaker", "speaker", optional=True)),
        (Entry("speech", "audio"),),
        plain_marker="<plain_tts_task>",
    ),
}


def get_task(name: str) -> TaskTemplate:
    try:
        return TASKS[name]
    except KeyError:
        raise SequenceError(f"unknown task {name!r}; known tasks: {sorted(TASKS)}") from None


def task_of_marker(vocab: JointVocab, marker_id: int) -> TaskTemplate:
    for t in TASKS.values():
        if marker_id in (vocab.special(t.marker), vocab.special(t.plain_marker) if t.plain_marker else None):
            return t
    raise SequenceError(f"token {vocab.token_name(marker_id)} ({marker_id}) is not a task marker")


@dataclass
class Segment:
    """One entry inside a sequence: where it is and what it holds (local ids)."""

    name: str
    modality: str
    tokens: np.ndarray
    is_target: bool
    start: int = 0  # first content frame in the sequence
    end: int = 0  # one past the last content frame


@dataclass
class SplicedSequence:
    task: str
    frames: np.ndarray  # [T, N] int64 global ids
    loss_mask: np.ndarray  # [T] bool: frames whose tokens are predicted in the loss
    prefix_len: int  # frames before the first target content frame (the prompt)
    segments: list[Segment] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.frames)


def _special_frame(vocab: JointVocab, token: int) -> np.ndarray:
    f = np.full((1, vocab.num_streams), PAD, dtype=np.int64)
    f[0, 0] = token
    return f


def entry_frames(vocab: JointVocab, modality: str, tokens) -> np.ndarray:
    """Local tokens of one entry -> ``[T, N]`` global frames (no markers)."""
    kind = MODALITIES[modality][1]
    N = vocab.num_streams
    if kind == "text":
        t = np.asarray(tokens, dtype=np.int64)
        if t.ndim != 1:
            raise SequenceError(f"text entry must be 1-D token ids, got shape {t.shape}")
        size = vocab.block("text").size
        if t.size and (t.min() < 0 or t.max() >= size):
            raise SequenceError(f"text token out of range [0, {size}): min {t.min()}, max {t.max()}")
        f = np.full((len(t), N), PAD, dtype=np.int64)
        f[:, 0] = vocab.text_to_global(t)
        return f
    try:
        return vocab.audio_to_global(tokens)
    except VocabError as e:
        raise SequenceError(str(e)) from None


def build_sequence(
    vocab: JointVocab,
    task: str,
    examples: Mapping[str, object] | Sequence[Mapping[str, object]],
    loss_region: str = "target",
    speaker_prompt_len: int = 0,
) -> SplicedSequence:
    """Build one sequence from one example (a mapping entry name -> local tokens)
    or several spliced examples (a list of such mappings) of the same task.

    ``loss_region``: ``"target"`` puts only target content frames and their
    closing ``<sos/eos>`` in the loss; ``"all"`` puts every frame in it.
    ``speaker_prompt_len`` > 0 lays a speaker prompt out as the released OpusLM
    models were trained: a prompt shorter than that many frames is followed by
    all-pad frames up to it (:func:`speaker_padding`); 0 leaves it as long as it is.
    """
    if loss_region not in ("target", "all"):
        raise SequenceError(f"loss_region must be 'target' or 'all', got {loss_region!r}")
    tmpl = get_task(task)
    if isinstance(examples, Mapping):
        examples = [examples]
    if not examples:
        raise SequenceError("build_sequence: no example given")
    N = vocab.num_streams
    pads = np.full((segment_tail(N), N), PAD, dtype=np.int64)
    first_present = set(examples[0])
    parts = [_special_frame(vocab, SOS_EOS), _special_frame(vocab, vocab.special(tmpl.marker_for(first_present)))]
    mask_parts = [np.zeros(2, dtype=bool)]
    segments: list[Segment] = []
    pos, prefix_len = 2, None
    for ex in examples:
        known = {e.name for e in tmpl.entries}
        unknown = set(ex) - known
        if unknown:
            raise SequenceError(f"task {task!r} has no entries {sorted(unknown)}; its entries are {sorted(known)}")
        if set(ex) != first_present:
            raise SequenceError("spliced examples must all have the same entries")
        for e in tmpl.entries:
            if e.name not in ex:
                if e.optional:
                    continue
                raise SequenceError(f"task {task!r} needs entry {e.name!r}; the example has {sorted(ex)}")
            is_target = e in tmpl.targets
            content = entry_frames(vocab, e.modality, ex[e.name])
            marker = _special_frame(vocab, vocab.special(MODALITIES[e.modality][0]))
            block = [marker, content]
            if is_target:
                block.append(_special_frame(vocab, SOS_EOS))
            block.append(pads)
            extra = speaker_padding(e.name, len(content), speaker_prompt_len)
            if extra:
                block.append(np.full((extra, N), PAD, dtype=np.int64))
            start = pos + 1
            segments.append(Segment(e.name, e.modality, np.asarray(ex[e.name]), is_target, start, start + len(content)))
            if is_target and prefix_len is None:
                prefix_len = start
            m = np.zeros(sum(len(b) for b in block), dtype=bool)
            if is_target:
                m[1 : 1 + len(content) + 1] = True  # content frames and the closing <sos/eos>
            parts.extend(block)
            mask_parts.append(m)
            pos += len(m)
    frames = np.concatenate(parts, axis=0)
    loss_mask = np.concatenate(mask_parts)
    if loss_region == "all":
        loss_mask[:] = True
    return SplicedSequence(task, frames, loss_mask, prefix_len if prefix_len is not None else len(frames), segments)


def speaker_padding(entry: str, content_frames: int, speaker_prompt_len: int) -> int:
    """All-pad frames that follow an entry besides its N-1 tail: for a speaker
    prompt shorter than ``speaker_prompt_len`` (the released models' fixed-length
    prompt: ``<spk> speaker x got | <pad> x (len - got) | <pad> x (N-1)``), none
    for anything else."""
    return max(0, speaker_prompt_len - content_frames) if entry == "speaker" else 0


def entry_length(content_frames: int, is_target: bool, num_streams: int) -> int:
    """Frames one entry occupies in a built sequence: its modality marker, its
    content, the closing ``<sos/eos>`` of a target, the all-pad tail."""
    return 1 + content_frames + (1 if is_target else 0) + segment_tail(num_streams)


def sequence_length(task: str, parts: Sequence[Mapping[str, int]], num_streams: int, speaker_prompt_len: int = 0) -> int:
    """Frames of ``build_sequence(vocab, task, examples, speaker_prompt_len=...)``
    computed from the entries' content lengths alone (``parts``: one mapping
    entry name -> content frames per spliced example), so that a splicing stage
    can plan without reading any token."""
    tmpl = get_task(task)
    total = 2  # <sos/eos> and the task marker
    for p in parts:
        for e in tmpl.entries:
            if e.name in p:
                total += entry_length(p[e.name], e in tmpl.targets, num_streams)
                total += speaker_padding(e.name, p[e.name], speaker_prompt_len)
    return total


def build_prompt(vocab: JointVocab, task: str, conditions: Mapping[str, object], speaker_prompt_len: int = 0) -> np.ndarray:
    """The frames a model is given to generate the task's (single) target:
    everything up to and including the target's start marker."""
    tmpl = get_task(task)
    dummy = {}
    for e in tmpl.targets:
        kind = MODALITIES[e.modality][1]
        dummy[e.name] = np.zeros(0, dtype=np.int64) if kind == "text" else np.zeros((0, vocab.num_streams), dtype=np.int64)
    seq = build_sequence(vocab, task, {**conditions, **dummy}, speaker_prompt_len=speaker_prompt_len)
    return seq.frames[: seq.prefix_len]


def _is_pad_frame(frame: np.ndarray) -> bool:
    return bool((frame == PAD).all())


def parse_sequence(vocab: JointVocab, frames: np.ndarray) -> tuple[str, list[Segment]]:
    """Inverse of :func:`build_sequence`: ``[T, N]`` global ids -> (task, segments).

    Entry names come from the task template, cycling through its entries for
    spliced sequences; a segment that ends with ``<sos/eos>`` is a target.
    """
    frames = np.asarray(frames)
    T = len(frames)
    if T < 2 or frames[0, 0] != SOS_EOS:
        raise SequenceError("a sequence must start with <sos/eos> and a task marker")
    tmpl = task_of_marker(vocab, int(frames[1, 0]))
    marker_to_mod = {vocab.special(m): mod for mod, (m, _) in MODALITIES.items()}
    segments: list[Segment] = []
    expected = [e for e in tmpl.entries if not (e.optional and frames[1, 0] == vocab.special(tmpl.plain_marker or ""))]
    i = 2
    while i < T:
        if _is_pad_frame(frames[i]):
            i += 1
            continue
        tok = int(frames[i, 0])
        if tok not in marker_to_mod:
            raise SequenceError(f"frame {i}: expected a modality marker, found {vocab.token_name(tok)}")
        modality = marker_to_mod[tok]
        j = i + 1
        # a content frame has a non-special id in stream 0, or codes in the other streams
        # (a speech frame whose semantic unit 0 is written as <pad>, see JointVocab.semantic0_is_pad)
        while j < T and (frames[j, 0] >= 256 or (frames[j, 1:] != PAD).any()):
            j += 1
        content = frames[i + 1 : j]
        is_target = j < T and frames[j, 0] == SOS_EOS
        if MODALITIES[modality][1] == "text":
            if (content[:, 1:] != PAD).any():
                raise SequenceError(f"frames {i + 1}..{j}: text frames must have <pad> in streams >= 1")
            tokens = vocab.text_to_local(content[:, 0])
        else:
            tokens = vocab.audio_to_local(content)
        e = expected[len(segments) % len(expected)] if expected else Entry(modality, modality)
        segments.append(Segment(e.name, modality, tokens, is_target, i + 1, j))
        i = j + (1 if is_target else 0)
    return tmpl.name, segments


def parse_generated(vocab: JointVocab, frames: np.ndarray, modality: str) -> tuple[np.ndarray, bool]:
    """Generated target frames (after the prompt) -> (local tokens, ended with <sos/eos>)."""
    frames = np.asarray(frames)
    ends = np.nonzero(frames[:, 0] == SOS_EOS)[0]
    stop = int(ends[0]) if len(ends) else len(frames)
    content = frames[:stop]
    if MODALITIES[modality][1] == "text":
        return vocab.text_to_local(content[:, 0]), bool(len(ends))
    return vocab.audio_to_local(content), bool(len(ends))


def format_sequence(vocab: JointVocab, seq: SplicedSequence, text_pieces: Sequence[str] | None = None, max_frames: int | None = None) -> str:
    """Human-readable listing: one line per frame, token names per stream."""
    lines = [f"task={seq.task} frames={len(seq.frames)} prefix_len={seq.prefix_len} loss_frames={int(seq.loss_mask.sum())}"]
    rows = seq.frames if max_frames is None else seq.frames[:max_frames]
    for t, frame in enumerate(rows):
        mark = "L" if seq.loss_mask[t] else " "
        names = [vocab.token_name(x, text_pieces) for x in frame]
        if all(x == PAD for x in frame[1:]):
            names = names[:1] + (["<pad> x%d" % (len(frame) - 1)] if len(frame) > 1 else [])
        lines.append(f"{t:5d} {mark} " + " ".join(names))
    if max_frames is not None and len(seq.frames) > max_frames:
        lines.append(f"... ({len(seq.frames) - max_frames} more frames)")
    return "\n".join(lines)
