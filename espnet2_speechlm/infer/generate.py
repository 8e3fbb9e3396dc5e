"""Batched, KV-cached, delay-aware generation of one target segment.

Given prompts (frames up to and including the target's start marker, as
``tasks.build_prompt`` makes them), the model generates the target frame by
frame.  In delayed space, step ``P + s`` holds stream ``n`` of frame
``P + s - n`` (P = prompt frames, s = generation step):

* stream n of a frame that lies inside the prompt (s < n) is copied from the
  prompt, never sampled;
* stream 0 is sampled among the target modality's ids (+ ``<sos/eos>`` once
  ``min_len`` frames exist; only ``<sos/eos>`` at ``max_len``);
* stream n >= 1 of a generated frame is sampled among codebook n-1 when that
  frame's stream 0 is a semantic token, else forced to ``<pad>``;
* after ``<sos/eos>`` at generated frame g, N-1 more steps complete the
  delayed streams of the frames before it, then the sequence is finished.

Prompts of different lengths are left-padded; position ids skip the padding
so each sequence sees exactly the positions it would see alone.  With
``use_cache=False`` every step recomputes the whole prefix (the reference the
cached path is tested against).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from ..interleave import delay, undelay
from ..tasks import parse_generated
from ..vocab import PAD, SOS_EOS


@dataclass
class SamplingConfig:
    greedy: bool = False
    temperature: float = 1.0
    top_k: int = 0  # 0: no top-k filter
    top_p: float = 1.0  # 1.0: no nucleus filter


@dataclass
class GenerationConfig:
    """Sampling per modality of the token being chosen, and length limits in frames."""

    text: SamplingConfig = field(default_factory=lambda: SamplingConfig(greedy=True))
    semantic: SamplingConfig = field(default_factory=lambda: SamplingConfig(temperature=0.8, top_k=30))
    acoustic: SamplingConfig = field(default_factory=lambda: SamplingConfig(temperature=0.8, top_k=30))
    min_len: int = 0
    max_len: int = 1000
    use_cache: bool = True
    seed: int = 0
    # text targets only (ASR): beam search with this many beams instead of
    # sampling; hypotheses are ranked by log-probability / length**length_penalty
    beam_size: int = 1
    length_penalty: float = 1.0


@dataclass
class GenerationResult:
    tokens: np.ndarray  # local ids: text [T] or audio [T, N]
    frames: np.ndarray  # global ids of the generated content frames [T, N]
    finished: bool  # True when the model emitted <sos/eos>; False when cut at max_len/context
    score: float | None = None  # beam search: log-probability of the tokens and <sos/eos>


def sample(logits: torch.Tensor, cfg: SamplingConfig, generator: torch.Generator | None) -> torch.Tensor:
    """``logits [B, K]`` (disallowed entries already -inf) -> indices [B]."""
    if cfg.greedy or cfg.temperature <= 0:
        return logits.argmax(-1)
    logits = logits.float() / cfg.temperature
    if cfg.top_k and cfg.top_k < logits.shape[-1]:
        kth = torch.topk(logits, cfg.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if cfg.top_p < 1.0:
        sorted_l, idx = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_l.softmax(-1)
        # drop a token when the mass before it already reaches top_p (keeps >= 1)
        drop = probs.cumsum(-1) - probs >= cfg.top_p
        sorted_l = sorted_l.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, idx, sorted_l)
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


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
    [B, max P, N], attention mask [B, max P])."""
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
    belongs to prompt frame ``P + step - n``, copied, never sampled (``<pad>``
    for a prompt too short to have that frame)."""
    out = torch.full((len(P),), PAD, dtype=torch.long, device=device)
    for b, pt in enumerate(prompt_t):
        f = P[b] + step - n
        if f >= 0:
            out[b] = pt[f, n]
    return out


def length_limits(model, P: np.ndarray, cfg: GenerationConfig, min_len=None, max_len=None):
    """Per-prompt (min, max) target frames, max cut so that the whole delayed
    sequence (prompt + target + <sos/eos> + N-1 flush) fits the context."""
    B = len(P)
    ctx = model.max_steps or 10**9
    lo = np.array(min_len if min_len is not None else [cfg.min_len] * B)
    hi = np.array(max_len if max_len is not None else [cfg.max_len] * B)
    hi = np.minimum(hi, ctx - P - model.vocab.num_streams).clip(min=0)
    return np.minimum(lo, hi), hi


@torch.no_grad()
def generate(
    model,
    prompts: Sequence[np.ndarray],
    modality: str | Sequence[str],
    cfg: GenerationConfig | None = None,
    min_len: Sequence[int] | None = None,
    max_len: Sequence[int] | None = None,
) -> list[GenerationResult]:
    """Generate one target segment for each prompt.

    prompts   list of ``[P_b, N]`` global-id frame matrices (ending with the target marker)
    modality  "text" or "audio", for all prompts or one per prompt
    min_len / max_len  per-prompt limits in frames (default: ``cfg``'s)
    """
    cfg = cfg or GenerationConfig()
    if getattr(getattr(model, "cfg", None), "convention", "toolkit") == "espnet_opuslm":
        from .opuslm_rules import generate_release  # the released models' own rules

        return generate_release(model, prompts, modality, cfg, min_len, max_len)
    vocab = model.vocab
    N = vocab.num_streams
    B = len(prompts)
    if B == 0:
        return []
    mods = [modality] * B if isinstance(modality, str) else list(modality)
    if cfg.beam_size > 1:
        if any(m != "text" for m in mods):
            raise ValueError(f"beam_size={cfg.beam_size}: beam search is for text targets (ASR); speech is sampled")
        from .beam_search import beam_search

        return beam_search(model, prompts, cfg, min_len, max_len)
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(cfg.seed)

    P, prompt_t, steps, attn = left_padded_prompts(model, prompts, device)
    lo, hi = length_limits(model, P, cfg, min_len, max_len)

    masks0 = Stream0Masks(vocab, device, torch.float32)
    mask0 = torch.stack([masks0.get(m) for m in mods])  # [B, V]
    # prompts that share a sampling config are sampled together
    s0_groups = []
    for key in ("text", "audio"):
        rows = [b for b, m in enumerate(mods) if m == key]
        if rows:
            s0_groups.append((cfg.text if key == "text" else cfg.semantic, torch.as_tensor(rows, device=device)))
    head = model.head
    restricted = bool(getattr(head, "restricted", False))
    sem = vocab.block("semantic") if vocab.has_block("semantic") else None

    # generated stream-0 token of each generated frame, to gate streams >= 1
    max_steps = int(hi.max()) + N + 1
    gen_steps = torch.full((B, max_steps, N), PAD, dtype=torch.long, device=device)
    eos_at = np.full(B, -1)  # generated frame index of <sos/eos>
    forced = np.zeros(B, dtype=bool)  # <sos/eos> imposed by max_len / the context
    done = np.zeros(B, dtype=bool)

    cache = None
    pos = (attn.cumsum(-1) - 1).clamp_min(0)
    h, cache = model.hidden(steps, attn, pos, None, use_cache=cfg.use_cache)
    last = h[:, -1]
    all_steps, all_attn = steps, attn
    s = 0
    while True:
        logits0, rest = head(last)
        x = torch.full((B, N), PAD, dtype=torch.long, device=device)
        # ---- stream 0 (vectorised over the batch; one sample() per sampling config)
        l0 = logits0.float() + mask0
        eos_logit = logits0[:, SOS_EOS].float()
        allow_eos = torch.as_tensor(s >= lo, device=device)
        l0[:, SOS_EOS] = torch.where(allow_eos, eos_logit, torch.full_like(eos_logit, float("-inf")))
        force = s >= hi
        if force.any():
            fidx = torch.as_tensor(np.nonzero(force)[0], device=device)
            l0[fidx] = logits0[fidx].float() + masks0.eos_only
        active = eos_at < 0
        forced |= force & active
        for cfg_i, rows in s0_groups:
            x[rows, 0] = sample(l0[rows], cfg_i, gen)
        x[torch.as_tensor(~active, device=device), 0] = PAD
        new_eos = active & (x[:, 0] == SOS_EOS).cpu().numpy()
        eos_at[new_eos] = s
        # ---- streams >= 1
        for n in range(1, N):
            if s < n:  # frame inside the prompt: copy it
                x[:, n] = prompt_carry(prompt_t, P, s, n, device)
                continue
            g = s - n  # generated frame this stream belongs to
            is_audio = torch.zeros(B, dtype=torch.bool, device=device)
            if sem is not None:
                f0 = gen_steps[:, g, 0]
                is_audio = (f0 >= sem.start) & (f0 < sem.end)
            if not bool(is_audio.any()):
                continue
            if restricted:
                ln = rest[:, n - 1, 1:].float()
                cand = head.acoustic_index[n - 1, 1:]
            else:
                cs, ce = vocab.acoustic_stream_range(n)
                ln = rest[:, n - 1, cs:ce].float()
                cand = torch.arange(cs, ce, device=device)
            idx = sample(ln, cfg.acoustic, gen)
            x[:, n] = torch.where(is_audio, cand[idx], torch.full_like(idx, PAD))
        gen_steps[:, s] = x
        for b in range(B):
            if eos_at[b] >= 0 and s >= eos_at[b] + N - 1:
                done[b] = True
        if done.all():
            break
        # ---- feed the new step
        all_attn = torch.cat([all_attn, torch.ones((B, 1), dtype=all_attn.dtype, device=device)], 1)
        if cfg.use_cache:
            pos = (all_attn.sum(-1, keepdim=True) - 1)
            h, cache = model.hidden(x[:, None], all_attn, pos, cache, use_cache=True)
        else:
            all_steps = torch.cat([all_steps, x[:, None]], 1)
            pos = (all_attn.cumsum(-1) - 1).clamp_min(0)
            h, _ = model.hidden(all_steps, all_attn, pos, None, use_cache=False)
        last = h[:, -1]
        s += 1

    results = []
    for b in range(B):
        n_steps = (eos_at[b] + N) if eos_at[b] >= 0 else s + 1
        delayed_prompt = delay(prompt_t[b], PAD)[: P[b]]
        full = torch.cat([delayed_prompt, gen_steps[b, :n_steps]], 0)
        frames = undelay(full)[P[b] :].cpu().numpy()
        tokens, finished = parse_generated(vocab, frames, mods[b])
        stop = len(tokens)
        results.append(GenerationResult(tokens=tokens, frames=frames[:stop], finished=finished and not forced[b]))
    return results
