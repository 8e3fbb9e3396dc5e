"""Decoding as ESPnet decodes the released OpusLM models (``decode_default.yaml``).

Used for models whose ``speechlm.yaml`` records ``convention: espnet_opuslm``
(imported with ``bin/import_opuslm``); the toolkit's own models keep
``generate.py``'s rules.  Steps count from 0, the first step after the prompt
(which ends with the target's start marker); ``E`` is the step at which stream
0 took ``<sos/eos>``.  At step ``s``:

* allowed ids (all others get -inf): text target: stream 0 the text block and
  ``<text_bpe_start/end>``, streams 1..8 only ``<pad>``; speech target: stream 0
  the semantic block and ``<codec_ssl_start/end>``, stream k its codebook and
  ``<pad>``.  ``<sos/eos>`` is allowed on stream 0 from step ``min_len`` on;
* warm-up: while ``s < N``, streams ``k > s`` are forced to ``<pad>``;
* at step ``max_len - (N - 1)`` an unfinished hypothesis is forced to ``<sos/eos>``;
* after ``<sos/eos>``: step ``E + 1`` is sampled as usual; from ``E + 2`` on,
  streams ``0 .. s - E - 1`` are forced to ``<pad>``; the hypothesis stops after
  step ``E + N``;
* output: the generated rows are un-delayed, the frames before the ``<sos/eos>``
  frame are kept; for speech, frames whose stream 0 is not a semantic unit
  (``<pad>``, a marker) are dropped.  A ``<pad>`` that streams 1..8 took inside
  a kept speech frame becomes code 0 (ESPnet subtracts the block offsets and
  leaves this case open; code 0 keeps the frame decodable); for text, marker
  ids are dropped.

Each stream is sampled on its own (top-k / temperature per stream, from the
decode config: speech by ``semantic`` for stream 0 and ``acoustic`` for the
codes, text by ``text``).  :class:`ReleaseRules` is pure (logits in, masked
logits out); :func:`run_release_decoding` is the step loop around any source
of logits; :func:`generate_release` runs it on a model with a KV cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from ..interleave import undelay
from ..vocab import PAD, SOS_EOS
from .config import GenerationResult
from .prompts import left_padded_prompts, length_limits

NEG = float("-inf")


@dataclass
class ReleaseRules:
    """The release's constraints for a batch: logits in, masked / forced logits out.

    ``allowed0[m]``: bool ``[V]`` of the ids stream 0 may take for target
    modality ``m`` ("text" or "audio"), ``<sos/eos>`` excluded (it has its own rule).
    Streams 1..N-1 are given as restricted logits ``[B, N-1, 1 + C]`` whose
    column 0 is ``<pad>`` and columns 1..C the stream's codebook
    (``acoustic_ids [N-1, 1 + C]`` names their global ids)."""

    num_streams: int
    allowed0: dict
    acoustic_ids: torch.Tensor

    @classmethod
    def for_vocab(cls, vocab, device="cpu") -> "ReleaseRules":
        V, N = vocab.size, vocab.num_streams
        allowed = {}
        for mod, block, marker in (("text", "text", "<text_bpe_start/end>"), ("audio", "semantic", "<codec_ssl_start/end>")):
            m = torch.zeros(V, dtype=torch.bool, device=device)
            b = vocab.block(block)
            m[b.start : b.end] = True
            m[vocab.special(marker)] = True
            allowed[mod] = m
        rows = []
        for n in range(1, N):
            s, e = vocab.acoustic_stream_range(n)
            rows.append(torch.cat([torch.tensor([PAD]), torch.arange(s, e)]))
        return cls(N, allowed, torch.stack(rows).to(device))

    def force_eos_step(self, max_len) -> np.ndarray:
        return np.maximum(np.asarray(max_len) - (self.num_streams - 1), 0)

    def constrain(self, step: int, eos_step, logits0: torch.Tensor, rest: torch.Tensor, modality: Sequence[str],
                  min_len, max_len) -> tuple[torch.Tensor, torch.Tensor]:
        """Masked copies of ``logits0 [B, V]`` and ``rest [B, N-1, 1+C]`` for step ``step``.

        ``eos_step [B]``: the step of each row's ``<sos/eos>`` (-1: none yet);
        ``min_len`` / ``max_len [B]``: per-row limits in steps.  A forced stream
        keeps one finite entry (0.0), so any sampler picks it."""
        B, N = logits0.shape[0], self.num_streams
        l0 = logits0.float().clone()
        lr = rest.float().clone()
        eos_step = np.asarray(eos_step)
        force_eos = self.force_eos_step(max_len)
        for b in range(B):
            mod = modality[b]
            allowed = self.allowed0[mod].clone()
            allowed[SOS_EOS] = step >= int(np.asarray(min_len)[b])
            l0[b, ~allowed] = NEG
            if mod == "text":
                _force(lr[b, :], 0)
            E = int(eos_step[b])
            if E < 0 and step >= force_eos[b]:
                _force(l0[b], SOS_EOS)
            for k in range(step + 1, N):  # warm-up: streams not reached yet
                _force(lr[b, k - 1], 0)
            if E >= 0 and step >= E + 2:  # flush after <sos/eos>
                last = min(step - E - 1, N - 1)
                _force(l0[b], PAD)
                for k in range(1, last + 1):
                    _force(lr[b, k - 1], 0)
        return l0, lr

    def to_ids(self, x0: torch.Tensor, xr: torch.Tensor) -> torch.Tensor:
        """Sampled indices (stream 0: global id, streams >= 1: restricted column) -> ``[B, N]`` global ids."""
        out = torch.empty(x0.shape[0], self.num_streams, dtype=torch.long, device=x0.device)
        out[:, 0] = x0
        ids = self.acoustic_ids.to(x0.device)
        for k in range(1, self.num_streams):
            out[:, k] = ids[k - 1][xr[:, k - 1]]
        return out


def _force(logits: torch.Tensor, index: int) -> None:
    logits.fill_(NEG)
    logits[..., index] = 0.0


def sample(logits: torch.Tensor, greedy: bool, temperature: float, top_k: int, top_p: float, generator) -> torch.Tensor:
    """``[..., K]`` -> indices ``[...]``, each row drawn on its own."""
    shape = logits.shape[:-1]
    flat = logits.reshape(-1, logits.shape[-1]).float()
    if greedy or temperature <= 0:
        return flat.argmax(-1).reshape(shape)
    flat = flat / temperature
    if top_k and top_k < flat.shape[-1]:
        kth = torch.topk(flat, top_k, dim=-1).values[:, -1:]
        flat = flat.masked_fill(flat < kth, NEG)
    if top_p < 1.0:
        sorted_l, idx = torch.sort(flat, descending=True, dim=-1)
        probs = sorted_l.softmax(-1)
        drop = probs.cumsum(-1) - probs >= top_p
        flat = torch.full_like(flat, NEG).scatter(-1, idx, sorted_l.masked_fill(drop, NEG))
    return torch.multinomial(flat.softmax(-1), 1, generator=generator).squeeze(-1).reshape(shape)


def _draw(cfg, logits, generator):
    return sample(logits, cfg.greedy, cfg.temperature, cfg.top_k, cfg.top_p, generator)


def run_release_decoding(next_logits: Callable, rules: ReleaseRules, modality: Sequence[str], min_len, max_len, sampling,
                         generator: torch.Generator | None = None):
    """The step loop.  ``next_logits(step, prev)`` gives ``(logits0 [B, V],
    rest [B, N-1, 1+C])`` for step ``step`` (``prev``: the rows of step - 1,
    ``[B, N]`` global ids, None at step 0).  ``sampling``: an object with
    ``text``, ``semantic`` and ``acoustic`` sampling configs.

    Returns ``(rows [B, S, N] long, eos_step [B], forced [B])``: every row
    generated (after a hypothesis stopped, its rows are ``<pad>``), the step of
    each ``<sos/eos>`` and whether it was imposed by ``max_len``."""
    B, N = len(modality), rules.num_streams
    eos_step = np.full(B, -1)
    forced = np.zeros(B, dtype=bool)
    force_at = rules.force_eos_step(max_len)
    rows, prev, step = [], None, 0
    text_rows = torch.tensor([m == "text" for m in modality])
    while True:
        logits0, rest = next_logits(step, prev)
        l0, lr = rules.constrain(step, eos_step, logits0, rest, modality, min_len, max_len)
        dev = l0.device
        x0 = torch.empty(B, dtype=torch.long, device=dev)
        for cfg_i, sel in ((sampling.text, text_rows), (sampling.semantic, ~text_rows)):
            if sel.any():
                idx = torch.nonzero(sel).flatten().to(dev)
                x0[idx] = _draw(cfg_i, l0[idx], generator)
        xr = _draw(sampling.acoustic, lr, generator)
        x = rules.to_ids(x0, xr)
        stopped = (eos_step >= 0) & (step > eos_step + N)
        if stopped.any():
            x[torch.as_tensor(stopped, device=dev)] = PAD
        new = (eos_step < 0) & (x[:, 0] == SOS_EOS).cpu().numpy()
        forced |= new & (step >= force_at)
        eos_step[new] = step
        rows.append(x)
        if ((eos_step >= 0) & (step >= eos_step + N)).all():
            break
        prev, step = x, step + 1
    return torch.stack(rows, 1), eos_step, forced


def select_output(rows: np.ndarray, modality: str, vocab) -> tuple[np.ndarray, np.ndarray, bool]:
    """One hypothesis's generated rows ``[S, N]`` -> (local tokens, global frames, ended with <sos/eos>)."""
    frames = undelay(np.asarray(rows))
    ends = np.nonzero(frames[:, 0] == SOS_EOS)[0]
    frames = frames[: int(ends[0])] if len(ends) else frames
    if modality == "text":
        b = vocab.block("text")
        frames = frames[(frames[:, 0] >= b.start) & (frames[:, 0] < b.end)]
        return frames[:, 0] - b.start, frames, bool(len(ends))
    sem, ac = vocab.block("semantic"), vocab.block("acoustic")
    frames = frames[(frames[:, 0] >= sem.start) & (frames[:, 0] < sem.end)].copy()
    local = np.empty_like(frames)
    local[:, 0] = frames[:, 0] - sem.start
    offsets = ac.start + ac.codebook_size * np.arange(vocab.num_codebooks)
    local[:, 1:] = np.where(frames[:, 1:] == PAD, 0, frames[:, 1:] - offsets)
    return local, frames, bool(len(ends))


def speaker_window(frames: np.ndarray, length: int, rng: np.random.Generator) -> np.ndarray:
    """A speaker prompt of at most ``length`` frames: a random window of a longer
    utterance, as the release's training data cut them (not its first frames)."""
    frames = np.asarray(frames)
    if len(frames) <= length:
        return frames
    start = int(rng.integers(0, len(frames) - length + 1))
    return frames[start : start + length]


@torch.no_grad()
def generate_release(model, prompts: Sequence[np.ndarray], modality, cfg, input_lens=None):
    """``generate.generate`` for models with the release's convention (same
    arguments, same :class:`~.config.GenerationResult` list)."""

    B = len(prompts)
    if B == 0:
        return []
    if cfg.beam_size > 1:
        raise ValueError("beam search is not part of the released OpusLM decoding (text is greedy); use beam_size 1")
    mods = [modality] * B if isinstance(modality, str) else list(modality)
    vocab, N = model.vocab, model.vocab.num_streams
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    P, _, steps, attn = left_padded_prompts(model, prompts, device)
    # cfg's limits and ratios, cut so that the forced stop and its flush fit the context
    lo, hi = length_limits(model, P, cfg, input_lens)
    ctx = model.max_steps or 10**9
    if (hi < N).any():
        raise ValueError(f"prompt of {int(P.max())} frames leaves no room to generate in the context of {ctx}")
    rules = ReleaseRules.for_vocab(vocab, device)
    head = model.head
    restricted = bool(getattr(head, "restricted", False))
    state = {"attn": attn, "steps": steps, "cache": None}

    def next_logits(step, prev):
        if prev is None:
            pos = (state["attn"].cumsum(-1) - 1).clamp_min(0)
            h, state["cache"] = model.hidden(state["steps"], state["attn"], pos, None, use_cache=cfg.use_cache)
        else:
            state["attn"] = torch.cat([state["attn"], torch.ones((B, 1), dtype=attn.dtype, device=device)], 1)
            if cfg.use_cache:
                pos = state["attn"].sum(-1, keepdim=True) - 1
                h, state["cache"] = model.hidden(prev[:, None], state["attn"], pos, state["cache"], use_cache=True)
            else:
                state["steps"] = torch.cat([state["steps"], prev[:, None]], 1)
                pos = (state["attn"].cumsum(-1) - 1).clamp_min(0)
                h, _ = model.hidden(state["steps"], state["attn"], pos, None, use_cache=False)
        logits0, rest = head(h[:, -1])
        if not restricted:  # full-vocabulary logits of streams >= 1: keep <pad> and each codebook
            rest = torch.stack([rest[:, k][:, rules.acoustic_ids[k]] for k in range(N - 1)], 1)
        return logits0, rest

    rows, eos_step, forced = run_release_decoding(next_logits, rules, mods, lo, hi, cfg, gen)
    rows = rows.cpu().numpy()
    out = []
    for b in range(B):
        n = int(eos_step[b]) + N + 1 if eos_step[b] >= 0 else rows.shape[1]
        tokens, frames, ended = select_output(rows[b, :n], mods[b], vocab)
        out.append(GenerationResult(tokens=tokens, frames=frames, finished=ended and not forced[b]))
    return out
