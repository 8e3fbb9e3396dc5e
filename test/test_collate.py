"""The collators lay each sequence out exactly as ``interleave.delay`` does."""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from espnet2_speechlm.data.collate import collate, collate_packed
from espnet2_speechlm.interleave import delay, delayed_length, loss_frames
from espnet2_speechlm.tasks import SplicedSequence
from espnet2_speechlm.vocab import PAD


@st.composite
def sequence_batches(draw, max_batch=4, min_frames=0):
    """Sequences of random lengths, random ids and loss masks."""
    N = draw(st.integers(1, 9))
    seqs = []
    for _ in range(draw(st.integers(1, max_batch))):
        T = draw(st.integers(min_frames, 10))
        frames = draw(arrays(np.int64, (T, N), elements=st.integers(0, 300)))
        mask = draw(arrays(np.bool_, (T,)))
        seqs.append(SplicedSequence("asr", frames, mask, prefix_len=draw(st.integers(0, max(T, 0)))))
    return seqs


@given(sequence_batches(), st.integers(1, 8))
def test_collate_equals_delay_per_sequence(seqs, multiple):
    b = collate(seqs, pad_to_multiple=multiple)
    N = seqs[0].frames.shape[1]
    steps, mask, attn = b["steps"].numpy(), b["loss_mask"].numpy(), b["attention_mask"].numpy()
    S = steps.shape[1]
    assert S % multiple == 0 and S - multiple < max(delayed_length(len(s), N) for s in seqs)
    for i, s in enumerate(seqs):
        L = delayed_length(len(s), N)
        np.testing.assert_array_equal(steps[i, :L], delay(s.frames, PAD))
        np.testing.assert_array_equal(mask[i, :L], delay(np.repeat(s.loss_mask[:, None], N, 1), False))
        assert (steps[i, L:] == PAD).all() and not mask[i, L:].any()
        assert attn[i].tolist() == [1] * L + [0] * (S - L)
        assert b["lengths"][i] == L and b["prefix_lens"][i] == s.prefix_len
    assert b["num_pad_steps"] == int((attn == 0).sum())


@given(sequence_batches(max_batch=5, min_frames=1), st.integers(0, 6))
def test_collate_packed_equals_delays_end_to_end(seqs, extra):
    rows = [seqs[:2], seqs[2:]] if len(seqs) > 2 else [seqs]
    N = seqs[0].frames.shape[1]
    lengths = [sum(delayed_length(len(s), N) for s in r) for r in rows]
    b = collate_packed(rows, row_len=max(lengths) + extra)
    steps, mask, pos = b["steps"].numpy(), b["loss_mask"].numpy(), b["position_ids"].numpy()
    for i, r in enumerate(rows):
        o = 0
        for s in r:
            L = delayed_length(len(s), N)
            np.testing.assert_array_equal(steps[i, o : o + L], delay(s.frames, PAD))
            want = delay(np.repeat(s.loss_mask[:, None], N, 1), False)
            want[0] = False  # a packed sequence's first step is never a target
            np.testing.assert_array_equal(mask[i, o : o + L], want)
            assert pos[i, o : o + L].tolist() == list(range(L))
            o += L
        assert (steps[i, o:] == PAD).all() and not mask[i, o:].any()
        assert pos[i, o:].tolist() == list(range(steps.shape[1] - o))


@given(sequence_batches())
def test_loss_frames_counts_non_pad_stream0_targets_in_the_loss(seqs):
    b = collate(seqs)
    steps, mask, attn = b["steps"].numpy(), b["loss_mask"].numpy(), b["attention_mask"].numpy()
    want = 0
    for s in seqs:  # frame t is the target of step t - 1; frame 0 is never a target
        want += int((s.loss_mask[1:] & (s.frames[1:, 0] != PAD)).sum())
    assert int(loss_frames(steps, mask, attn, PAD)) == want
    assert int(loss_frames(b["steps"], b["loss_mask"], b["attention_mask"], PAD)) == want
