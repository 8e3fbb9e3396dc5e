"""A learning probe: a synthetic ASR task whose answer is known, learnt through the toolkit's own trainer.

Each item is a random string of letters; each letter is spoken as ``frames_per_letter`` speech
frames whose semantic unit is fixed per letter (acoustic streams constant or random), and the
transcript is the letters.  A model that learns to read at all learns this within a few hundred
steps, so the probe tells in minutes whether a change to the model, the loss or the trainer still
lets a model learn to transcribe:

    python -m espnet2_speechlm.bin.learning_probe --out_dir /tmp/probe --max_steps 400 \\
        model.speechlm.loss_weights.special=10

It writes the probe's data (a vocabulary, a token dump, ASR data directories made by the splicing
stage), trains with ``bin.train``'s ``train()`` in chunks of ``--eval_every`` steps (each chunk
resumes from the last checkpoint), decodes the dev items greedily after every chunk and stops once
the character error rate falls below ``--target_cer``.  Prints ``steps_to_read`` (the first
evaluated step with CER below the target, or the cap) and the CER at each evaluation; the
benchmark ``bench/bench_learning.py`` and the guard test ``test/test_learning_probe.py`` run it.
Dotted overrides go to the training config (``train/config.py``).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

LETTERS = 26


@dataclass
class ProbeData:
    min_letters: int = 1
    max_letters: int = 3
    frames_per_letter: int = 1
    num_train: int = 4000
    num_dev: int = 200
    semantic_units: int = 64  # the letters take LETTERS of them, the rest are never spoken
    codebook_size: int = 16
    random_codes: bool = False  # False: every acoustic stream holds code 0
    seed: int = 0


# the model of LEARNING_NOTES' probe (Llama, random init), at a width a CPU trains in minutes
PROBE_BODY = dict(model_type="llama", hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=4, intermediate_size=384, max_position_embeddings=512)


def _items(opts: ProbeData, n: int, rng: np.random.Generator) -> list[np.ndarray]:
    return [rng.integers(0, LETTERS, rng.integers(opts.min_letters, opts.max_letters + 1)) for _ in range(n)]


def _speech(letters: np.ndarray, unit_of: np.ndarray, opts: ProbeData, rng: np.random.Generator) -> np.ndarray:
    """``[T, 9]`` local ids: semantic unit of each letter, repeated; codes constant or random."""
    sem = np.repeat(unit_of[letters], opts.frames_per_letter)
    codes = rng.integers(0, opts.codebook_size, (len(sem), 8)) if opts.random_codes else np.zeros((len(sem), 8), np.int64)
    return np.concatenate([sem[:, None], codes], axis=1).astype(np.int32)


def write_data(root: Path, opts: ProbeData) -> dict:
    """The probe's vocabulary, token dumps and ASR data directories under ``root``;
    returns the paths and the dev items (letters) for scoring."""
    import kaldiio

    from ..data.splice import IdsTokenizer, SpliceOptions, splice
    from ..tokenizers.token_io import flatten_frames
    from ..vocab import JointVocab

    rng = np.random.default_rng(opts.seed)
    unit_of = rng.permutation(opts.semantic_units)[:LETTERS]
    root.mkdir(parents=True, exist_ok=True)
    vocab = JointVocab.build({"semantic": opts.semantic_units, "acoustic": 8 * opts.codebook_size, "text": LETTERS},
                             num_codebooks=8).save(root / "vocab.json")
    out = {"vocab": vocab, "max_letters": opts.max_letters}
    for name, n in (("train", opts.num_train), ("dev", opts.num_dev)):
        d = root / "dump" / name
        d.mkdir(parents=True, exist_ok=True)
        items = _items(opts, n, rng)
        utts = [f"{name}{i:06d}" for i in range(n)]
        with kaldiio.WriteHelper(f"ark,scp:{d}/tokens.ark,{d}/tokens.scp") as w:
            frames = [_speech(x, unit_of, opts, rng) for x in items]
            for u, f in zip(utts, frames):
                w(u, flatten_frames(f))
        (d / "utt2num_frames").write_text("".join(f"{u} {len(f)}\n" for u, f in zip(utts, frames)))
        (d / "text").write_text("".join(f"{u} {' '.join(map(str, x))}\n" for u, x in zip(utts, items)))
        out[name] = root / "splice" / name
        splice(out[name], vocab, SpliceOptions("asr"), d / "tokens.scp", d / "utt2num_frames", d / "text",
               IdsTokenizer(), log=lambda m: None)
        out[f"{name}_items"] = dict(zip(utts, items))
        out[f"{name}_frames"] = dict(zip(utts, frames))
    return out


def train_config(root: Path, data: dict, max_steps: int, eval_every: int, overrides=()):
    """The probe's training config: ``PROBE_BODY`` from random init, ASR only, toolkit defaults
    otherwise (loss weights included), then the caller's dotted overrides."""
    from ..train import config as tc

    base = [
        f"exp_dir={root / 'exp'}", "seed=0",
        f"data.train=[{{dir: {data['train']}, ratio: 1.0}}]", f"data.valid=[{data['dev']}]",
        "data.batch_bins=1024", "data.pool_size=1024", "data.num_workers=0",
        "model.init=random", "model.hf_config=" + "{" + ", ".join(f"{k}: {v}" for k, v in PROBE_BODY.items()) + "}",
        "optim.lr=2.0e-3", "optim.betas=[0.9, 0.98]", "optim.weight_decay=0.1", "optim.clip=1.0",
        "schedule.name=warmup_cosine", "schedule.warmup_steps=30", f"schedule.total_steps={max_steps}",
        "schedule.min_lr_ratio=0.1", "engine.name=single", "engine.precision=auto",
        f"checkpoint.every={eval_every}", "checkpoint.keep=1",
        "log.every=50", "log.tensorboard=false", "log.plot=false", "log.progress_bar=false",
    ]
    return tc.load(None, base + list(overrides))


def dev_cer(model_dir: Path, data: dict, batch_size: int = 64) -> float:
    """Greedy ASR of the dev items with the exported model -> character (letter) error rate."""
    import torch

    from ..infer.generate import GenerationConfig, generate
    from ..model import MultiStreamLM
    from ..score.wer import word_error_rate
    from ..tasks import build_prompt

    model = MultiStreamLM.from_pretrained(model_dir).eval()
    utts = sorted(data["dev_items"])
    refs, hyps = [], []
    for i in range(0, len(utts), batch_size):
        chunk = utts[i : i + batch_size]
        prompts = [build_prompt(model.vocab, "asr", {"speech": data["dev_frames"][u]}) for u in chunk]
        with torch.no_grad():
            res = generate(model, prompts, "text", GenerationConfig(max_len=data["max_letters"] + 4))
        for u, r in zip(chunk, res):
            refs.append(" ".join(chr(97 + int(c)) for c in data["dev_items"][u]))
            hyps.append(" ".join(chr(97 + int(c)) for c in r.tokens if 0 <= int(c) < LETTERS))
    # letters are written as words, so the word error rate is the letter error rate
    return word_error_rate(refs, hyps, normalize=False)["wer"] / 100


def run(root: Path, opts: ProbeData, max_steps: int = 400, eval_every: int = 50, target_cer: float = 0.2,
        overrides=(), log=print, stop_at_target: bool = True) -> dict:
    """Train in chunks of ``eval_every`` steps until the dev CER is below ``target_cer`` (unless
    ``stop_at_target`` is false) or ``max_steps`` are done.
    -> {steps_to_read (max_steps if never), cer_at_stop, history [(step, cer)]}"""
    from ..train.checkpoint import find_model_dir
    from ..train.trainer import train

    data = write_data(root, opts)
    history = []
    for step in range(eval_every, max_steps + eval_every, eval_every):
        step = min(step, max_steps)
        cfg = train_config(root, data, max_steps, eval_every, [*overrides, f"stop_after={eval_every}"])
        t0 = time.time()
        train(cfg)
        cer = dev_cer(find_model_dir(root / "exp" / "checkpoints"), data)
        history.append((step, cer))
        log(f"[learning_probe] step {step}: dev CER {100 * cer:.1f} % ({time.time() - t0:.0f} s)")
        if (stop_at_target and cer < target_cer) or step >= max_steps:
            break
    reached = [s for s, c in history if c < target_cer]
    return {"steps_to_read": reached[0] if reached else max_steps, "cer_at_stop": history[-1][1], "history": history}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out_dir", required=True, help="scratch directory (data, checkpoints)")
    p.add_argument("--min_letters", type=int, default=ProbeData.min_letters)
    p.add_argument("--max_letters", type=int, default=ProbeData.max_letters)
    p.add_argument("--frames_per_letter", type=int, default=ProbeData.frames_per_letter)
    p.add_argument("--num_train", type=int, default=ProbeData.num_train)
    p.add_argument("--random_codes", action="store_true", help="random acoustic codes instead of constant ones")
    p.add_argument("--max_steps", type=int, default=400)
    p.add_argument("--eval_every", type=int, default=50)
    p.add_argument("--target_cer", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides of the training config")
    a = p.parse_args(argv)
    opts = ProbeData(a.min_letters, a.max_letters, a.frames_per_letter, a.num_train, random_codes=a.random_codes,
                     seed=a.seed)
    r = run(Path(a.out_dir), opts, a.max_steps, a.eval_every, a.target_cer, a.overrides,
            log=lambda m: print(m, file=sys.stderr, flush=True))
    print(f"steps_to_read {r['steps_to_read']}")
    print(f"cer_at_stop {100 * r['cer_at_stop']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
