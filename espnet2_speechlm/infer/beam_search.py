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
from .generate import GenerationConfig, GenerationResult, Stream0Masks, left_padded_prompts, length_limits, prompt_carry


@torch.no_grad()
def beam_search(model, prompts: Sequence[np.ndarray], cfg: GenerationConfig, min_len=None, max_len=None) -> list[GenerationResult]:
    """The best-ranked finished hypothesis per prompt (``score`` = its log-probability)."""
    return [hyps[0] for hyps in beam_search_nbest(model, prompts, cfg, min_len, max_len)]


@torch.no_grad()
def beam_search_nbest(model, prompts: Sequence[np.ndarray], cfg: GenerationConfig, min_len=None, max_len=None) -> list[list[GenerationResult]]:
    """Up to ``beam_size`` finished hypotheses per prompt, best first."""
    vocab = model.vocab
    N = vocab.num_streams
    K = max(1, int(cfg.beam_size))
    B = len(prompts)
    if B == 0:
        return []
    device = next(model.parameters()).device
    P, prompt_t, steps, attn = left_padded_prompts(model, prompts, device)
    lo, hi = length_limits(model, P, cfg, min_len, max_len)

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

    # live beams: score and tokens; beam 0 alone at the start so the first
    # step does not pick the same token K times
    scores = torch.full((B, K), float("-inf"), dtype=torch.float64, device=device)
    scores[:, 0] = 0.0
    tokens = [[[] for _ in range(K)] for _ in range(B)]
    finished: list[list[tuple[float, float, list[int]]]] = [[] for _ in range(B)]  # (rank, log p, tokens)
    done = np.zeros(B, dtype=bool)
    s = 0
    while True:
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
        cand = (scores[:, :, None] + logp).view(B, -1)  # [B, K * V]
        top_scores, top_idx = cand.topk(min(2 * K, cand.shape[1]), dim=-1)
        top_scores, top_idx = top_scores.cpu().numpy(), top_idx.cpu().numpy()
        V = logp.shape[-1]
        src = np.zeros((B, K), dtype=np.int64)  # beam each new beam extends
        new_tok = np.full((B, K), PAD, dtype=np.int64)
        new_scores = np.full((B, K), -np.inf)
        new_tokens = [[[] for _ in range(K)] for _ in range(B)]
        for b in range(B):
            if done[b]:
                continue
            k_new = 0
            for sc, idx in zip(top_scores[b], top_idx[b]):
                if not np.isfinite(sc):
                    break
                beam, tok = divmod(int(idx), V)
                if tok == SOS_EOS:
                    hyp = tokens[b][beam]
                    length = len(hyp) + 1
                    rank = float(sc) / (length ** cfg.length_penalty) if cfg.length_penalty else float(sc)
                    finished[b].append((rank, float(sc), hyp))
                    if len(finished[b]) >= K:
                        break
                    continue
                if k_new < K:
                    src[b, k_new], new_tok[b, k_new], new_scores[b, k_new] = beam, tok, sc
                    new_tokens[b][k_new] = tokens[b][beam] + [tok]
                    k_new += 1
            if len(finished[b]) >= K or s >= hi[b] or k_new == 0:
                done[b] = True
        if done.all():
            break
        # ---- feed the chosen tokens; reorder the cache to follow the beams
        scores = torch.as_tensor(new_scores, dtype=torch.float64, device=device)
        scores[torch.as_tensor(done, device=device)] = float("-inf")
        tokens = new_tokens
        beam_idx = torch.as_tensor((np.arange(B)[:, None] * K + src).reshape(-1), device=device)
        cache.reorder_cache(beam_idx)
        x = torch.full((B * K, N), PAD, dtype=torch.long, device=device)
        x[:, 0] = torch.as_tensor(new_tok.reshape(-1), device=device)
        for n in range(1, N):
            if frame_of_step(s + 1, n) < 0:  # stream n of step s + 1 still belongs to a prompt frame
                x[:, n] = prompt_carry(prompt_t, P, s + 1, n, device).repeat_interleave(K)
        all_attn = torch.cat([all_attn, torch.ones((B * K, 1), dtype=all_attn.dtype, device=device)], 1)
        pos = all_attn.sum(-1, keepdim=True) - 1
        h, cache = model.hidden(x[:, None], all_attn, pos, cache, use_cache=True)
        last = h[:, -1]
        s += 1

    out = []
    for b in range(B):
        hyps = sorted(finished[b], key=lambda t: -t[0])[:K]
        res = []
        for _, logprob, hyp in hyps:
            frames = np.full((len(hyp), N), PAD, dtype=np.int64)
            frames[:, 0] = hyp
            local, _ = parse_generated(vocab, frames, "text")
            # <sos/eos> at max_len was imposed, not chosen
            res.append(GenerationResult(tokens=local, frames=frames, finished=len(hyp) < hi[b] or hi[b] == 0, score=logprob))
        out.append(res)
    return out
