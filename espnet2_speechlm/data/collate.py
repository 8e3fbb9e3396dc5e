"""Batching spliced sequences for the LM: delay interleave + right padding.

``collate`` turns a list of :class:`~espnet2_speechlm.tasks.SplicedSequence`
into the tensors :meth:`MultiStreamLM.forward` takes.  Each sequence is
delayed on its own (``T_b + N - 1`` steps) and written into one ``<pad>``
filled array, so nothing of one sequence leaks into another and the padding
needs no special case.  Pure numpy until the final ``torch.from_numpy``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..interleave import delay_into, delayed_length
from ..tasks import SplicedSequence
from ..vocab import PAD


def collate(seqs: Sequence[SplicedSequence], pad_to_multiple: int = 1) -> dict:
    """-> dict(steps [B,S,N] long, loss_mask [B,S,N] bool, attention_mask [B,S] long,
    lengths [B] (steps per sequence), prefix_lens [B] (prompt frames), num_pad_steps int)."""
    if not seqs:
        raise ValueError("collate: empty batch")
    N = seqs[0].frames.shape[1]
    lengths = np.array([delayed_length(len(s.frames), N) for s in seqs], dtype=np.int64)
    S = int(lengths.max())
    if pad_to_multiple > 1:
        S = -(-S // pad_to_multiple) * pad_to_multiple
    B = len(seqs)
    steps = np.full((B, S, N), PAD, dtype=np.int64)
    mask = np.zeros((B, S, N), dtype=bool)
    for b, s in enumerate(seqs):
        _check_streams(s, N, f"collate: sequence {b}")
        delay_into(steps[b], s.frames)
        delay_into(mask[b], s.loss_mask)
    return _batch(steps, mask, lengths, [s.prefix_len for s in seqs])


def collate_packed(rows: Sequence[Sequence[SplicedSequence]], row_len: int | None = None) -> dict:
    """Packing: each row is several sequences laid end to end (each delayed on
    its own), so a batch has almost no padding.  Attention stays inside each
    sequence because ``position_ids`` restart at 0 where a sequence starts and
    the model is called with ``attention_mask=None``: the Hugging Face body
    then builds a block-diagonal causal mask from the position ids.  The
    first step of every packed sequence leaves the loss (it would be
    "predicted" from the previous sequence's last step).  The padded tail of a
    row is one more all-pad block with its own positions and no loss.

    -> the keys of :func:`collate` plus ``position_ids [B,S]`` and
    ``packed=True``; ``attention_mask`` marks real steps (for statistics only).
    """
    if not rows or not all(rows):
        raise ValueError("collate_packed: empty batch or empty row")
    N = rows[0][0].frames.shape[1]
    lengths = np.array([sum(delayed_length(len(s.frames), N) for s in r) for r in rows], dtype=np.int64)
    S = int(max(lengths.max(), row_len or 0))
    B = len(rows)
    steps = np.full((B, S, N), PAD, dtype=np.int64)
    mask = np.zeros((B, S, N), dtype=bool)
    pos = np.zeros((B, S), dtype=np.int64)
    for b, r in enumerate(rows):
        o = 0
        for s in r:
            _check_streams(s, N, "collate_packed: a sequence")
            delay_into(steps[b], s.frames, start=o)
            delay_into(mask[b], s.loss_mask, start=o)
            mask[b, o, :] = False  # its first step would be "predicted" from the previous sequence
            L = delayed_length(len(s.frames), N)
            pos[b, o : o + L] = np.arange(L)
            o += L
        pos[b, o:] = np.arange(S - o)
    return {**_batch(steps, mask, lengths, [r[0].prefix_len for r in rows]), "position_ids": torch.from_numpy(pos), "packed": True}


def _batch(steps: np.ndarray, mask: np.ndarray, lengths: np.ndarray, prefix_lens: list[int]) -> dict:
    B, S, _ = steps.shape
    attn = (np.arange(S)[None, :] < lengths[:, None]).astype(np.int64)
    return {
        "steps": torch.from_numpy(steps),
        "loss_mask": torch.from_numpy(mask),
        "attention_mask": torch.from_numpy(attn),
        "lengths": torch.from_numpy(lengths),
        "prefix_lens": torch.tensor(prefix_lens, dtype=torch.long),
        "num_pad_steps": int(B * S - lengths.sum()),
    }


def _check_streams(seq: SplicedSequence, N: int, what: str) -> None:
    if seq.frames.shape[1] != N:
        raise ValueError(f"{what} has {seq.frames.shape[1]} streams, the first has {N}")
