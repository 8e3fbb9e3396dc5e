"""The speech LM's own configuration (the body's is the Hugging Face config)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class LossWeights:
    """Per-token cross-entropy weights by the modality of the *target* token.

    Defaults are the released OpusLM configs: one speech frame
    (0.5 + 8 * 0.0625 = 1.0) weighs as much as one text token.
    """

    text: float = 1.0
    semantic: float = 0.5
    acoustic: float = 0.0625
    special: float = 10.0
    pad: float = 0.0  # pad targets (streams >= 1 of text frames) are forced at decoding


@dataclass
class ModelConfig:
    num_streams: int = 9
    loss_weights: LossWeights = field(default_factory=LossWeights)
    # output head: "shared" = one head for all streams plus a learned per-stream
    # embedding added to the hidden state (as the released checkpoints do)
    head: str = "shared"
    # compute the logits of streams >= 1 over <pad> + their codebook only
    restrict_acoustic_logits: bool = True
    # compute the logits of stream 0 over every id but the acoustic codes (which
    # stream 0 never holds): they get probability 0 instead of a learned small one
    restrict_stream0_logits: bool = True
    # weight of an auxiliary CTC loss (0: off, as in the paper).  Wherever speech in
    # the prompt is followed by text targets (ASR), the hidden states of those speech
    # frames are scored by CTC against the text, through the shared output head over
    # <pad> (the blank) and the text ids: the frames learn what they say directly,
    # instead of only through the text positions' attention
    ctc_weight: float = 0.0
    attn_implementation: str = "sdpa"
    gradient_checkpointing: bool = False
    # the vocabulary this model was built for (vocab.json's fingerprint)
    vocab_fingerprint: str = ""
