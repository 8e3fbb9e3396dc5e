"""Output heads: last hidden state -> one prediction per stream.

The head replaces the body's ``lm_head`` module, so wrappers that act on
modules (FSDP, DeepSpeed ZeRO-3 parameter gathering) see an ordinary module
call; its ``weight`` stays tied to the input embedding when the body ties them.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class MultiStreamEmbedding(nn.Embedding):
    """Input embedding whose forward on ``[B, S, N]`` ids sums the N stream
    embeddings, leaving ``<pad>`` out of the sum (so a text frame embeds
    exactly as the base LLM embeds its token).  On ``[B, S]`` ids it is a
    plain embedding."""

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.dim() != 3:
            return super().forward(ids)
        B, S, N = ids.shape
        out = F.embedding_bag(ids.reshape(B * S, N), self.weight, mode="sum", padding_idx=self.padding_idx)
        return out.view(B, S, -1)


class SharedStreamHead(nn.Linear):
    """One output projection for every stream plus a per-stream embedding.

    Stream n >= 1 only ever holds ``<pad>`` or a code of codebook n - 1, so
    (when ``acoustic_index`` is set) its logits are computed over those
    ``1 + C`` rows of the weight: 8 x 1025 logits instead of 8 x 62k per step
    at the released sizes.  Stream 0 never holds an acoustic code, so (when
    ``stream0_index`` is set) its logits are computed over the other ids only;
    the acoustic ids then get ``-inf`` (probability 0) in the full-vocabulary
    logits.  At the released sizes this saves 8,192 of 62k logits per step;
    for a small text vocabulary it is most of stream 0's cost.
    """

    def __init__(self, in_features: int, out_features: int, num_streams: int, bias: bool = False):
        super().__init__(in_features, out_features, bias=bias)
        self.num_streams = num_streams
        self.stream_emb = nn.Parameter(torch.zeros(num_streams, in_features))
        # [N-1, 1 + C] global ids scored for streams 1..N-1 (row 0 is <pad>)
        self.register_buffer("acoustic_index", torch.zeros(0, 0, dtype=torch.long), persistent=False)
        # [V0] global ids scored for stream 0 (empty: all), and its inverse [V]: global id ->
        # position in stream0_index, -1 if not scored (the training loss maps its targets with it)
        self.register_buffer("stream0_index", torch.zeros(0, dtype=torch.long), persistent=False)
        self.register_buffer("stream0_local", torch.zeros(0, dtype=torch.long), persistent=False)
        # [1 + T] the ids scored by the auxiliary CTC loss: <pad> (its blank) and the text ids
        self.register_buffer("ctc_index", torch.zeros(0, dtype=torch.long), persistent=False)

    def set_acoustic_index(self, index: torch.Tensor | None) -> None:
        self.acoustic_index = (index if index is not None else torch.zeros(0, 0, dtype=torch.long)).to(self.weight.device)

    def set_stream0_index(self, index: torch.Tensor | None) -> None:
        dev = self.weight.device
        self.stream0_index = (index if index is not None else torch.zeros(0, dtype=torch.long)).to(dev)
        local = torch.zeros(0, dtype=torch.long, device=dev)
        if self.stream0_index.numel():
            local = torch.full((self.weight.shape[0],), -1, dtype=torch.long, device=dev)
            local[self.stream0_index] = torch.arange(self.stream0_index.numel(), device=dev)
        self.stream0_local = local

    def set_ctc_index(self, index: torch.Tensor | None) -> None:
        self.ctc_index = (index if index is not None else torch.zeros(0, dtype=torch.long)).to(self.weight.device)

    @property
    def restricted(self) -> bool:
        return self.acoustic_index.numel() > 0

    def forward(self, hidden: torch.Tensor, streams: str = "all", local0: bool = False, ctc_hidden: torch.Tensor | None = None):
        """``hidden [..., D]`` -> ``(logits0 [..., V], logits_rest)`` where
        ``logits_rest`` is ``[..., N-1, 1+C]`` (restricted) or ``[..., N-1, V]``.
        ``streams="first"`` computes stream 0 only (``logits_rest`` is None).
        ``local0=True`` returns stream 0's logits over ``stream0_index`` only
        (``[..., V0]``; the training loss maps its targets to that range).
        With ``ctc_hidden [..., D]`` (possibly empty) a third output holds its
        stream-0 logits over ``ctc_index`` (the auxiliary CTC loss): computed in
        the same call, so that every rank runs this module once per forward
        whether or not its batch has ASR examples (ZeRO-3 gathers the weight
        once per call, collectively)."""
        if ctc_hidden is not None:
            idx = self.ctc_index
            ctc = F.linear(ctc_hidden + self.stream_emb[0], self.weight[idx], self.bias[idx] if self.bias is not None else None)
            return (*self.forward(hidden, streams, local0), ctc)
        h0 = hidden + self.stream_emb[0]
        idx = self.stream0_index
        if idx.numel():
            local = F.linear(h0, self.weight[idx], self.bias[idx] if self.bias is not None else None)
            if local0:
                logits0 = local
            else:
                logits0 = local.new_full(local.shape[:-1] + (self.weight.shape[0],), float("-inf"))
                logits0[..., idx] = local
        else:
            logits0 = F.linear(h0, self.weight, self.bias)
        if streams == "first" or self.num_streams == 1:
            return logits0, None
        h = hidden.unsqueeze(-2) + self.stream_emb[1:]  # [..., N-1, D]
        if self.restricted:
            w = self.weight[self.acoustic_index]  # [N-1, 1+C, D]
            rest = torch.einsum("...nd,nvd->...nv", h, w)
            if self.bias is not None:
                rest = rest + self.bias[self.acoustic_index]
        else:
            rest = F.linear(h, self.weight, self.bias)
        return logits0, rest

