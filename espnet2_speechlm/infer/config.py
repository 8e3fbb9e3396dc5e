"""What decoding is asked for and what it returns, shared by sampling
(``generate.py``) and beam search (``beam_search.py``)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class SamplingConfig:
    greedy: bool = False
    temperature: float = 1.0
    top_k: int = 0  # 0: no top-k filter
    top_p: float = 1.0  # 1.0: no nucleus filter


@dataclass
class GenerationConfig:
    """Sampling per modality of the token being chosen, and the length limits.

    Lengths are in target frames (one per text token; 50 per second of
    speech).  ``*_ratio`` limits are relative to each input's length (speech
    frames for ASR, text tokens for TTS), given by the caller; 0 turns them
    off.  The limits are applied in :func:`espnet2_speechlm.infer.prompts.length_limits`,
    which also cuts them to the model's context."""

    text: SamplingConfig = field(default_factory=lambda: SamplingConfig(greedy=True))
    semantic: SamplingConfig = field(default_factory=lambda: SamplingConfig(temperature=0.8, top_k=30))
    acoustic: SamplingConfig = field(default_factory=lambda: SamplingConfig(temperature=0.8, top_k=30))
    min_len: int = 0
    max_len: int = 1500
    min_len_ratio: float = 0.0
    max_len_ratio: float = 0.0
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
