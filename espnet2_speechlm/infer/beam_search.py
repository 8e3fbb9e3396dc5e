"""Beam search for text targets (ASR), batched and KV-cached.

A text target occupies stream 0 only: streams >= 1 of its frames are
``<pad>``, so the search is over stream-0 tokens; the delayed streams >= 1 of
the first N-1 steps still carry the end of the prompt and are copied from it,
exactly as in sampling (``generate.py``).

Each prompt keeps ``beam_size`` live hypotheses.  At every step the
``2 * beam_size`` best one-token extensions of all live hypotheses are
considered in order of log-probability: one ending in ``<sos/eos>`` becomes a
finished hypothesis, the others fill the next beams.  A prompt is done once it
has ``beam_size`` finished hypotheses or reaches its maximum length (where
only ``<sos/eos>`` is allowed).  Finished hypotheses are ranked by
``log p / (tokens + 1) ** length_penalty`` (``<sos/eos>`` counted): 0 ranks by
raw log-probability, which favours short outputs.

Log-probabilities are those of the full stream-0 distribution (the model's
own), restricted afterwards to the text block (+ ``<sos/eos>`` within the
length limits), so a hypothesis' score is what teacher forcing would give it.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..interleave import frame_of_step
from ..tasks import parse_generated
from ..vocab import PAD, SOS_EOS
from .config import GenerationConfig, GenerationResult
from .prompts import Stream0Masks, left_padded_prompts, length_limits, prompt_carry


@torch.no_grad()
def beam_search(model, prompts: Sequence[np.ndarray], cfg: GenerationConfig, input_lens=None) -> list[GenerationResult]:
    """The best-ranked finished hypothesis per prompt (``score`` = its log-probability)."""
    return [hyps[0] for hyps in beam_search_nbest(model, prompts, cfg, input_lens)]


class _Beams:
    """The live and finished hypotheses of every prompt."""

    def __init__(self, B: int, K: int, device):
        self.B, self.K = B, K
        # beam 0 alone at the start, so the first step does not pick the same token K times
        self.scores = torch.full((B, K), float("-inf"), dtype=torch.float64, device=device)
        self.scores[:, 0] = 0.0
        self.tokens = [[[] for _ in range(K)] for _ in range(B)]
        self.finished: list[list[tuple[float, float, list[int]]]] = [[] for _ in range(B)]  # (rank, log p, tokens)
        self.done = np.zeros(B, dtype=bool)

    def extend(self, logp: torch.Tensor, s: int, hi: np.ndarray, length_penalty: float):
        """Choose the next beams from ``logp [B, K, V]``; returns (source beam, new token) ``[B, K]``."""
        K, V = self.K, logp.shape[-1]
        cand = (self.scores[:, :, None] + logp).view(self.B, -1)  # [B, K * V]
        top_scores, top_idx = cand.topk(min(2 * K, cand.shape[1]), dim=-1)
        top_scores, top_idx = top_scores.cpu().numpy(), top_idx.cpu().numpy()
        src = np.zeros((self.B, K), dtype=np.int64)
        new_tok = np.full((self.B, K), PAD, dtype=np.int64)
        new_scores = np.full((self.B, K), -np.inf)
        new_tokens = [[[] for _ in range(K)] for _ in range(self.B)]
        for b in range(self.B):
            if self.done[b]:
                continue
            k_new = 0
            for sc, idx in zip(top_scores[b], top_idx[b]):
                if not np.isfinite(sc):
                    break
                beam, tok = divmod(int(idx), V)
                if tok == SOS_EOS:
                    hyp = self.tokens[b][beam]
                    rank = float(sc) / ((len(hyp) + 1) ** length_penalty) if length_penalty else float(sc)
                    self.finished[b].append((rank, float(sc), hyp))
                    if len(self.finished[b]) >= K:
                        break
                    continue
                if k_new < K:
                    src[b, k_new], new_tok[b, k_new], new_scores[b, k_new] = beam, tok, sc
                    new_tokens[b][k_new] = self.tokens[b][beam] + [tok]
                    k_new += 1
            if len(self.finished[b]) >= K or s >= hi[b] or k_new == 0:
                self.done[b] = True
        self.scores = torch.as_tensor(new_scores, dtype=torch.float64, device=self.scores.device)
        self.scores[torch.as_tensor(self.done, device=self.scores.device)] = float("-inf")
        self.tokens = new_tokens
        return src, new_tok


def _step_logprobs(model, last, B, K, s, lo, hi, masks: Stream0Masks, allowed):
    """Stream 0's log-probabilities ``[B, K, V]`` at step ``s``, limited to the
    text ids and ``<sos/eos>`` within each prompt's length limits."""
    logits0, _ = model.head(last, streams="first")
    # float64: scores summed over hundreds of tokens keep their ranking
    logp = torch.log_softmax(logits0.double(), -1).view(B, K, -1)
    for b in range(B):
        if s >= hi[b]:
            logp[b] += masks.eos_only
        else:
            logp[b] += allowed
            if s < lo[b]:
                logp[b, :, SOS_EOS] = float("-inf")
    return logp


@torch.no_grad()
def beam_search_nbest(model, prompts: Sequence[np.ndarray], cfg: GenerationConfig, input_lens=None) -> list[list[GenerationResult]]:
    """Up to ``beam_size`` finished hypotheses per prompt, best first."""
    vocab = model.vocab
    N = vocab.num_streams
    K = max(1, int(cfg.beam_size))
    B = len(prompts)
    if B == 0:
        return []
    device = next(model.parameters()).device
    P, prompt_t, steps, attn = left_padded_prompts(model, prompts, device)
    lo, hi = length_limits(model, P, cfg, input_lens)
    masks = Stream0Masks(vocab, device, torch.float64)
    allowed = masks.get("text").clone()
    allowed[SOS_EOS] = 0.0  # removed again below min_len

    # the prompts run once, then their cache is copied to the K beams
    pos = (attn.cumsum(-1) - 1).clamp_min(0)
    h, cache = model.hidden(steps, attn, pos, None, use_cache=True)
    last = h[:, -1].repeat_interleave(K, 0)
    if K > 1:
        cache.batch_repeat_interleave(K)
    all_attn = attn.repeat_interleave(K, 0)
    beams = _Beams(B, K, device)
    s = 0
    while True:
        logp = _step_logprobs(model, last, B, K, s, lo, hi, masks, allowed)
        src, new_tok = beams.extend(logp, s, hi, cfg.length_penalty)
        if beams.done.all():
            break
        # feed the chosen tokens; reorder the cache to follow the beams
        cache.reorder_cache(torch.as_tensor((np.arange(B)[:, None] * K + src).reshape(-1), device=device))
        x = torch.full((B * K, N), PAD, dtype=torch.long, device=device)
        x[:, 0] = torch.as_tensor(new_tok.reshape(-1), device=device)
        for n in range(1, N):
            if frame_of_step(s + 1, n) < 0:  # stream n of step s + 1 still belongs to a prompt frame
                x[:, n] = prompt_carry(prompt_t, P, s + 1, n, device).repeat_interleave(K)
        all_attn = torch.cat([all_attn, torch.ones((B * K, 1), dtype=all_attn.dtype, device=device)], 1)
        h, cache = model.hidden(x[:, None], all_attn, all_attn.sum(-1, keepdim=True) - 1, cache, use_cache=True)
        last = h[:, -1]
        s += 1
    return [_ranked(beams.finished[b], K, N, hi[b], vocab) for b in range(B)]


def _ranked(finished, K: int, N: int, hi: int, vocab) -> list[GenerationResult]:
    res = []
    for _, logprob, hyp in sorted(finished, key=lambda t: -t[0])[:K]:
        frames = np.full((len(hyp), N), PAD, dtype=np.int64)
        frames[:, 0] = hyp
        local, _ = parse_generated(vocab, frames, "text")
        # <sos/eos> at max_len was imposed, not chosen
        res.append(GenerationResult(tokens=local, frames=frames, finished=len(hyp) < hi or hi == 0, score=logprob))
    return res
