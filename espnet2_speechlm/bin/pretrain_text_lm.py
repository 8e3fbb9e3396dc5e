"""Pretrain a small text LLM on a recipe's text corpus, saved in Hugging Face format.

Small offline recipes have no SmolLM2 to start from; they pretrain a tiny
Llama-style LM on their own text and then initialise the speech LM from it
through exactly the code path a SmolLM2 directory takes (model/build.py).

    python -m espnet2_speechlm.bin.pretrain_text_lm --config conf/text_llm.yaml \\
        --text data/lm_text/text --tokenizer exp/text_tokenizer/bpe.model --out_dir exp/text_llm

The config (strict keys)::

    hf_config: {model_type: llama, hidden_size: 256, num_hidden_layers: 6, ...}
    steps: 1500            batch_tokens: 8192      max_len: 96     pack_len: 0
    lr: 1.0e-3             warmup_steps: 100       min_lr_ratio: 0.1
    weight_decay: 0.01     precision: auto         seed: 0
    valid_lines: 200       threads: 0              repeat_fraction: 0.0

Each line is one training row (right-padded; its first token has no
context), or with ``pack_len > 0`` the lines, shuffled, are concatenated and
cut into rows of ``pack_len`` tokens.  Packing matters when the model is to
start a speech LM: there a transcript follows hundreds of speech frames, and
a model that only ever saw one short line per row has never attended over
such distances.

``repeat_fraction`` of the training lines (never the validation lines) are
given as the line twice in one row: the second copy is best predicted by
looking back, so the model learns to copy.  A speech LM started from a model
that copies reaches a lower ASR loss sooner, reading the first word of the
speech better (the mini_espeak recipe's table of experiments); copying
takes a few hundred steps to take hold.

``out_dir`` gets config.json + model.safetensors (written under a temporary
name, then renamed), the tokenizer file, and ``train_log.tsv``.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class TextLMConfig:
    hf_config: dict = field(default_factory=lambda: dict(model_type="llama", hidden_size=256, num_hidden_layers=6,
                                                          num_attention_heads=4, num_key_value_heads=4,
                                                          intermediate_size=1024, max_position_embeddings=2048,
                                                          tie_word_embeddings=True))
    steps: int = 1500
    batch_tokens: int = 8192
    max_len: int = 96
    pack_len: int = 0  # > 0: concatenate lines into rows of this many tokens
    lr: float = 1.0e-3
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    precision: str = "auto"  # fp32 | bf16 | auto (bf16 only where the CPU computes it natively)
    seed: int = 0
    valid_lines: int = 200
    threads: int = 0
    log_every: int = 50
    repeat_fraction: float = 0.0  # this share of the training lines is given as the line twice (teaches copying)


def log(msg: str) -> None:
    print(f"[pretrain_text_lm] {msg}", file=sys.stderr, flush=True)


def lr_at(cfg: TextLMConfig, step: int) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def batches(rows: list[np.ndarray], batch_tokens: int, rng: np.random.Generator):
    """Endless length-bucketed batches of about ``batch_tokens`` (padding included)."""
    order = np.argsort([len(r) for r in rows], kind="stable")
    groups, cur, width = [], [], 0
    for i in order:
        width = max(width, len(rows[i]))
        if cur and width * (len(cur) + 1) > batch_tokens:
            groups.append(cur)
            cur, width = [], len(rows[i])
        cur.append(i)
    if cur:
        groups.append(cur)
    while True:
        for g in rng.permutation(len(groups)):
            yield [rows[i] for i in groups[g]]


def pack_rows(rows: list[np.ndarray], pack_len: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Rows concatenated in a random order and cut into ``pack_len`` pieces (the last, shorter one kept if >= 2)."""
    if pack_len < 2:
        raise ValueError(f"pack_len must be >= 2, got {pack_len}")
    flat = np.concatenate([rows[i] for i in rng.permutation(len(rows))])
    out = [flat[i : i + pack_len] for i in range(0, len(flat), pack_len)]
    return [r for r in out if len(r) >= 2]


def repeat_rows(rows: list[np.ndarray], fraction: float, rng: np.random.Generator) -> list[np.ndarray]:
    """``round(fraction * len(rows))`` rows, drawn at random, replaced by themselves twice over."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"repeat_fraction must be in [0, 1], got {fraction}")
    k = round(fraction * len(rows))
    twice = set(rng.choice(len(rows), k, replace=False).tolist()) if k else set()
    return [np.concatenate([r, r]) if i in twice else r for i, r in enumerate(rows)]


def to_tensors(batch):
    import torch

    L = max(len(r) for r in batch)
    ids = torch.zeros((len(batch), L), dtype=torch.long)
    mask = torch.zeros((len(batch), L), dtype=torch.long)
    for b, r in enumerate(batch):
        ids[b, : len(r)] = torch.as_tensor(r)
        mask[b, : len(r)] = 1
    labels = ids.masked_fill(mask == 0, -100)
    return ids, mask, labels


def main(argv=None) -> int:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from .. import config as cfgmod
    from ..tokenizers.audio import read_table
    from ..tokenizers.text import load_text_tokenizer
    from ..train.engines import decay_groups
    from ..train.precision import resolve_precision

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML (TextLMConfig keys)")
    p.add_argument("--text", required=True, help="Kaldi text file ('<id> <sentence>')")
    p.add_argument("--tokenizer", required=True, help="sentencepiece .model or HF tokenizer directory")
    p.add_argument("--out_dir", required=True)
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    a = p.parse_args(argv)
    cfg = cfgmod.load(TextLMConfig, a.config, a.overrides)
    if not 0.0 <= cfg.repeat_fraction <= 1.0:
        raise SystemExit(f"ERROR: {a.config}: repeat_fraction must be in [0, 1], got {cfg.repeat_fraction}")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    t0 = time.time()

    tok = load_text_tokenizer(a.tokenizer)
    try:
        lines = [v for _, v, _ in read_table(a.text, min_fields=1) if v.strip()]
    except ValueError as e:  # a line that is not UTF-8, a duplicate id: named with its line
        raise SystemExit(f"ERROR: {e}") from None
    if len(lines) <= cfg.valid_lines:
        raise SystemExit(f"ERROR: {a.text}: {len(lines)} lines, need more than valid_lines={cfg.valid_lines}")
    rows = [np.asarray(tok.encode(t)[: cfg.max_len], dtype=np.int64) for t in lines]
    rows = [r for r in rows if len(r) >= 2]
    perm = rng.permutation(len(rows))
    valid = [rows[i] for i in perm[: cfg.valid_lines]]
    train = [rows[i] for i in perm[cfg.valid_lines :]]
    log(f"read {a.text}: {len(train)} training / {len(valid)} validation lines, {sum(map(len, train))} tokens, vocabulary {tok.vocab_size}")
    if cfg.repeat_fraction > 0:
        train = repeat_rows(train, cfg.repeat_fraction, rng)
        log(f"{round(cfg.repeat_fraction * len(train))} training lines given twice over (repeat_fraction {cfg.repeat_fraction})")
    if cfg.pack_len > 0:
        train = pack_rows(train, cfg.pack_len, rng)
        log(f"packed into {len(train)} rows of {cfg.pack_len} tokens")

    d = dict(cfg.hf_config)
    conf = AutoConfig.for_model(d.pop("model_type", "llama"), vocab_size=int(tok.vocab_size), **d)
    model = AutoModelForCausalLM.from_config(conf, attn_implementation="sdpa")
    log(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters ({conf.model_type})")
    opt = torch.optim.AdamW(decay_groups(model.parameters(), cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.95))
    bf16 = resolve_precision(cfg.precision, "cpu") == "bf16"
    log(f"precision {'bf16' if bf16 else 'fp32'} (config: {cfg.precision})")
    it = batches(train, cfg.batch_tokens, rng)
    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    logf = open(out / "train_log.tsv", "w")
    logf.write("step\tlr\tloss\ttokens_per_s\n")
    model.train()
    tokens, tl = 0, time.time()
    for step in range(cfg.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(cfg, step)
        ids, mask, labels = to_tensors(next(it))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        tokens += int(mask.sum())
        if (step + 1) % cfg.log_every == 0 or step == cfg.steps - 1:
            tps = tokens / (time.time() - tl)
            log(f"step {step + 1}/{cfg.steps} loss {loss.item():.3f} lr {lr_at(cfg, step):.2e} {tps:.0f} tokens/s")
            logf.write(f"{step + 1}\t{lr_at(cfg, step):.3e}\t{loss.item():.4f}\t{tps:.0f}\n")
            logf.flush()
            tokens, tl = 0, time.time()
    logf.close()

    model.eval()
    from ..eval.text_ability import hf_logprobs, perplexity

    ppl, n = perplexity(hf_logprobs(model, [r.tolist() for r in valid]))
    log(f"validation perplexity {ppl:.3f} over {n} tokens")
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp)
    src = Path(a.tokenizer)
    if src.is_dir():
        shutil.copytree(src, tmp / "tokenizer", dirs_exist_ok=True)
    else:
        shutil.copy(src, tmp / "tokenizer.model")
    shutil.move(str(out / "train_log.tsv"), tmp / "train_log.tsv")
    (tmp / "valid_perplexity.txt").write_text(f"{ppl:.4f} {n}\n")
    shutil.rmtree(out)
    os.replace(tmp, out)
    log(f"wrote {out} in {time.time() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
