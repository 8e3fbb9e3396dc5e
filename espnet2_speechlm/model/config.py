"""The speech LM's own configuration (the body's is the Hugging Face config)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class LossWeights:
    """Per-token cross-entropy weights by the modality of the *target* token.

    As in the released OpusLM configs, one speech frame (0.5 + 8 * 0.0625 = 1.0)
    weighs as much as one text token.  Their special-token weight (10) is not
    the default: those configs put the loss on the whole sequence, where
    specials are a small share of the tokens.  With the loss on the targets
    only (the default ``loss_region``) the closing ``<sos/eos>`` is about one
    target token in eight, and weighted 10 it takes most of the gradient: a
    small model then learns where a transcript ends long before what it says
    (``bin/learning_probe.py``, ``test/test_learning_probe.py``).
    """

    text: float = 1.0
    semantic: float = 0.5
    acoustic: float = 0.0625
    special: float = 1.0
    pad: float = 0.0  # pad targets (streams >= 1 of text frames) are forced at decoding


@dataclass
class GuidedAttention:
    """An auxiliary loss that pulls chosen heads towards the diagonal alignment
    of a target with its conditioning (ASR: text over speech, TTS: speech over
    text); see ``guided_attention.py``.  ``weight`` 0 turns it off (the paper)."""

    weight: float = 0.0
    sigma: float = 0.2  # width of the diagonal band, as a fraction of the lengths
    layers: list[int] = field(default_factory=lambda: [2])  # body layer indices (negative from the top)
    heads: list[int] = field(default_factory=lambda: [0])  # query heads in each of those layers


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
    # which hidden states the CTC loss scores: 0 the body's output (after its final norm); k > 0
    # the output of decoder layer k (1-based) through the final norm, so that the layers above it
    # read speech frames that already say which text they hold
    ctc_layer: int = 0
    guided_attention: GuidedAttention = field(default_factory=GuidedAttention)
    attn_implementation: str = "sdpa"
    # Whose conventions the weights were trained with: "toolkit" (this toolkit's own
    # models) or "espnet_opuslm" (imported from the released OpusLM checkpoints,
    # release/opuslm.py).  The latter sums the <pad> row into the input embedding as
    # ESPnet did, and decoding follows the release's rules (infer/opuslm_rules.py).
    convention: str = "toolkit"
    gradient_checkpointing: bool = False
    # the vocabulary this model was built for (vocab.json's fingerprint)
    vocab_fingerprint: str = ""
