"""Speech embedding rows that start from what the codes mean.

A text LLM has no rows for speech, so the new semantic and acoustic rows
start random: every one of the 500 + 8 x 1024 codes is an unrelated vector,
and the body must learn from scratch, code by code, which ones sound alike.
A speech tokenizer fitted here knows that already: a semantic unit is a
k-means centre in feature space and an acoustic code is a residual vector of
its codebook in log-mel space.  This module gives each code the image of its
vector under one fixed random projection to the model width:

* similar centres get similar rows from the first step;
* one projection is shared by the 8 codebooks, so the sum of a frame's 8
  acoustic rows (which is what the input embedding computes) is the
  projection of the frame's decoded log-mel spectrum: the body starts with
  a linear image of the spectrogram as its input.

Rows are scaled to the text rows' spread, so a speech frame enters the body
at the scale of a text token.  The vectors come from the tokenizer
(``tokenizers.speech.code_vectors``); the model only receives arrays.
Tokenizers whose vectors are not stored (a pretrained codec, SSL k-means
fitted elsewhere) keep the random rows; the caller is told which blocks were
set.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch

from ..vocab import JointVocab


def _project(x: np.ndarray, width: int, g: torch.Generator) -> torch.Tensor:
    """``[..., d]`` -> ``[..., width]`` through a Gaussian projection with unit gain per input dim."""
    p = torch.randn(x.shape[-1], width, generator=g) / x.shape[-1] ** 0.5
    return torch.from_numpy(x) @ p


def init_speech_rows(weight: torch.Tensor, vocab: JointVocab, vecs: Mapping[str, np.ndarray], seed: int = 0,
                     source: str = "the code vectors") -> list[str]:
    """Overwrite the semantic and acoustic rows of ``weight [V, D]`` (in place)
    with projections of the code vectors ``vecs`` (``"semantic"`` ``[K, d]``
    centres and/or ``"acoustic"`` ``[Q, C, M]`` codebooks, as
    ``tokenizers.speech.code_vectors`` returns them; ``source`` names them in
    errors).  Returns the names of the blocks that were set."""
    g = torch.Generator().manual_seed(seed)
    text = vocab.block("text")
    with torch.no_grad():
        ref = weight[text.start : text.end].float()
        mean, std = ref.mean(0), ref.std(0).mean()
        D = weight.shape[1]
        done = []
        if "semantic" in vecs:
            b = vocab.block("semantic")
            c = vecs["semantic"]
            if c.shape[0] != b.size:
                raise ValueError(f"{source}: {c.shape[0]} semantic centres, the vocabulary's semantic block has {b.size}")
            # centres in standard units per feature dim: MFCC and delta dims differ in range by orders of magnitude
            c = (c - c.mean(0)) / (c.std(0) + 1e-6)
            rows = _project(c, D, g)
            weight[b.start : b.end] = (mean + std * rows / rows.std()).to(weight.dtype)
            done.append("semantic")
        if "acoustic" in vecs:
            b = vocab.block("acoustic")
            books = vecs["acoustic"]
            Q, C, _ = books.shape
            if (Q, C) != (vocab.num_codebooks, b.size // max(vocab.num_codebooks, 1)):
                raise ValueError(f"{source}: codebooks of shape {(Q, C)}, the vocabulary has "
                                 f"{vocab.num_codebooks} x {b.size // max(vocab.num_codebooks, 1)}")
            rows = _project(books, D, g)  # one projection for every codebook: the rows of a frame sum to its spectrum's image
            # scaled by the first codebook's spread (the coarse spectrum; later ones hold smaller residuals)
            weight[b.start : b.end] = (std * rows / rows[0].std()).reshape(Q * C, D).to(weight.dtype)
            done.append("acoustic")
    return done
