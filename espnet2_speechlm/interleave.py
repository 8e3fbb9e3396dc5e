"""Delay interleave of multi-stream token frames (the "codebook pattern").

A speech frame holds N tokens (1 semantic + N-1 acoustic).  The LM predicts
one step at a time, and at step ``t`` it emits stream ``n`` of frame ``t - n``:
stream ``n`` is delayed by ``n`` steps.  Stream ``n`` of a frame is therefore
predicted after streams ``< n`` of the same frame were already seen, which is
the intra-frame autoregression, at the cost of only ``N - 1`` extra steps.

    frames [T, N]  --delay-->  steps [T + N - 1, N]  --undelay-->  frames [T, N]

Both functions work on numpy arrays and torch tensors, with any number of
leading (batch) dimensions; the last two are (time, stream).  They are pure:
inputs are never modified.  Batches of unequal lengths need no special case:
pad each sequence with ``pad`` up to a common T, delay, and sequence ``b``
occupies steps ``[0, T_b + N - 1)``; every later step is all ``pad``.

This module is the one place that knows the delayed layout: which frame a
step holds (:func:`frame_of_step`, :func:`step_of_frame`), how many steps
frames occupy (:func:`delayed_length`), the all-pad tail after a segment
(:func:`segment_tail`), writing delayed frames into a preallocated batch
(:func:`delay_into`) and which targets of a delayed batch count as real
frames of the loss (:func:`loss_frames`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

try:  # torch is optional for this module, so data tools can use it alone
    import torch
except ImportError:  # pragma: no cover
    torch = None


def _full(like: Any, shape: tuple, fill) -> Any:
    if torch is not None and isinstance(like, torch.Tensor):
        return torch.full(shape, fill, dtype=like.dtype, device=like.device)
    return np.full(shape, fill, dtype=np.asarray(like).dtype)


def delay(frames: Any, pad: int | bool = 0) -> Any:
    """``[..., T, N] -> [..., T + N - 1, N]``; stream ``n`` shifted by ``n``.

    ``pad`` fills the positions before a stream starts and after it ends.
    For boolean masks pass ``pad=False``.
    """
    if frames.ndim < 2:
        raise ValueError(f"delay expects [..., T, N], got shape {tuple(frames.shape)}")
    *lead, T, N = frames.shape
    return delay_into(_full(frames, (*lead, delayed_length(T, N), N), pad), frames)


def delay_into(out: Any, frames: Any, start: int = 0) -> Any:
    """Write ``frames [..., T, N]`` delayed into ``out [..., S, N]`` from step
    ``start`` on: stream ``n`` of frame ``t`` goes to step ``start + t + n``.

    Only those positions are written; the rest of ``out`` (its padding, the
    steps of other sequences packed into the same row) is left as it is, so a
    batch is one preallocated ``pad``-filled array and one call per sequence.
    ``frames`` may be a ``[T]`` vector (a per-frame loss mask): it is then
    written to every stream.  Returns ``out``.
    """
    N = out.shape[-1]
    T = frames.shape[-2] if frames.ndim >= 2 else frames.shape[-1]
    if frames.ndim >= 2 and frames.shape[-1] != N:
        raise ValueError(f"delay_into: frames have {frames.shape[-1]} streams, the batch {N}")
    end = start + delayed_length(T, N)
    if start < 0 or end > out.shape[-2]:
        raise ValueError(f"delay_into: {T} frames from step {start} need steps [{start}, {end}), the batch has {out.shape[-2]}")
    for n in range(N):
        s = step_of_frame(start, n)
        out[..., s : s + T, n] = frames[..., :, n] if frames.ndim >= 2 else frames
    return out


def undelay(steps: Any) -> Any:
    """Inverse of :func:`delay`: ``[..., S, N] -> [..., S - N + 1, N]``."""
    if steps.ndim < 2:
        raise ValueError(f"undelay expects [..., S, N], got shape {tuple(steps.shape)}")
    *lead, S, N = steps.shape
    T = S - segment_tail(N)
    if T < 0:
        raise ValueError(f"undelay: {S} steps are fewer than the N - 1 = {N - 1} delay steps")
    out = _full(steps, (*lead, T, N), 0)
    for n in range(N):
        s = step_of_frame(0, n)
        out[..., :, n] = steps[..., s : s + T, n]
    return out


def segment_tail(num_streams: int) -> int:
    """All-pad frames that follow every segment of a sequence (N - 1): the
    delayed acoustic streams of a segment's last frame end inside them, so
    they never overlap the next segment's marker.  It is also the number of
    steps the delay adds."""
    return num_streams - 1


def delayed_length(num_frames, num_streams: int):
    """Number of LM steps that ``num_frames`` frames occupy after :func:`delay`
    (an int, or elementwise for an array of lengths)."""
    return num_frames + segment_tail(num_streams)


def frame_of_step(step, stream: int):
    """The frame whose ``stream`` token is emitted at ``step`` (may be < 0:
    before the first frame)."""
    return step - stream


def step_of_frame(frame, stream: int):
    """The step at which stream ``stream`` of ``frame`` is emitted (inverse of
    :func:`frame_of_step`)."""
    return frame + stream


def loss_frames(steps: Any, loss_mask: Any, attention_mask: Any = None, pad: int = 0):
    """The real frames a delayed batch puts in the loss: targets (steps 1..S-1,
    the inputs shifted by one) whose stream 0 is in the loss, not ``pad`` and,
    with ``attention_mask [B, S]``, a real step.  ``steps`` and ``loss_mask``
    are ``[B, S, N]``.  The loss is normalised by this count (summed over the
    whole global batch), so every frame weighs the same whatever batch it is in.
    Returns a 0-d array or tensor, like its inputs."""
    keep = loss_mask[:, 1:, 0] & (steps[:, 1:, 0] != pad)
    if attention_mask is not None:
        keep = keep & (attention_mask[:, 1:] != 0)
    return keep.sum()
