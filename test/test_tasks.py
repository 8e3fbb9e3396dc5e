import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from espnet2_speechlm.interleave import delay
from espnet2_speechlm.tasks import (
    SequenceError,
    build_prompt,
    build_sequence,
    format_sequence,
    parse_generated,
    parse_sequence,
    sequence_length,
)
from espnet2_speechlm.vocab import PAD, SOS_EOS, JointVocab

V = JointVocab.build({"semantic": 50, "acoustic": 8 * 16, "text": 100}, num_codebooks=8)
N = V.num_streams


def text_tokens(min_size=0):
    return st.lists(st.integers(0, 99), min_size=min_size, max_size=12).map(lambda x: np.array(x, dtype=np.int64))


def audio_tokens(min_size=0):
    return st.integers(min_size, 10).flatmap(
        lambda T: st.tuples(
            st.lists(st.integers(0, 49), min_size=T, max_size=T),
            st.lists(st.lists(st.integers(0, 15), min_size=8, max_size=8), min_size=T, max_size=T),
        ).map(lambda x: np.concatenate([np.array(x[0], dtype=np.int64).reshape(-1, 1), np.array(x[1], dtype=np.int64).reshape(-1, 8)], 1))
    )


@st.composite
def examples(draw):
    task = draw(st.sampled_from(["textlm", "audiolm", "asr", "tts", "tts_spk"]))
    n = draw(st.integers(1, 3))
    exs = []
    for _ in range(n):
        if task == "textlm":
            exs.append({"text": draw(text_tokens())})
        elif task == "audiolm":
            exs.append({"speech": draw(audio_tokens())})
        elif task == "asr":
            exs.append({"speech": draw(audio_tokens()), "text": draw(text_tokens())})
        elif task == "tts":
            exs.append({"text": draw(text_tokens()), "speech": draw(audio_tokens())})
        else:
            exs.append({"text": draw(text_tokens()), "speaker": draw(audio_tokens()), "speech": draw(audio_tokens())})
    return ("tts" if task == "tts_spk" else task), exs


@given(examples(), st.sampled_from(["target", "all"]))
def test_splice_then_parse_gives_back_the_segments(ex, region):
    task, exs = ex
    seq = build_sequence(V, task, exs, loss_region=region)
    assert seq.frames.shape[1] == N and len(seq.loss_mask) == len(seq.frames)
    parsed_task, segments = parse_sequence(V, seq.frames)
    assert parsed_task == task
    expected = [(name, ex[name]) for ex in exs for name in ex_order(task, ex)]
    assert [s.name for s in segments] == [n for n, _ in expected]
    for seg, (name, tokens) in zip(segments, expected):
        np.testing.assert_array_equal(seg.tokens, tokens)
    # segment positions recorded at build time agree with the parse
    assert [(s.start, s.end) for s in segments] == [(s.start, s.end) for s in seq.segments]


def ex_order(task, ex):
    order = {"textlm": ["text"], "audiolm": ["speech"], "asr": ["speech", "text"], "tts": ["text", "speaker", "speech"]}[task]
    return [n for n in order if n in ex]


@given(examples())
def test_every_segment_ends_with_n_minus_1_pad_frames(ex):
    # the delayed acoustic streams of a segment must not overlap the next marker
    task, exs = ex
    seq = build_sequence(V, task, exs)
    for seg in seq.segments:
        end = seg.end + (1 if seg.is_target else 0)
        assert (seq.frames[end : end + N - 1] == PAD).all()
    d = delay(seq.frames, PAD)
    markers = np.nonzero(np.isin(seq.frames[:, 0], [34, 35, 37]))[0]
    for t in markers:  # at a modality marker's step no stream holds anything but the marker
        assert (d[t, 1:] == PAD).all()


@given(examples())
def test_sequence_length_is_the_built_length(ex):
    """The splicing stage plans with ``sequence_length`` and never builds: both must agree."""
    task, exs = ex
    parts = [{k: len(v) for k, v in e.items()} for e in exs]
    assert sequence_length(task, parts, N) == len(build_sequence(V, task, exs))


@given(examples(), st.integers(0, 15))
def test_speaker_prompts_padded_to_a_fixed_length(ex, pad_to):
    """The released models' layout: a speaker prompt shorter than ``pad_to`` is
    followed by pad frames up to it; lengths still agree and the parse ignores them."""
    task, exs = ex
    seq = build_sequence(V, task, exs, speaker_prompt_len=pad_to)
    parts = [{k: len(v) for k, v in e.items()} for e in exs]
    assert sequence_length(task, parts, N, speaker_prompt_len=pad_to) == len(seq)
    plain = build_sequence(V, task, exs)
    extra = sum(max(0, pad_to - len(e["speaker"])) for e in exs if "speaker" in e)
    assert len(seq) == len(plain) + extra
    _, segments = parse_sequence(V, seq.frames)
    assert [(s.name, s.tokens.tolist()) for s in segments] == [(s.name, s.tokens.tolist()) for s in parse_sequence(V, plain.frames)[1]]
    for s in seq.segments:
        if s.name == "speaker":
            tail = N - 1 + max(0, pad_to - (s.end - s.start))
            assert (seq.frames[s.end : s.end + tail] == PAD).all() and seq.frames[s.end + tail, 0] != PAD


def test_released_prompt_layouts():
    text = np.array([7, 8, 9])
    audio = np.zeros((4, N), dtype=np.int64)
    tts = build_prompt(V, "tts", {"text": text})
    assert tts[:, 0].tolist() == [5, 82, 35] + (V.text_to_global(text)).tolist() + [0] * 8 + [34]
    asr = build_prompt(V, "asr", {"speech": audio})
    assert asr[:3, 0].tolist() == [5, 80, 34] and asr[-9:, 0].tolist() == [0] * 8 + [35]
    spk = build_prompt(V, "tts", {"text": text, "speaker": audio})
    assert spk[1, 0] == 81 and 37 in spk[:, 0]


def test_loss_mask_and_prefix():
    seq = build_sequence(V, "asr", {"speech": np.zeros((3, N), dtype=np.int64), "text": np.array([1, 2])})
    # sos, task, marker, 3 audio, 8 pads, marker | 2 text, eos | 8 pads
    assert seq.prefix_len == 2 + 1 + 3 + 8 + 1
    assert seq.loss_mask.nonzero()[0].tolist() == [seq.prefix_len, seq.prefix_len + 1, seq.prefix_len + 2]
    assert seq.frames[seq.prefix_len + 2, 0] == SOS_EOS
    assert "text_bpe_start/end" in format_sequence(V, seq)


def test_parse_generated():
    frames = np.full((4, N), PAD)
    frames[:2, 0] = V.text_to_global([3, 4])
    frames[2, 0] = SOS_EOS
    toks, ended = parse_generated(V, frames, "text")
    assert toks.tolist() == [3, 4] and ended


def test_bad_examples():
    with pytest.raises(SequenceError, match="unknown task"):
        build_sequence(V, "mt", {"text": [1]})
    with pytest.raises(SequenceError, match="needs entry 'speech'"):
        build_sequence(V, "asr", {"text": [1]})
    with pytest.raises(SequenceError, match="no entries"):
        build_sequence(V, "asr", {"text": [1], "speech": np.zeros((1, N), int), "image": [1]})
    with pytest.raises(SequenceError, match="out of range"):
        build_sequence(V, "textlm", {"text": [100]})
    with pytest.raises(SequenceError, match="semantic unit out of range"):
        build_sequence(V, "audiolm", {"speech": np.full((2, N), 50)})


def test_show_example_command(tmp_path, capsys):
    from espnet2_speechlm.bin.show_example import main

    V.save(tmp_path)
    assert main(["--vocab", str(tmp_path), "--task", "tts", "--frames", "2", "--speaker_frames", "2"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("task=tts") and "<tts_task>" in lines[2] and "<spk_start/end>" in out
    assert sum(1 for line in lines if " L " in line) == 3  # 2 speech frames + <sos/eos>


def test_parse_a_speech_frame_whose_unit_zero_is_pad():
    """A released model's speech frame with unit 0 has <pad> in stream 0 but codes elsewhere: still content."""
    import dataclasses

    from espnet2_speechlm.tasks import build_sequence, parse_sequence
    from espnet2_speechlm.vocab import JointVocab

    v = dataclasses.replace(JointVocab.build({"semantic": 10, "acoustic": 8 * 4, "text": 20}), semantic0_is_pad=True)
    speech = np.array([[3, 1, 1, 1, 1, 1, 1, 1, 1], [0, 2, 2, 2, 2, 2, 2, 2, 2], [5, 0, 1, 2, 3, 0, 1, 2, 3]])
    seq = build_sequence(v, "asr", {"speech": speech, "text": np.array([4, 5])})
    assert seq.frames[4, 0] == 0
    task, segs = parse_sequence(v, seq.frames)
    assert task == "asr" and np.array_equal(segs[0].tokens, speech) and segs[1].tokens.tolist() == [4, 5]
