"""Building a speech LM: from a text LLM directory, or a random body.

``from_text_llm`` is the paper's initialisation: the base LLM's token rows
move to the text block of the joint vocabulary (id i -> text_start + i), the
new rows (specials, semantic units, acoustic codes) are initialised from the
statistics of the text rows, and ``<pad>`` embeds to zero.  Right after this,
a text-only sequence gives exactly the base LLM's logits on the text ids.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch
import torch.nn as nn

from ..vocab import PAD, JointVocab
from .config import ModelConfig
from .speechlm import MultiStreamLM


def _expand_rows(old: torch.Tensor, vocab: JointVocab, generator: torch.Generator, kind: str) -> torch.Tensor:
    """New ``[vocab.size, D]`` matrix with ``old`` in the text block."""
    text = vocab.block("text")
    if old.shape[0] != text.size:
        raise ValueError(f"text block has {text.size} ids, the base LLM's {kind} has {old.shape[0]} rows")
    old = old.detach().float()
    mean, std = old.mean(0), old.std(0).mean()
    D = old.shape[1]
    new = mean + std * torch.randn(vocab.size, D, generator=generator)
    if kind == "head":
        # new output rows near the mean: they start with about average logits
        # instead of dominating or vanishing against the trained text rows
        new = mean + 0.1 * std * torch.randn(vocab.size, D, generator=generator)
    elif vocab.has_block("acoustic"):
        # N-1 acoustic embeddings are summed per frame: keep the sum's scale
        ac = vocab.block("acoustic")
        scale = 1.0 / max(vocab.num_codebooks, 1) ** 0.5
        new[ac.start : ac.end] = std * scale * torch.randn(ac.size, D, generator=generator)
    new[text.start : text.end] = old
    if kind == "embedding":
        new[PAD] = 0.0
    return new


def from_text_llm(
    llm_dir: str | os.PathLike,
    semantic_size: int,
    num_codebooks: int,
    codebook_size: int,
    cfg: ModelConfig | None = None,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> MultiStreamLM:
    """Initialise a speech LM from a Hugging Face causal LM in ``llm_dir``."""
    from transformers import AutoModelForCausalLM

    llm_dir = Path(llm_dir)
    if not (llm_dir / "config.json").exists():
        raise FileNotFoundError(f"{llm_dir}: no config.json (expected a local Hugging Face model directory)")
    cfg = cfg or ModelConfig(num_streams=1 + num_codebooks)
    lm = AutoModelForCausalLM.from_pretrained(llm_dir, dtype=torch.float32, attn_implementation=cfg.attn_implementation)
    text_size = lm.get_input_embeddings().weight.shape[0]
    vocab = JointVocab.build(
        {"semantic": semantic_size, "acoustic": num_codebooks * codebook_size, "text": text_size},
        num_codebooks=num_codebooks,
        text_tokenizer=str(llm_dir),
    )
    return _resize_into(lm, vocab, cfg, seed).to(dtype)


def _resize_into(lm: nn.Module, vocab: JointVocab, cfg: ModelConfig, seed: int) -> MultiStreamLM:
    g = torch.Generator().manual_seed(seed)
    emb = lm.get_input_embeddings()
    head = lm.get_output_embeddings()
    tied = head.weight is emb.weight or getattr(lm.config, "tie_word_embeddings", False)
    new_emb = nn.Embedding(vocab.size, emb.weight.shape[1])
    new_emb.weight.data.copy_(_expand_rows(emb.weight, vocab, g, "embedding"))
    lm.set_input_embeddings(new_emb)
    new_head = nn.Linear(head.in_features, vocab.size, bias=head.bias is not None)
    if tied:
        new_head.weight = new_emb.weight
    else:
        new_head.weight.data.copy_(_expand_rows(head.weight, vocab, g, "head"))
    if head.bias is not None:
        text = vocab.block("text")
        b = torch.full((vocab.size,), float(head.bias.mean()))
        b[text.start : text.end] = head.bias.detach()
        new_head.bias.data.copy_(b)
    lm.set_output_embeddings(new_head)
    lm.config.vocab_size = vocab.size
    return MultiStreamLM(lm, vocab, _for_vocab(cfg, vocab))


def _for_vocab(cfg: ModelConfig, vocab: JointVocab) -> ModelConfig:
    """A copy of ``cfg`` made for ``vocab`` (the caller's config is left as it is)."""
    return dataclasses.replace(cfg, num_streams=vocab.num_streams, vocab_fingerprint=vocab.fingerprint())


def random_body(hf_config: dict, vocab: JointVocab, cfg: ModelConfig | None = None, seed: int = 0) -> MultiStreamLM:
    """A randomly initialised speech LM from a body config dict, e.g.
    ``{"model_type": "llama", "hidden_size": 256, "num_hidden_layers": 6, ...}``."""
    from transformers import AutoConfig, AutoModelForCausalLM

    d = dict(hf_config)
    model_type = d.pop("model_type", "llama")
    conf = AutoConfig.for_model(model_type, **{**d, "vocab_size": vocab.size})
    cfg = cfg or ModelConfig(num_streams=vocab.num_streams)
    torch.manual_seed(seed)
    lm = AutoModelForCausalLM.from_config(conf, attn_implementation=cfg.attn_implementation)
    with torch.no_grad():
        lm.get_input_embeddings().weight[PAD] = 0.0
    return MultiStreamLM(lm, vocab, _for_vocab(cfg, vocab))
