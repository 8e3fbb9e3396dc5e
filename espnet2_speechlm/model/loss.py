"""Weighted multi-stream cross-entropy with per-modality reporting.

Pure functions of tensors: ``multistream_loss`` takes the head's logits and
the shifted targets and returns (weighted loss sum, statistics).  The caller
divides by the real frames (``interleave.loss_frames``), so that a
distributed trainer can divide by the frame count of the whole global batch
instead of its own.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..vocab import PAD, JointVocab
from .config import LossWeights

# token categories for reporting (index into CATEGORY_NAMES)
CATEGORY_NAMES = ("pad", "special", "semantic", "acoustic", "text")


def category_table(vocab: JointVocab) -> torch.Tensor:
    """``[V]`` long: category of every id (see CATEGORY_NAMES)."""
    table = torch.full((vocab.size,), 1, dtype=torch.long)  # specials
    table[PAD] = 0
    for b in vocab.blocks:
        if b.name in CATEGORY_NAMES:
            table[b.start : b.end] = CATEGORY_NAMES.index(b.name)
        else:  # an extra modality is reported and weighted like text
            table[b.start : b.end] = CATEGORY_NAMES.index("text")
    return table


def weight_per_category(w: LossWeights) -> torch.Tensor:
    return torch.tensor([w.pad, w.special, w.semantic, w.acoustic, w.text], dtype=torch.float32)


def acoustic_local_targets(targets: torch.Tensor, acoustic_index: torch.Tensor) -> torch.Tensor:
    """Global ids of streams 1..N-1 ``[..., N-1]`` -> index into the restricted
    sub-vocabulary (``<pad>`` -> 0, code c of the stream's codebook -> 1 + c).
    Anything else is an error in the data: it is mapped to -1."""
    starts = acoustic_index[:, 1]  # first code id of each stream's codebook
    size = acoustic_index.shape[1] - 1
    local = targets - starts + 1
    ok = (local >= 1) & (local <= size)
    local = torch.where(targets == PAD, torch.zeros_like(local), torch.where(ok, local, torch.full_like(local, -1)))
    return local


def multistream_loss(
    logits0: torch.Tensor,
    logits_rest: torch.Tensor | None,
    targets: torch.Tensor,
    loss_mask: torch.Tensor,
    categories: torch.Tensor,
    cat_weights: torch.Tensor,
    acoustic_index: torch.Tensor | None,
    stream0_local: torch.Tensor | None = None,
):
    """
    logits0      [B, S, V]              stream 0 over the whole vocabulary, or
                 [B, S, V0]             over the ids stream 0 can hold, when ``stream0_local``
                                    ([V] long: global id -> column of logits0, -1 if none) is given
    logits_rest  [B, S, N-1, V'] | None streams >= 1 (V' = 1 + C when restricted)
    targets      [B, S, N]              global ids (the input shifted by one step)
    loss_mask    [B, S, N] bool         which target tokens are in the loss
    categories   [V] long               category_table(vocab)
    cat_weights  [5] float              weight per category
    """
    B, S, N = targets.shape
    cat = categories[targets]  # [B, S, N]
    w = cat_weights.to(logits0.dtype if logits0.is_floating_point() else torch.float32)[cat] * loss_mask
    w = w.float()
    t0 = targets[..., 0]
    if stream0_local is not None:
        t0 = stream0_local[t0]
        if bool(((t0 < 0) & loss_mask[..., 0]).any()):
            bad = targets[..., 0][(t0 < 0) & loss_mask[..., 0]][:5].tolist()
            raise ValueError(f"stream 0 holds ids that stream 0 is not scored over (acoustic codes?): {bad}")
        t0 = t0.clamp_min(0)
    ce0 = F.cross_entropy(logits0.float().reshape(B * S, -1), t0.reshape(-1), reduction="none").view(B, S)
    ce = [ce0]
    correct = [(logits0.argmax(-1) == t0)]
    if N > 1:
        t_rest = targets[..., 1:]
        if acoustic_index is not None and acoustic_index.numel():
            t_rest = acoustic_local_targets(t_rest, acoustic_index)
            if bool(((t_rest < 0) & loss_mask[..., 1:]).any()):
                bad = targets[..., 1:][(t_rest < 0) & loss_mask[..., 1:]][:5].tolist()
                raise ValueError(f"streams >= 1 hold ids that are neither <pad> nor a code of their codebook: {bad}")
            t_rest = t_rest.clamp_min(0)
        V2 = logits_rest.shape[-1]
        ce_rest = F.cross_entropy(logits_rest.float().reshape(-1, V2), t_rest.reshape(-1), reduction="none").view(B, S, N - 1)
        ce.append(ce_rest)
        correct.append(logits_rest.argmax(-1) == t_rest)
    ce = torch.cat([ce[0].unsqueeze(-1)] + ce[1:], dim=-1) if N > 1 else ce[0].unsqueeze(-1)
    correct = torch.cat([correct[0].unsqueeze(-1)] + correct[1:], dim=-1) if N > 1 else correct[0].unsqueeze(-1)

    loss_sum = (ce * w).sum()

    with torch.no_grad():
        stats = {}
        in_loss = loss_mask & (targets != PAD)
        for i, name in enumerate(CATEGORY_NAMES[1:], start=1):
            sel = in_loss & (cat == i)
            n = sel.sum()
            if n > 0:
                stats[f"loss_{name}"] = (ce[sel].sum() / n).item()
        for n in range(N):
            sel = in_loss[..., n]
            cnt = sel.sum()
            if cnt > 0:
                stats[f"acc_stream{n}"] = (correct[..., n][sel].float().sum() / cnt).item()
    return loss_sum, stats


# ------------------------------------------ where the auxiliary losses apply
_SEMANTIC = CATEGORY_NAMES.index("semantic")
_TEXT = CATEGORY_NAMES.index("text")


def alignment_pairs(ids0: torch.Tensor, loss_mask0: torch.Tensor, categories: torch.Tensor, length: int | None = None):
    """The (conditioning, target) runs of one sequence's stream 0.

    ``ids0 [S]`` global ids and ``loss_mask0 [S]`` of stream 0 (not shifted).
    Returns ``[((c0, c1), (y0, y1)), ...]``: positions ``[y0, y1)`` are a run of
    speech or text tokens in the loss, ``[c0, c1)`` the nearest earlier run of
    the *other* modality outside the loss.  Going back from a target, pad and
    special tokens and runs of the target's own modality outside the loss (a
    TTS speaker prompt) are passed over; a token in the loss (the previous
    example's target) ends the search with no pair.  So an ASR or TTS example
    gives one pair, a spliced long-form one per utterance, text and speech
    continuation none.  Only the first ``length`` positions are looked at.
    """
    S = ids0.shape[0] if length is None else min(length, ids0.shape[0])
    cat = categories[ids0[:S]].cpu().numpy()
    inloss = loss_mask0[:S].cpu().numpy().astype(bool)
    kind = np.where(cat == _SEMANTIC, 1, np.where(cat == _TEXT, 2, 0))  # 0: pad / special
    runs = []  # (start, end, kind, in loss)
    p = 0
    while p < S:
        q = p + 1
        while q < S and kind[q] == kind[p] and inloss[q] == inloss[p]:
            q += 1
        if kind[p]:
            runs.append((p, q, int(kind[p]), bool(inloss[p])))
        elif inloss[p:q].any():
            runs.append((p, q, 0, True))  # a target's closing <sos/eos>: ends any search past it
        p = q
    out = []
    for i, (y0, y1, k, tgt) in enumerate(runs):
        if not (k and tgt):
            continue
        for c0, c1, kc, ctgt in reversed(runs[:i]):
            if ctgt:
                break
            if kc != k:
                out.append(((c0, c1), (y0, y1)))
                break
    return out


def ctc_segments(ids0: torch.Tensor, loss_mask0: torch.Tensor, categories: torch.Tensor, length: int | None = None):
    """Where the auxiliary CTC loss applies, in one sequence's stream 0: the
    pairs of :func:`alignment_pairs` whose conditioning is speech (so whose
    target is text), as ``(frames, texts)`` position arrays.  An ASR sequence
    gives one pair; a spliced long-form ASR sequence one per utterance; TTS,
    speech and text continuation none, also when packed into one row with
    other examples.  Only the first ``length`` positions are looked at (the
    positions that have a hidden state)."""
    return [
        (np.arange(c0, c1), np.arange(y0, y1))
        for (c0, c1), (y0, y1) in alignment_pairs(ids0, loss_mask0, categories, length)
        if int(categories[ids0[c0]]) == _SEMANTIC
    ]


# ------------------------------------------------------------ auxiliary CTC
def ctc_loss_sum(log_probs: torch.Tensor, input_lengths, targets: list[torch.Tensor]):
    """Summed CTC negative log-likelihood (blank = class 0) of ``targets``
    (local ids >= 1), ``log_probs [T, P, C]``.  Impossible alignments (more
    targets than frames) count zero instead of infinity."""
    tl = torch.tensor([len(t) for t in targets], dtype=torch.long)
    il = torch.as_tensor(input_lengths, dtype=torch.long)
    flat = torch.cat(targets).to(log_probs.device)
    return F.ctc_loss(log_probs.float(), flat, il, tl, blank=0, reduction="sum", zero_infinity=True)
