"""Training data path: padding of frame-budget batches, loader speed vs. step speed.

Prints (stdout, one ``NAME VALUE UNIT`` per line; everything else on stderr)::

    padding_fraction             share of padded steps with length bucketing     ratio
    padding_fraction_packing     the same with packing                           ratio
    loader_frames_per_s          real frames/s the loader delivers (its workers) frames/s
    train_step_frames_per_s      real frames/s one training step consumes        frames/s
    loader_to_step_ratio         loader_frames_per_s / train_step_frames_per_s   ratio

Padding: 20,000 ASR-like examples with LibriSpeech-like durations (log-normal,
median about 12 s, 1-35 s at 50 frames/s, text at about 3 tokens/s), per-rank
micro-batches of 32,768 steps (a 1M-step global batch on 32 ranks).  Speed:
a synthetic token dump (random ids, 600 utterances of 2-12 s) spliced for
ASR; the small recipe's model (Llama body, 6 layers, width 256, bf16 autocast,
one thread) trained on 3,072-step micro-batches by the single-process engine,
the loader with ``--workers`` worker processes (default 2) and nothing else
running.  No GPU: the step runs on the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from espnet2_speechlm.data.loader import BatchPlan, Mixture, make_loader  # noqa: E402
from espnet2_speechlm.data.datadir import FORMAT_VERSION, DataDir  # noqa: E402
from espnet2_speechlm.data.splice import IdsTokenizer, SpliceOptions, splice  # noqa: E402
from espnet2_speechlm.vocab import JointVocab  # noqa: E402

BLOCKS = {"semantic": 1000, "acoustic": 8 * 1024, "text": 4000}


def err(*a):
    print(*a, file=sys.stderr, flush=True)


def lengths_dir(d: Path, vocab: JointVocab, n: int, seed: int) -> DataDir:
    """A data directory holding only lengths (the plan never reads tokens)."""
    rng = np.random.default_rng(seed)
    sec = np.clip(rng.lognormal(np.log(12.0), 0.55, n), 1.0, 35.0)
    frames = (sec * 50).astype(int)
    text = np.maximum(1, (sec * 3).astype(int))
    L = frames + text + 2 + (1 + 8) + (2 + 8)  # markers, pads, closing <sos/eos> (tasks.build_sequence)
    d.mkdir(parents=True, exist_ok=True)
    vocab.save(d / "vocab.json")
    with open(d / "examples.jsonl", "w") as f:
        for i, l in enumerate(L):
            f.write(json.dumps({"id": f"u{i:06d}", "len": int(l), "utts": [f"u{i:06d}"]}) + "\n")
    (d / "meta.json").write_text(json.dumps({"format_version": FORMAT_VERSION, "task": "asr", "loss_region": "target", "tokens_scp": None}))
    return DataDir(d)


def padding(plan: BatchPlan) -> float:
    real = total = 0
    steps = plan.mix.steps
    for st in plan.epoch(0):
        for mb in st:
            rows = [int(steps[list(r)].sum()) for r in mb]
            real += sum(rows)
            total += len(rows) * (plan.pack_len if plan.packing else max(rows))
    return 1 - real / total


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--steps", type=int, default=6)
    a = ap.parse_args()
    torch.set_num_threads(1)
    vocab = JointVocab.build(BLOCKS, num_codebooks=8)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        mix = Mixture([lengths_dir(tmp / "len", vocab, 20000, 0)])
        W, A, bins = 32, 1, 32 * 32768
        pb = padding(BatchPlan(mix, bins, W, 0, A, seed=0, pool_size=4096))
        pp = padding(BatchPlan(mix, bins, W, 0, A, seed=0, pool_size=4096, packing=True, pack_len=4096))
        err(f"lengths: median {np.median(mix.steps):.0f} steps, max {mix.steps.max()}")

        # a real token dump, spliced
        t0 = time.time()
        import kaldiio

        from espnet2_speechlm.tokenizers.token_io import flatten_frames

        dump = tmp / "dump"
        dump.mkdir()
        rng = np.random.default_rng(1)
        utts = [f"s{i % 20:02d}-u{i:04d}" for i in range(600)]
        with kaldiio.WriteHelper(f"ark,scp:{dump}/tokens.ark,{dump}/tokens.scp") as w:
            lens = {}
            for u in utts:
                T = int(rng.integers(100, 600))
                x = np.concatenate([rng.integers(0, 1000, (T, 1)), rng.integers(0, 1024, (T, 8))], axis=1)
                w(u, flatten_frames(x))
                lens[u] = T
        (dump / "utt2num_frames").write_text("".join(f"{u} {lens[u]}\n" for u in utts))
        (dump / "text").write_text("".join(f"{u} " + " ".join(map(str, rng.integers(0, 4000, lens[u] // 17 + 1))) + "\n" for u in utts))
        vocab.save(tmp / "vocab.json")
        splice(tmp / "asr", tmp / "vocab.json", SpliceOptions("asr"), dump / "tokens.scp", dump / "utt2num_frames", dump / "text", IdsTokenizer(), log=err)
        err(f"dump + splice: {time.time() - t0:.1f}s")
        mix2 = Mixture([DataDir(tmp / "asr")])
        plan = BatchPlan(mix2, 3072, 1, 0, 1, seed=0, pool_size=600)
        n_mb = plan.steps_per_epoch(0)
        it = iter(make_loader(plan, 0, 0, num_workers=a.workers, prefetch=8))
        next(it)  # worker start-up is not throughput
        t0, real = time.time(), 0
        for _ in range(n_mb - 1):
            real += next(it)["real_steps"]
        loader_fps = real / (time.time() - t0)
        del it

        from espnet2_speechlm.model.build import random_body
        from espnet2_speechlm.train import config as tc
        from espnet2_speechlm.train.engines import TorchEngine

        cfg = tc.TrainConfig()
        cfg.engine.precision = "bf16"
        body = dict(model_type="llama", hidden_size=256, num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=4,
                    intermediate_size=1024, max_position_embeddings=4096)
        eng = TorchEngine(random_body(body, vocab), cfg, torch.device("cpu"), 1)
        it = iter(make_loader(plan, 0, 0, num_workers=0))
        times, real = [], 0
        for s in range(a.steps + 2):
            b = next(it)
            t0 = time.time()
            loss_sum, _, _ = eng.forward(b)
            eng.backward(loss_sum, b["loss_frames"])
            eng.step()
            if s >= 2:  # the first steps allocate
                times.append(time.time() - t0)
                real += b["real_steps"]
        step_fps = real / sum(times)
    print(f"padding_fraction {pb:.4f} ratio")
    print(f"padding_fraction_packing {pp:.4f} ratio")
    print(f"loader_frames_per_s {loader_fps:.0f} frames/s")
    print(f"train_step_frames_per_s {step_fps:.0f} frames/s")
    print(f"loader_to_step_ratio {loader_fps / step_fps:.1f} ratio")


if __name__ == "__main__":
    main()
