"""espnet2_speechlm: unified speech-text language models (OpusLM family).

The core (vocab, tasks, interleave, data, model, infer) depends on torch,
numpy and transformers only; ESPnet-backed tokenizers import espnet lazily.
"""

__version__ = "0.1.0"
