"""What sampling and beam search share: prompts batched in delayed space,
the prompt streams that run on into the first generated steps, the allowed
stream-0 ids and the length limits of each target."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..interleave import delay, delayed_length, frame_of_step
from ..vocab import PAD, SOS_EOS
from .config import GenerationConfig


class Stream0Masks:
    """Allowed stream-0 ids per target modality, as additive -inf masks."""

    def __init__(self, vocab, device, dtype):
        self.eos_only = torch.full((vocab.size,), float("-inf"), device=device, dtype=dtype)
        self.eos_only[SOS_EOS] = 0.0
        self.masks = {}
        for mod, block in (("text", "text"), ("audio", "semantic")):
            if vocab.has_block(block):
                m = torch.full((vocab.size,), float("-inf"), device=device, dtype=dtype)
                b = vocab.block(block)
                m[b.start : b.end] = 0.0
                self.masks[mod] = m

    def get(self, modality: str):
        if modality not in self.masks:
            raise ValueError(f"cannot generate {modality!r}: the vocabulary has no block for it")
        return self.masks[modality]


def left_padded_prompts(model, prompts: Sequence[np.ndarray], device):
    """Check the prompts and delay them into one left-padded batch.

    Returns (prompt lengths P [B], the prompts as tensors, delayed steps
    [B, max P, N], attention mask [B, max P]).  Only the first P steps of a
    delayed prompt are fed; its remaining N - 1 steps are emitted while the
    first target frames are generated (:func:`prompt_carry`)."""
    N = model.vocab.num_streams
    for b, p in enumerate(prompts):
        if p.ndim != 2 or p.shape[1] != N:
            raise ValueError(f"prompt {b}: expected [P, {N}] frames, got shape {p.shape}")
        model.check_length(len(p), f"prompt {b}")
    B = len(prompts)
    P = np.array([len(p) for p in prompts])
    L = int(P.max())
    steps = torch.full((B, L, N), PAD, dtype=torch.long, device=device)
    attn = torch.zeros((B, L), dtype=torch.long, device=device)
    prompt_t = []
    for b, p in enumerate(prompts):
        pt = torch.as_tensor(np.asarray(p), dtype=torch.long, device=device)
        prompt_t.append(pt)
        steps[b, L - P[b] :] = delay(pt, PAD)[: P[b]]
        attn[b, L - P[b] :] = 1
    return P, prompt_t, steps, attn


def prompt_carry(prompt_t: Sequence[torch.Tensor], P: np.ndarray, step: int, n: int, device) -> torch.Tensor:
    """Stream ``n`` at generation step ``step`` (< n) of each prompt: it still
    belongs to a prompt frame, copied, never sampled (``<pad>`` for a prompt
    too short to have that frame)."""
    out = torch.full((len(P),), PAD, dtype=torch.long, device=device)
    for b, pt in enumerate(prompt_t):
        f = frame_of_step(P[b] + step, n)  # generation step s is delayed step P + s
        if f >= 0:
            out[b] = pt[f, n]
    return out


def length_limits(model, P: np.ndarray, cfg: GenerationConfig, input_lens: Sequence[int] | None = None):
    """Per-prompt (min, max) target frames: ``cfg``'s limits, its ratios times
    each input's length, and a maximum cut so that the whole delayed sequence
    (prompt, target, <sos/eos>, the N - 1 steps after it) fits the context."""
    B = len(P)
    lo, hi = np.full(B, cfg.min_len), np.full(B, cfg.max_len)
    if cfg.min_len_ratio > 0 or cfg.max_len_ratio > 0:
        if input_lens is None or len(input_lens) != B:
            raise ValueError("min_len_ratio / max_len_ratio need one input length per prompt (input_lens)")
        n = np.asarray(input_lens, dtype=np.float64)
        if cfg.min_len_ratio > 0:
            lo = np.maximum(lo, (cfg.min_len_ratio * n).astype(np.int64))
        if cfg.max_len_ratio > 0:
            hi = np.minimum(hi, np.maximum(1, np.ceil(cfg.max_len_ratio * n).astype(np.int64)))
        lo = np.minimum(lo, hi)
    ctx = model.max_steps or 10**9
    hi = np.minimum(hi, ctx - delayed_length(P + 1, model.vocab.num_streams)).clip(min=0)
    return np.minimum(lo, hi), hi
