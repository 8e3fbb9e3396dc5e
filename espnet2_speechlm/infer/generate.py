"""Batched, KV-cached, delay-aware sampling of one target segment.

Given prompts (frames up to and including the target's start marker, as
``tasks.build_prompt`` makes them), the model generates the target frame by
frame.  In delayed space generation step ``s`` is step ``P + s`` (P = prompt
frames), and its stream ``n`` belongs to frame ``interleave.frame_of_step(s, n)``
of the target:

* stream n of a frame that lies inside the prompt (a negative target frame)
  is copied from the prompt, never sampled;
* stream 0 is sampled among the target modality's ids (+ ``<sos/eos>`` once
  ``min_len`` frames exist; only ``<sos/eos>`` at ``max_len``);
* stream n >= 1 of a generated frame is sampled among codebook n-1 when that
  frame's stream 0 is a semantic token, else forced to ``<pad>``;
* after ``<sos/eos>`` at generated frame g, N-1 more steps complete the
  delayed streams of the frames before it, then the sequence is finished.

Prompts of different lengths are left-padded; position ids skip the padding
so each sequence sees exactly the positions it would see alone.  With
``use_cache=False`` every step recomputes the whole prefix (the reference the
cached path is tested against).  Text targets can also be decoded by beam
search (``beam_search.py``); the API (``api.py``) chooses between the two.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..interleave import delayed_length, frame_of_step, step_of_frame, undelay
from ..tasks import parse_generated
from ..vocab import PAD, SOS_EOS
from .config import GenerationConfig, GenerationResult, SamplingConfig
from .prompts import Stream0Masks, left_padded_prompts, length_limits, prompt_carry

__all__ = ["GenerationConfig", "GenerationResult", "SamplingConfig", "generate", "sample"]


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


class _Targets:
    """What has been generated for a batch of prompts, and how the next step is chosen."""

    def __init__(self, model, prompts, mods: list[str], cfg: GenerationConfig, input_lens, device):
        self.model, self.vocab, self.cfg, self.mods, self.device = model, model.vocab, cfg, mods, device
        self.N, self.B = model.vocab.num_streams, len(prompts)
        self.gen = torch.Generator(device=device).manual_seed(cfg.seed)
        self.P, self.prompt_t, self.steps, self.attn = left_padded_prompts(model, prompts, device)
        self.lo, self.hi = length_limits(model, self.P, cfg, input_lens)
        self.masks0 = Stream0Masks(self.vocab, device, torch.float32)
        self.mask0 = torch.stack([self.masks0.get(m) for m in mods])  # [B, V]
        # prompts that share a sampling config are sampled together
        self.groups = []
        for key, scfg in (("text", cfg.text), ("audio", cfg.semantic)):
            rows = [b for b, m in enumerate(mods) if m == key]
            if rows:
                self.groups.append((scfg, torch.as_tensor(rows, device=device)))
        self.sem = self.vocab.block("semantic") if self.vocab.has_block("semantic") else None
        # every generated step; stream 0 of a generated frame gates its streams >= 1
        longest = delayed_length(int(self.hi.max()) + 1, self.N)  # the longest target and its <sos/eos>
        self.gen_steps = torch.full((self.B, longest, self.N), PAD, dtype=torch.long, device=device)
        self.eos_at = np.full(self.B, -1)  # generated frame of <sos/eos>
        self.forced = np.zeros(self.B, dtype=bool)  # <sos/eos> imposed by max_len / the context

    def choose(self, s: int, logits0: torch.Tensor, rest: torch.Tensor) -> torch.Tensor:
        """The ``[B, N]`` tokens of generation step ``s``."""
        x = torch.full((self.B, self.N), PAD, dtype=torch.long, device=self.device)
        x[:, 0] = self._stream0(s, logits0)
        for n in range(1, self.N):
            x[:, n] = self._stream(s, n, rest)
        self.gen_steps[:, s] = x
        return x

    def _stream0(self, s: int, logits0: torch.Tensor) -> torch.Tensor:
        """Vectorised over the batch, one :func:`sample` per sampling config."""
        l0 = logits0.float() + self.mask0
        eos_logit = logits0[:, SOS_EOS].float()
        allow_eos = torch.as_tensor(s >= self.lo, device=self.device)
        l0[:, SOS_EOS] = torch.where(allow_eos, eos_logit, torch.full_like(eos_logit, float("-inf")))
        force = s >= self.hi
        if force.any():
            fidx = torch.as_tensor(np.nonzero(force)[0], device=self.device)
            l0[fidx] = logits0[fidx].float() + self.masks0.eos_only
        active = self.eos_at < 0
        self.forced |= force & active
        x0 = torch.full((self.B,), PAD, dtype=torch.long, device=self.device)
        for scfg, rows in self.groups:
            x0[rows] = sample(l0[rows], scfg, self.gen)
        x0[torch.as_tensor(~active, device=self.device)] = PAD
        self.eos_at[active & (x0 == SOS_EOS).cpu().numpy()] = s
        return x0

    def _stream(self, s: int, n: int, rest: torch.Tensor) -> torch.Tensor:
        """Stream ``n`` >= 1: copied from the prompt, a code of codebook n-1, or ``<pad>``."""
        g = frame_of_step(s, n)  # the target frame this stream belongs to
        if g < 0:
            return prompt_carry(self.prompt_t, self.P, s, n, self.device)
        pad = torch.full((self.B,), PAD, dtype=torch.long, device=self.device)
        if self.sem is None:
            return pad
        f0 = self.gen_steps[:, g, 0]
        is_audio = (f0 >= self.sem.start) & (f0 < self.sem.end)
        if not bool(is_audio.any()):
            return pad
        head = self.model.head
        if head.restricted:
            ln = rest[:, n - 1, 1:].float()
            cand = head.acoustic_index[n - 1, 1:]
        else:
            cs, ce = self.vocab.acoustic_stream_range(n)
            ln = rest[:, n - 1, cs:ce].float()
            cand = torch.arange(cs, ce, device=self.device)
        idx = sample(ln, self.cfg.acoustic, self.gen)
        return torch.where(is_audio, cand[idx], pad)

    def all_done(self, s: int) -> bool:
        """Every target has its <sos/eos> frame complete in all N streams."""
        return bool(((self.eos_at >= 0) & (s >= step_of_frame(self.eos_at, self.N - 1))).all())

    def results(self) -> list[GenerationResult]:
        out = []
        for b in range(self.B):
            # generated frames [0, eos] are complete in steps [0, eos + N - 1]; none reads the prompt
            frames = undelay(self.gen_steps[b, : delayed_length(self.eos_at[b] + 1, self.N)]).cpu().numpy()
            tokens, finished = parse_generated(self.vocab, frames, self.mods[b])
            out.append(GenerationResult(tokens=tokens, frames=frames[: len(tokens)], finished=finished and not self.forced[b]))
        return out


@torch.no_grad()
def generate(
    model,
    prompts: Sequence[np.ndarray],
    modality: str | Sequence[str],
    cfg: GenerationConfig | None = None,
    input_lens: Sequence[int] | None = None,
) -> list[GenerationResult]:
    """Sample one target segment for each prompt.

    prompts     list of ``[P_b, N]`` global-id frame matrices (ending with the target marker)
    modality    "text" or "audio", for all prompts or one per prompt
    input_lens  per-prompt input lengths, for ``cfg``'s ``*_len_ratio`` limits
    """
    cfg = cfg or GenerationConfig()
    if getattr(getattr(model, "cfg", None), "convention", "toolkit") == "espnet_opuslm":
        from .opuslm_rules import generate_release  # the released models' own rules

        return generate_release(model, prompts, modality, cfg, input_lens)
    if cfg.beam_size > 1:
        raise ValueError(f"beam_size={cfg.beam_size}: generate() samples; beam search is infer.beam_search (the API chooses)")
    if len(prompts) == 0:
        return []
    mods = [modality] * len(prompts) if isinstance(modality, str) else list(modality)
    device = next(model.parameters()).device
    t = _Targets(model, prompts, mods, cfg, input_lens, device)
    pos = (t.attn.cumsum(-1) - 1).clamp_min(0)
    h, cache = model.hidden(t.steps, t.attn, pos, None, use_cache=cfg.use_cache)
    all_steps, all_attn = t.steps, t.attn
    s = 0
    while True:
        x = t.choose(s, *model.head(h[:, -1]))
        if t.all_done(s):
            return t.results()
        # feed the new step: through the cache, or by recomputing the whole prefix
        all_attn = torch.cat([all_attn, torch.ones((t.B, 1), dtype=all_attn.dtype, device=device)], 1)
        if cfg.use_cache:
            pos = all_attn.sum(-1, keepdim=True) - 1
            h, cache = model.hidden(x[:, None], all_attn, pos, cache, use_cache=True)
        else:
            all_steps = torch.cat([all_steps, x[:, None]], 1)
            pos = (all_attn.cumsum(-1) - 1).clamp_min(0)
            h, _ = model.hidden(all_steps, all_attn, pos, None, use_cache=False)
        s += 1
