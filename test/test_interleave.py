import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from espnet2_speechlm.interleave import delay, delayed_length, undelay


@st.composite
def frame_batches(draw):
    lead = draw(st.lists(st.integers(1, 3), max_size=2))
    T = draw(st.integers(0, 12))
    N = draw(st.integers(1, 9))
    return draw(arrays(np.int64, (*lead, T, N), elements=st.integers(1, 1000)))


@given(frame_batches())
def test_round_trip_numpy(x):
    y = delay(x, pad=0)
    assert y.shape[-2] == delayed_length(x.shape[-2], x.shape[-1])
    np.testing.assert_array_equal(undelay(y), x)


@given(frame_batches())
def test_round_trip_torch_and_matches_numpy(x):
    t = torch.from_numpy(x)
    y = delay(t, pad=0)
    assert torch.equal(undelay(y), t)
    np.testing.assert_array_equal(y.numpy(), delay(x, pad=0))


@given(frame_batches())
def test_stream_n_is_shifted_by_n(x):
    y = delay(x, pad=-1)
    T, N = x.shape[-2:]
    for n in range(N):
        np.testing.assert_array_equal(y[..., n : n + T, n], x[..., n])
        assert (y[..., :n, n] == -1).all() and (y[..., n + T :, n] == -1).all()


def test_known_example():
    x = np.array([[1, 2, 3], [4, 5, 6]])
    np.testing.assert_array_equal(delay(x, 0), [[1, 0, 0], [4, 2, 0], [0, 5, 3], [0, 0, 6]])


def test_batched_padding_is_per_sequence_delay():
    # two sequences of 3 and 1 frames, right padded with 0 to 3 frames
    a = np.array([[1, 2], [3, 4], [5, 6]])
    b = np.array([[7, 8]])
    batch = np.zeros((2, 3, 2), dtype=np.int64)
    batch[0], batch[1, :1] = a, b
    y = delay(batch, 0)
    np.testing.assert_array_equal(y[0], delay(a, 0))
    np.testing.assert_array_equal(y[1, :2], delay(b, 0))
    assert (y[1, 2:] == 0).all()


def test_inputs_not_modified_and_bad_shapes():
    x = np.arange(6).reshape(3, 2)
    x0 = x.copy()
    delay(x)
    np.testing.assert_array_equal(x, x0)
    with pytest.raises(ValueError):
        delay(np.arange(3))
    with pytest.raises(ValueError):
        undelay(np.zeros((2, 5)))
