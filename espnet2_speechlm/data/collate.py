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

from ..tasks import SplicedSequence
from ..vocab import PAD


def collate(seqs: Sequence[SplicedSequence], pad_to_multiple: int = 1) -> dict:
    """-> dict(steps [B,S,N] long, loss_mask [B,S,N] bool, attention_mask [B,S] long,
    lengths [B] (steps per sequence), prefix_lens [B] (prompt frames), num_pad_steps int)."""
    if not seqs:
        raise ValueError("collate: empty batch")
    N = seqs[0].frames.shape[1]
    lengths = np.array([len(s.frames) + N - 1 for s in seqs], dtype=np.int64)
    S = int(lengths.max())
    if pad_to_multiple > 1:
        S = -(-S // pad_to_multiple) * pad_to_multiple
    B = len(seqs)
    steps = np.full((B, S, N), PAD, dtype=np.int64)
    mask = np.zeros((B, S, N), dtype=bool)
    for b, s in enumerate(seqs):
        fr, lm = s.frames, s.loss_mask
        if fr.shape[1] != N:
            raise ValueError(f"collate: sequence {b} has {fr.shape[1]} streams, the first has {N}")
        T = len(fr)
        for n in range(N):
            steps[b, n : n + T, n] = fr[:, n]
            mask[b, n : n + T, n] = lm
    attn = (np.arange(S)[None, :] < lengths[:, None]).astype(np.int64)
    return {
        "steps": torch.from_numpy(steps),
        "loss_mask": torch.from_numpy(mask),
        "attention_mask": torch.from_numpy(attn),
        "lengths": torch.from_numpy(lengths),
        "prefix_lens": torch.tensor([s.prefix_len for s in seqs], dtype=torch.long),
        "num_pad_steps": int(B * S - lengths.sum()),
    }
