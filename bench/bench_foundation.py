"""Benchmarks of the foundation (issue 2), CPU, one thread.

multistream_step_overhead       train step (fwd+bwd+AdamW) of the 9-stream model over T frames
                                / the same body as a plain text LM over T tokens
                                (SmolLM2-135M shape: 30 layers, width 576; 1.7B joint vocabulary)
restricted_head_peak_mem_ratio  peak memory of the loss with streams >= 1 over their codebook
                                / all 9 streams over the whole 62.6k vocabulary
stream0_restricted_step_speedup  train step (bf16 autocast, AdamW) of the small recipe's model shape
                                (6 layers, width 256, 9,948-id vocabulary, 24 x 256 steps of audio and text) with
                                stream 0 scored over the full vocabulary / over every id but the acoustic codes
loss_positions_step_speedup     train step (bf16 autocast, AdamW) of the small recipe's model shape on demo-shaped rows
                                (2 ASR rows: 200 speech frames, 15 text tokens; 1 TTS row: 150-frame speaker prompt,
                                15 text tokens, 200 speech frames): head and loss over every step / over the steps
                                with a target in the loss (what the model does)
kv_cache_speedup_500            wall time to generate 500 frames without / with the KV cache
collate_frames_per_s            frames/s through splicing + delay interleave + padding
collate_to_step_ratio           collate_frames_per_s / frames/s of a training step of the
                                small recipe's model shape (6 layers, width 256), on the same CPU
"""

from __future__ import annotations

import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import Timer, log, report  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

from espnet2_speechlm.data.collate import collate  # noqa: E402
from espnet2_speechlm.infer.generate import GenerationConfig, SamplingConfig, generate  # noqa: E402
from espnet2_speechlm.interleave import delay, loss_frames  # noqa: E402
from espnet2_speechlm.model.build import random_body  # noqa: E402
from espnet2_speechlm.tasks import build_prompt, build_sequence  # noqa: E402
from espnet2_speechlm.vocab import PAD, JointVocab  # noqa: E402

RELEASED = {"semantic": 5000, "acoustic": 8 * 1024, "text": 49152}
SMOL135 = dict(model_type="llama", hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
               intermediate_size=1536, max_position_embeddings=2048, tie_word_embeddings=True)


def random_audio(rng, T, vocab):
    return np.concatenate([rng.integers(0, vocab.block("semantic").size, (T, 1)),
                           rng.integers(0, vocab.block("acoustic").codebook_size, (T, vocab.num_codebooks))], 1)


def mean_loss(out):
    """The model's (loss sum, real frames, stats) -> the loss per frame."""
    loss_sum, frames, _ = out
    return loss_sum / frames


def step_time(fn, params, repeats):
    opt = torch.optim.AdamW(params, lr=1e-4)
    fn().backward(); opt.step(); opt.zero_grad(set_to_none=True)  # warm-up
    times = []
    for _ in range(repeats):
        with Timer() as t:
            loss = fn()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        times.append(t.seconds)
    return float(np.median(times))


def bench_step_overhead(T=256, repeats=3):
    from transformers import AutoConfig, AutoModelForCausalLM

    vocab = JointVocab.build(RELEASED)
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    m = random_body(SMOL135, vocab)
    frames = random_audio(rng, T, vocab)
    seq = build_sequence(vocab, "audiolm", {"speech": frames[: T - 12]}, loss_region="all")  # exactly T frames
    b = collate([seq])
    ms = step_time(lambda: mean_loss(m(b["steps"], b["loss_mask"], b["attention_mask"])), m.parameters(), repeats)
    d = dict(SMOL135)
    conf = AutoConfig.for_model(d.pop("model_type"), vocab_size=vocab.size, **d)
    torch.manual_seed(0)
    plain = AutoModelForCausalLM.from_config(conf, attn_implementation="sdpa")
    ids = torch.randint(256, vocab.size, (1, T))
    ps = step_time(lambda: plain(input_ids=ids, labels=ids).loss, plain.parameters(), repeats)
    log(f"[step] T={T}: multistream {ms:.2f}s ({b['steps'].shape[1]} steps x 9 streams), plain text LM {ps:.2f}s")
    report("multistream_step_overhead", ms / ps, "ratio")


def _loss_peak_child(restricted: bool, T: int) -> None:
    """Runs in a fresh process: peak RSS increase of one loss forward+backward."""
    from common import peak_rss_bytes, reset_peak_rss, rss_bytes

    from espnet2_speechlm.model.heads import SharedStreamHead
    from espnet2_speechlm.model.loss import category_table, multistream_loss, weight_per_category
    from espnet2_speechlm.model.config import LossWeights

    vocab = JointVocab.build(RELEASED)
    rng = np.random.default_rng(0)
    head = SharedStreamHead(576, vocab.size, 9)
    if restricted:
        rows = [torch.cat([torch.tensor([PAD]), torch.arange(*vocab.acoustic_stream_range(n))]) for n in range(1, 9)]
        head.set_acoustic_index(torch.stack(rows))
    seq = build_sequence(vocab, "audiolm", {"speech": random_audio(rng, T, vocab)}, loss_region="all")
    steps = torch.as_tensor(delay(seq.frames, PAD))[None]
    mask = torch.ones_like(steps, dtype=torch.bool)
    h = torch.randn(1, steps.shape[1] - 1, 576, requires_grad=True)
    cats, w = category_table(vocab), weight_per_category(LossWeights())
    idx = head.acoustic_index if restricted else None
    base = rss_bytes()
    reset_peak_rss()
    l0, rest = head(h)
    loss, _ = multistream_loss(l0, rest, steps[:, 1:], mask[:, 1:], cats, w, idx)
    (loss / loss_frames(steps, mask, None, PAD)).backward()
    print(peak_rss_bytes() - base)


def bench_restricted_head_memory(T=512):
    here = os.path.abspath(__file__)
    peaks = {}
    for restricted in (True, False):
        out = subprocess.run([sys.executable, here, "_loss_peak", str(int(restricted)), str(T)], capture_output=True,
                             text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        if out.returncode:
            raise RuntimeError(f"loss-peak child failed:\n{out.stderr}")
        peaks[restricted] = int(out.stdout.strip().splitlines()[-1])
    log(f"[memory] loss peak over {T} frames: restricted {peaks[True] / 2**20:.0f} MiB, full vocabulary {peaks[False] / 2**20:.0f} MiB")
    report("restricted_head_peak_mem_ratio", peaks[True] / peaks[False], "ratio")


def bench_stream0_restriction(rows=24, T=256, repeats=3):
    import dataclasses

    from espnet2_speechlm.model import ModelConfig

    vocab = JointVocab.build({"semantic": 500, "acoustic": 8 * 1024, "text": 1000})
    cfg = dict(model_type="llama", hidden_size=256, num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=4,
               intermediate_size=768, max_position_embeddings=2048, tie_word_embeddings=True)
    rng = np.random.default_rng(0)
    seqs = []
    for i in range(rows):  # half speech continuation, half ASR-shaped rows of the same length
        if i % 2:
            seqs.append(build_sequence(vocab, "audiolm", {"speech": random_audio(rng, T - 12, vocab)}))
        else:
            seqs.append(build_sequence(vocab, "asr", {"speech": random_audio(rng, T - 40, vocab), "text": rng.integers(0, 1000, 18)}))
    b = collate(seqs)
    times = {}
    for restrict in (False, True, False, True):  # interleaved: both see the same machine load
        torch.manual_seed(0)
        m = random_body(cfg, vocab, dataclasses.replace(ModelConfig(), restrict_stream0_logits=restrict))

        def fn():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return mean_loss(m(b["steps"], b["loss_mask"], b["attention_mask"]))

        times.setdefault(restrict, []).append(step_time(fn, m.parameters(), repeats))
    full, restricted = min(times[False]), min(times[True])
    frames = int(b["attention_mask"].sum())
    log(f"[stream0] {frames} steps: full vocabulary {full:.2f}s ({frames / full:.0f} frames/s), "
        f"restricted {restricted:.2f}s ({frames / restricted:.0f} frames/s)")
    report("stream0_restricted_step_speedup", full / restricted, "ratio")


def bench_loss_positions(groups=8, repeats=3):
    from espnet2_speechlm.model.loss import multistream_loss

    vocab = JointVocab.build({"semantic": 500, "acoustic": 8 * 1024, "text": 1000})
    cfg = dict(model_type="llama", hidden_size=256, num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=4,
               intermediate_size=768, max_position_embeddings=2048, tie_word_embeddings=True)
    rng = np.random.default_rng(0)
    seqs = []
    for _ in range(groups):  # the demo's mix by frames: about two ASR rows per TTS row
        for _ in range(2):
            seqs.append(build_sequence(vocab, "asr", {"speech": random_audio(rng, 200, vocab), "text": rng.integers(0, 1000, 15)}))
        seqs.append(build_sequence(vocab, "tts", {"text": rng.integers(0, 1000, 15), "speech": random_audio(rng, 200, vocab),
                                                  "speaker": random_audio(rng, 150, vocab)}))
    b = collate(seqs)
    torch.manual_seed(0)
    m = random_body(cfg, vocab)

    def every_step():  # the forward before this change: head and loss over all B x S steps
        steps, lmask, am = b["steps"], b["loss_mask"], b["attention_mask"]
        mask = lmask[:, 1:] & am[:, 1:].bool().unsqueeze(-1)
        h, _ = m.hidden(steps[:, :-1], am[:, :-1])
        l0, rest = m.head(h, local0=True)
        s, _ = multistream_loss(l0, rest, steps[:, 1:], mask, m.categories, m.cat_weights, m.head.acoustic_index,
                                stream0_local=m.head.stream0_local)
        return s / loss_frames(steps, lmask, am, PAD)

    def loss_steps():
        return mean_loss(m(b["steps"], b["loss_mask"], b["attention_mask"]))

    times = {}
    for name, fn in (("all", every_step), ("loss", loss_steps)) * 2:  # interleaved: both see the same machine load
        def run():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return fn()

        times.setdefault(name, []).append(step_time(run, m.parameters(), repeats))
    full, gated = min(times["all"]), min(times["loss"])
    frames = int(b["attention_mask"].sum())
    log(f"[loss-positions] {frames} steps: head over every step {full:.2f}s ({frames / full:.0f} frames/s), "
        f"over the loss steps {gated:.2f}s ({frames / gated:.0f} frames/s)")
    report("loss_positions_step_speedup", full / gated, "ratio")


def bench_kv_cache(frames=500):
    vocab = JointVocab.build({"semantic": 500, "acoustic": 8 * 256, "text": 2000})
    cfg = dict(model_type="llama", hidden_size=384, num_hidden_layers=8, num_attention_heads=6, num_key_value_heads=2,
               intermediate_size=1024, max_position_embeddings=1024)
    m = random_body(cfg, vocab).eval()
    prompt = build_prompt(vocab, "tts", {"text": np.arange(20)})
    s = SamplingConfig(greedy=True)
    times = {}
    for use_cache in (True, False):
        g = GenerationConfig(text=s, semantic=s, acoustic=s, min_len=frames, max_len=frames, use_cache=use_cache)
        with Timer() as t:
            r = generate(m, [prompt], "audio", g)
        assert len(r[0].tokens) == frames
        times[use_cache] = t.seconds
    log(f"[kv-cache] {frames} frames: cached {times[True]:.1f}s, recomputed {times[False]:.1f}s")
    report("kv_cache_speedup_500", times[False] / times[True], "ratio")


def bench_collate(budget=3072, seconds=3.0):
    vocab = JointVocab.build(RELEASED)
    rng = np.random.default_rng(0)
    # a realistic mix: ASR / TTS / audiolm / textlm, 2-15 s utterances, 10-60 text tokens
    pool = []
    for i in range(400):
        T = int(rng.integers(100, 750))
        text = rng.integers(0, 49152, int(rng.integers(10, 60)))
        audio = random_audio(rng, T, vocab)
        task = ("asr", "tts", "audiolm", "textlm")[i % 4]
        ex = {"asr": {"speech": audio, "text": text}, "tts": {"text": text, "speech": audio},
              "audiolm": {"speech": audio}, "textlm": {"text": rng.integers(0, 49152, 500)}}[task]
        pool.append((task, ex))
    frames, t_total, i = 0, 0.0, 0
    while t_total < seconds:
        with Timer() as t:
            batch, n = [], 0
            while n < budget:
                task, ex = pool[i % len(pool)]
                seq = build_sequence(vocab, task, ex)
                batch.append(seq)
                n += len(seq)
                i += 1
            out = collate(batch)
        t_total += t.seconds
        frames += n
    fps = frames / t_total
    log(f"[collate] {frames} frames in {t_total:.2f}s (batches of ~{budget} frames, pad steps {out['num_pad_steps']})")
    report("collate_frames_per_s", fps, "frames/s")
    return fps


def small_step_frames_per_s(budget=3072, repeats=3):
    vocab = JointVocab.build({"semantic": 500, "acoustic": 8 * 1024, "text": 2000})
    cfg = dict(model_type="llama", hidden_size=256, num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=4,
               intermediate_size=1024, max_position_embeddings=2048)
    m = random_body(cfg, vocab)
    rng = np.random.default_rng(0)
    seqs = [build_sequence(vocab, "tts", {"text": rng.integers(0, 2000, 30), "speech": random_audio(rng, 350, vocab)}) for _ in range(8)]
    b = collate(seqs)
    frames = sum(len(s) for s in seqs)
    sec = step_time(lambda: mean_loss(m(b["steps"], b["loss_mask"], b["attention_mask"])), m.parameters(), repeats)
    log(f"[train-step] small model, {frames} frames per step: {sec:.2f}s")
    return frames / sec


if __name__ == "__main__":
    if sys.argv[1:2] == ["_loss_peak"]:
        _loss_peak_child(bool(int(sys.argv[2])), int(sys.argv[3]))
        sys.exit(0)
    which = sys.argv[1:] or ["overhead", "memory", "stream0", "positions", "kvcache", "collate"]
    if "overhead" in which:
        bench_step_overhead()
    if "memory" in which:
        bench_restricted_head_memory()
    if "stream0" in which:
        bench_stream0_restriction()
    if "positions" in which:
        bench_loss_positions()
    if "kvcache" in which:
        bench_kv_cache()
    if "collate" in which:
        fps = bench_collate()
        step = small_step_frames_per_s()
        report("train_step_frames_per_s_small", step, "frames/s")
        report("collate_to_step_ratio", fps / step, "ratio")
