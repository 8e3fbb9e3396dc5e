"""Guided attention for the decoder-only LM (an auxiliary loss; off by default).

Tachibana et al. (2018) made a TTS attention learn its alignment in a
fraction of the steps by penalising attention far from the diagonal: the
n-th of N outputs should look near the fraction n/N of its input.  Here the
same prior is put on a few chosen heads of the decoder: wherever a target
run follows the conditioning run of the other modality (ASR: speech prompt
then text targets; TTS: text prompt then speech targets), those heads' queries
over the target are asked to attend near the diagonal of the conditioning run
(the pairs are :func:`~.loss.alignment_pairs`, which also place the auxiliary CTC loss).

For a query that predicts target j of N and a key at position t of the T
conditioning steps the penalty weight is

    W = 1 - exp(-((j + 1/2)/N - (t + 1/2)/T)^2 / (2 sigma^2))

and 1 for every key outside the conditioning run (task markers, a speaker
prompt, earlier examples of a packed row).  A query's penalty is
``sum_k A[q, k] W[q, k]`` (between 0 and 1), summed over queries, heads and
layers; the model adds ``weight`` times that sum to its loss sum, so it is
normalised by the batch's frames like the cross-entropy.

The heads' queries and keys are recomputed from the attention module's own
input (captured by a forward pre-hook) with its own projections, norms and
rotary embedding, so any Llama-like body works (Llama/SmolLM2, Qwen2,
OLMo-2) and the attention kernel (SDPA, flash) is left untouched.
"""

from __future__ import annotations

import torch
import torch.nn as nn


def diagonal_weights(num_queries: int, num_keys: int, sigma: float, device=None) -> torch.Tensor:
    """``[num_queries, num_keys]``: the penalty weight W of a query over the
    conditioning run (0 on the diagonal, towards 1 away from it)."""
    fq = (torch.arange(num_queries, device=device, dtype=torch.float32) + 0.5) / num_queries
    fk = (torch.arange(num_keys, device=device, dtype=torch.float32) + 0.5) / num_keys
    return 1.0 - torch.exp(-((fq[:, None] - fk[None, :]) ** 2) / (2.0 * sigma * sigma))


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # rotary embedding in the half-split layout the Hugging Face Llama family uses
    a, b = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-b, a), dim=-1) * sin


def _norm(attn: nn.Module, name: str, x: torch.Tensor, heads: int, head_dim: int) -> torch.Tensor:
    """Apply ``attn.<name>`` (OLMo-2: over the whole projection; Qwen3: per
    head) to ``x [..., heads * head_dim]``; returns ``[..., heads, head_dim]``."""
    norm = getattr(attn, name, None)
    if norm is None:
        return x.unflatten(-1, (heads, head_dim))
    size = norm.weight.numel()
    if size == heads * head_dim:
        return norm(x).unflatten(-1, (heads, head_dim))
    if size == head_dim:
        return norm(x.unflatten(-1, (heads, head_dim)))
    raise ValueError(f"guided attention: {type(attn).__name__}.{name} has {size} weights, neither one head ({head_dim}) nor all ({heads * head_dim})")


class AttentionCapture:
    """Forward pre-hooks on chosen layers' attention modules that keep their
    input (normalised hidden states and rotary cos/sin) while ``active``."""

    def __init__(self, layers: nn.ModuleList, layer_ids: list[int]):
        n = len(layers)
        bad = [i for i in layer_ids if not -n <= i < n]
        if bad:
            raise ValueError(f"guided attention: layers {bad} do not exist in a body of {n} layers")
        self.layer_ids = sorted({i % n for i in layer_ids})
        self.modules = {i: layers[i].self_attn for i in self.layer_ids}
        self.active = False
        self.inputs: dict[int, tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]] = {}
        self._handles = [m.register_forward_pre_hook(self._hook(i), with_kwargs=True) for i, m in self.modules.items()]

    def _hook(self, i: int):
        def keep(module, args, kwargs):
            if self.active:
                h = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
                pe = kwargs.get("position_embeddings")
                if pe is None:
                    raise ValueError(f"guided attention: {type(module).__name__} gets no position_embeddings (not a rotary Llama-like body?)")
                self.inputs[i] = (h, pe)

        return keep

    def clear(self) -> None:
        self.inputs.clear()

    def queries_keys(self, i: int, heads: list[int], b: int, q_pos: torch.Tensor, k_end: int):
        """Rotated queries ``[H, len(q_pos), d]`` of ``heads`` at positions
        ``q_pos`` of row ``b``, their keys ``[H, k_end, d]`` at 0..k_end-1, and
        the module's score scaling."""
        attn = self.modules[i]
        h, (cos, sin) = self.inputs[i]
        d = attn.head_dim
        nq = attn.q_proj.out_features // d
        nkv = attn.k_proj.out_features // d
        kv_heads = [hd // (nq // nkv) for hd in heads]
        q = _norm(attn, "q_norm", attn.q_proj(h[b, q_pos]), nq, d)[:, heads]  # [Q, H, d]
        k = _norm(attn, "k_norm", attn.k_proj(h[b, :k_end]), nkv, d)[:, kv_heads]  # [K, H, d]
        cb, sb = cos[b] if cos.shape[0] > 1 else cos[0], sin[b] if sin.shape[0] > 1 else sin[0]
        q = _rotate(q, cb[q_pos, None], sb[q_pos, None])
        k = _rotate(k, cb[:k_end, None], sb[:k_end, None])
        return q.transpose(0, 1), k.transpose(0, 1), attn.scaling


def guided_attention_sum(capture: AttentionCapture, heads: list[int], pairs_per_row, sigma: float):
    """Summed penalty over every (layer, head, query) of every pair, and the
    number of queries it was summed over (per layer and head)."""
    total = None
    count = 0
    for b, pairs in enumerate(pairs_per_row):
        for (c0, c1), (y0, y1) in pairs:
            # the hidden state at position p predicts the token at p + 1
            q_pos = torch.arange(y0 - 1, y1 - 1)
            k_end = y1 - 1
            w = torch.ones(len(q_pos), k_end)
            w[:, c0:c1] = diagonal_weights(len(q_pos), c1 - c0, sigma)
            causal = q_pos[:, None] >= torch.arange(k_end)[None, :]
            count += len(q_pos)
            for i in capture.layer_ids:
                q, k, scale = capture.queries_keys(i, heads, b, q_pos.to(capture.inputs[i][0].device), k_end)
                s = (q.float() @ k.float().transpose(1, 2)) * scale  # [H, Q, K]
                s = s.masked_fill(~causal.to(s.device), float("-inf"))
                a = torch.softmax(s, dim=-1)
                part = (a * w.to(s.device)).sum()
                total = part if total is None else total + part
    return total, count
