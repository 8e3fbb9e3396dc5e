"""Text ability of a speech LM: perplexity and multiple-choice log-likelihood.

The paper's text-retention claim compares a speech LM with the text LLM it
was initialised from.  Both are scored on the same token ids with the same
rule: the log-probability of every token after the first of each line (the
first token has no context in the text LLM, which has no BOS of ours), so
the two perplexities are directly comparable.  The speech LM sees each line
as a textlm sequence: ``<sos/eos> <textlm_task> <text_bpe_start/end> ids...``.

Multiple choice (the MMLU protocol): the answer is the choice whose tokens
have the highest total log-likelihood after the context.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ..data.collate import collate
from ..tasks import build_sequence


def _first_stream_logprobs(model, seqs):
    """Log-softmax of stream 0 over a batch of sequences (delayed, right-padded by ``collate``)."""
    device = next(model.parameters()).device
    b = collate(seqs)
    steps, attn = b["steps"].to(device), b["attention_mask"].to(device)
    h, _ = model.hidden(steps, attn)
    return model.head(h, streams="first")[0].float().log_softmax(-1), steps


def _segment_logprobs(logp, steps, seqs, lengths, greedy_out=None):
    """log p of every content frame after the first of each sequence's first
    segment; with ``greedy_out`` (a list), also whether each was the argmax."""
    out = []
    for b, (s, n) in enumerate(zip(seqs, lengths)):
        start = s.segments[0].start  # the token at frame t is predicted from step t - 1
        tgt = steps[b, start + 1 : start + n, 0]
        rows = logp[b, start : start + n - 1]
        out.append(rows.gather(-1, tgt.unsqueeze(-1)).squeeze(-1).cpu().numpy())
        if greedy_out is not None:
            greedy_out.append((rows.argmax(-1) == tgt).cpu().numpy())
    return out


@torch.no_grad()
def speechlm_logprobs(model, sequences: Sequence[Sequence[int]], batch_size: int = 16, greedy_out: list | None = None) -> list[np.ndarray]:
    """For each list of text ids (local): log p(ids[i] | prefix, ids[:i]) for i >= 1.
    ``greedy_out``: a list that receives, per sequence, whether each token was the argmax."""
    out = []
    for i in range(0, len(sequences), batch_size):
        chunk = sequences[i : i + batch_size]
        seqs = [build_sequence(model.vocab, "textlm", {"text": np.asarray(s, dtype=np.int64)}) for s in chunk]
        logp, steps = _first_stream_logprobs(model, seqs)
        out += _segment_logprobs(logp, steps, seqs, [len(s) for s in chunk], greedy_out)
    return out


@torch.no_grad()
def hf_logprobs(hf_model, sequences: Sequence[Sequence[int]], batch_size: int = 16) -> list[np.ndarray]:
    """The same quantity for a plain Hugging Face causal LM on the same ids."""
    out = []
    device = next(hf_model.parameters()).device
    for i in range(0, len(sequences), batch_size):
        chunk = sequences[i : i + batch_size]
        L = max(len(s) for s in chunk)
        ids = torch.zeros((len(chunk), L), dtype=torch.long)
        attn = torch.zeros((len(chunk), L), dtype=torch.long)
        for b, s in enumerate(chunk):
            ids[b, : len(s)] = torch.as_tensor(list(s))
            attn[b, : len(s)] = 1
        logits = hf_model(input_ids=ids.to(device), attention_mask=attn.to(device)).logits.float()
        logp = logits.log_softmax(-1)
        for b, s in enumerate(chunk):
            n = len(s)
            tgt = ids[b, 1:n].to(device)
            out.append(logp[b, : n - 1].gather(-1, tgt.unsqueeze(-1)).squeeze(-1).cpu().numpy())
    return out


def perplexity(logprobs: Sequence[np.ndarray]) -> tuple[float, int]:
    """(perplexity, number of scored tokens)."""
    n = sum(len(x) for x in logprobs)
    if n == 0:
        raise ValueError("perplexity: no token to score (every line has fewer than two tokens)")
    return math.exp(-float(sum(x.sum() for x in logprobs)) / n), n


@dataclass
class MCItem:
    context: str
    choices: list[str]
    answer: int


def multiple_choice_accuracy(model, tokenizer, items: Sequence[MCItem]) -> dict:
    """Pick the choice with the highest log-likelihood of its tokens after the
    context (both tokenised separately and concatenated, as the MMLU harness
    does); returns accuracy and the per-item predictions."""
    preds = []
    for it in items:
        ctx = list(tokenizer.encode(it.context))
        seqs = [ctx + list(tokenizer.encode(c)) for c in it.choices]
        lps = speechlm_logprobs(model, seqs)
        scores = [float(lp[len(ctx) - 1 :].sum()) for lp in lps]
        preds.append(int(np.argmax(scores)))
    correct = sum(int(p == it.answer) for p, it in zip(preds, items))
    return {"accuracy": correct / max(1, len(items)), "num_items": len(items), "predictions": preds}


@torch.no_grad()
def speech_logprobs(model, frames_list: Sequence[np.ndarray], batch_size: int = 8) -> list[np.ndarray]:
    """Speech continuation ability: for each utterance (``[T, N]`` local
    frames), the log-probability of its semantic token at every frame after
    the first, as an audiolm sequence (``[T - 1]`` per utterance).  Its
    perplexity is the speech analogue of text perplexity."""
    out = []
    for i in range(0, len(frames_list), batch_size):
        chunk = frames_list[i : i + batch_size]
        seqs = [build_sequence(model.vocab, "audiolm", {"speech": np.asarray(f, dtype=np.int64)}) for f in chunk]
        logp, steps = _first_stream_logprobs(model, seqs)
        out += _segment_logprobs(logp, steps, seqs, [len(f) for f in chunk])
    return out
