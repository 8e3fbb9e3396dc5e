"""Shared helpers of the data/splice/train tests: a synthetic token dump and a tiny config."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from espnet2_speechlm.tokenizers.token_io import flatten_frames
from espnet2_speechlm.vocab import JointVocab

VOCAB_BLOCKS = {"semantic": 50, "acoustic": 8 * 16, "text": 100}
TINY_BODY = dict(
    model_type="llama", hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    intermediate_size=64, max_position_embeddings=512,
)
REPO = Path(__file__).resolve().parents[1]
PY = sys.executable


def make_vocab(d: Path, blocks=None) -> Path:
    v = JointVocab.build(blocks or VOCAB_BLOCKS, num_codebooks=8)
    return v.save(d / "vocab.json")


def make_dump(d: Path, n_utt: int = 24, n_spk: int = 3, min_len: int = 8, max_len: int = 40, seed: int = 0) -> dict:
    """A token dump as the dump stage writes it: tokens.scp (int32 [T, 9] local ids),
    utt2num_frames, text (pre-tokenised ids), utt2spk."""
    import kaldiio

    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    utts = [f"spk{i % n_spk}-utt{i:03d}" for i in range(n_utt)]
    with kaldiio.WriteHelper(f"ark,scp:{d}/tokens.ark,{d}/tokens.scp") as w:
        lens = {}
        for u in utts:
            T = int(rng.integers(min_len, max_len + 1))
            x = np.concatenate([rng.integers(0, 50, (T, 1)), rng.integers(0, 16, (T, 8))], axis=1).astype(np.int32)
            w(u, flatten_frames(x))
            lens[u] = T
    (d / "utt2num_frames").write_text("".join(f"{u} {lens[u]}\n" for u in utts))
    (d / "text").write_text("".join(f"{u} " + " ".join(str(t) for t in rng.integers(0, 100, rng.integers(3, 12))) + "\n" for u in utts))
    (d / "utt2spk").write_text("".join(f"{u} {u.split('-')[0]}\n" for u in utts))
    return {"tokens": d / "tokens.scp", "utt2num_frames": d / "utt2num_frames", "text": d / "text", "utt2spk": d / "utt2spk"}


def make_data_dirs(root: Path, tasks=("asr", "tts"), n_utt: int = 24, seed: int = 0, **kw) -> dict:
    from espnet2_speechlm.data.splice import IdsTokenizer, SpliceOptions, splice

    vocab = make_vocab(root)
    dump = make_dump(root / "dump", n_utt=n_utt, seed=seed)
    out = {}
    for t in tasks:
        out[t] = root / f"splice_{t}"
        splice(out[t], vocab, SpliceOptions(t, **kw), dump["tokens"], dump["utt2num_frames"], dump["text"], IdsTokenizer(), dump["utt2spk"], log=lambda m: None)
    return out


def train_yaml(path: Path, exp: Path, data: dict, **over) -> Path:
    import yaml

    cfg = {
        "exp_dir": str(exp),
        "seed": 3,
        "data": {"train": [{"dir": str(v), "ratio": 1.0} for v in data.values()], "batch_bins": 800, "num_workers": 0, "pool_size": 64},
        "model": {"init": "random", "hf_config": dict(TINY_BODY)},
        "optim": {"lr": 3.0e-3, "clip": 1.0, "weight_decay": 0.01},
        "schedule": {"name": "warmup_cosine", "warmup_steps": 2, "total_steps": 6, "min_lr_ratio": 0.1},
        "engine": {"name": "single", "threads": 1},
        "checkpoint": {"every": 2, "keep": 5},
        "log": {"every": 1, "tensorboard": False, "plot": False, "progress_bar": False},
    }
    for k, v in over.items():
        node = cfg
        parts = k.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = v
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_train(config: Path, *overrides, nproc: int = 1, timeout: int = 300, env_extra=None, entry=None) -> subprocess.CompletedProcess:
    """``bin.train`` (or ``entry``: a script and its leading arguments) on ``nproc`` ranks."""
    env = dict(os.environ, OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu", PYTHONUNBUFFERED="1", **(env_extra or {}))
    entry = list(entry or ["-m", "espnet2_speechlm.bin.train"])
    if nproc == 1:
        cmd = [PY, *entry, "--config", str(config), *overrides]
    else:
        torchrun = str(Path(PY).parent / "torchrun")
        cmd = [torchrun, "--standalone", f"--nproc_per_node={nproc}", *entry, "--config", str(config), *overrides]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def history(exp: Path, kind: str = "train") -> list[dict]:
    import json

    f = exp / "log" / "train.jsonl"
    return [r for r in (json.loads(x) for x in f.read_text().splitlines() if x.strip()) if r["kind"] == kind]


def final_weights(exp: Path) -> dict:
    from safetensors.torch import load_file

    from espnet2_speechlm.train.checkpoint import find_model_dir

    return load_file(str(find_model_dir(exp / "checkpoints") / "model.safetensors"))
