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
    out = _full(frames, (*lead, T + N - 1, N), pad)
    for n in range(N):
        out[..., n : n + T, n] = frames[..., :, n]
    return out


def undelay(steps: Any) -> Any:
    """Inverse of :func:`delay`: ``[..., S, N] -> [..., S - N + 1, N]``."""
    if steps.ndim < 2:
        raise ValueError(f"undelay expects [..., S, N], got shape {tuple(steps.shape)}")
    *lead, S, N = steps.shape
    T = S - N + 1
    if T < 0:
        raise ValueError(f"undelay: {S} steps are fewer than the N - 1 = {N - 1} delay steps")
    out = _full(steps, (*lead, T, N), 0)
    for n in range(N):
        out[..., :, n] = steps[..., n : n + T, n]
    return out


def delayed_length(num_frames: int, num_streams: int) -> int:
    """Number of LM steps that ``num_frames`` frames occupy after :func:`delay`."""
    return num_frames + num_streams - 1


def frame_of_step(step: int, stream: int) -> int:
    """The frame whose ``stream`` token is emitted at ``step`` (may be < 0)."""
    return step - stream
