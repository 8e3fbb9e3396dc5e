"""The released OpusLM decoding rules (infer/opuslm_rules.py), step by step.

A hand-built sequence of logits drives the step loop; the rows it generates
must follow the release's rules: allowed ids per stream, <sos/eos> only from
min_len, warm-up (streams k > s forced to <pad> at step s < 9), the flush after
<sos/eos> (step E + 1 sampled as usual, then streams 0 .. s - E - 1 forced),
the stop after step E + 9, <sos/eos> forced at max_len - 8, and the output
frame selection.  Then the same rules through ``generate`` on a tiny model
whose config records the release's convention.
"""

import dataclasses

import numpy as np
import pytest
import torch

from espnet2_speechlm.infer.generate import GenerationConfig, SamplingConfig
from espnet2_speechlm.infer.opuslm_rules import ReleaseRules, run_release_decoding, select_output
from espnet2_speechlm.tasks import build_prompt
from espnet2_speechlm.vocab import JointVocab

N = 9


@pytest.fixture
def vocab():
    v = JointVocab.build({"semantic": 10, "acoustic": 8 * 4, "text": 20}, num_codebooks=8)
    return dataclasses.replace(v, semantic0_is_pad=True)


GREEDY = GenerationConfig(text=SamplingConfig(greedy=True), semantic=SamplingConfig(greedy=True), acoustic=SamplingConfig(greedy=True))


def hand_built(vocab, B):
    """Row 0 prefers <sos/eos> from the start, row 1 never; every code stream prefers a code over <pad>."""
    sem, text = vocab.block("semantic").start, vocab.block("text").start
    seen = []

    def next_logits(step, prev):
        seen.append(None if prev is None else prev.clone())
        l0 = torch.zeros(B, vocab.size)
        l0[0, 5], l0[0, sem + 3], l0[0, 34] = 10.0, 5.0, 1.0
        l0[1, 5], l0[1, text + 7], l0[1, 35] = -5.0, 5.0, 1.0
        rest = torch.zeros(B, N - 1, 1 + 4)
        rest[:, :, 0], rest[:, :, 2] = 1.0, 5.0
        return l0, rest

    return next_logits, seen


def expected_row(vocab, modality, s, E, stream0):
    """What the release's rules give at step s (E: step of <sos/eos>, -1 before), written from their text."""
    ac = vocab.block("acoustic")
    row = [stream0] + [ac.start + 4 * (k - 1) + 1 if modality == "audio" else 0 for k in range(1, N)]
    for k in range(1, N):
        if k > s:  # warm-up
            row[k] = 0
    if E >= 0 and s >= E + 2:
        for k in range(0, min(s - E - 1, N - 1) + 1):
            row[k] = 0
    return row


def test_rows_follow_warmup_flush_and_stop_rules(vocab):
    rules = ReleaseRules.for_vocab(vocab)
    sem, text = vocab.block("semantic").start, vocab.block("text").start
    nl, seen = hand_built(vocab, 2)
    rows, eos, forced = run_release_decoding(nl, rules, ["audio", "text"], min_len=[3, 1], max_len=[100, 20],
                                             sampling=GREEDY, generator=torch.Generator().manual_seed(0))
    rows = rows.numpy()
    # row 0: <sos/eos> is its best logit from step 0, allowed from step 3 (min_len); step E + 1 samples it again
    assert eos[0] == 3 and not forced[0]
    # row 1: never chooses <sos/eos>; it is forced at max_len - 8 = 12
    assert eos[1] == 12 and forced[1]
    assert rows.shape[1] == 12 + N + 1  # the loop runs until the last hypothesis stops after step E + 9
    for s in range(rows.shape[1]):
        if s <= 3 + N:
            s0 = sem + 3 if s < 3 else (5 if s in (3, 4) else 0)
            assert rows[0, s].tolist() == expected_row(vocab, "audio", s, 3 if s >= 3 else -1, s0), s
        else:  # row 0 stopped after step E + 9: nothing more
            assert not rows[0, s].any(), s
        s0 = 5 if s == 12 else (text + 7 if s < 14 else 0)  # step E + 1 samples as usual: its best text id
        assert rows[1, s].tolist() == expected_row(vocab, "text", s, 12 if s >= 12 else -1, s0), s
    # the loop fed back exactly the rows it generated
    assert seen[0] is None and all(np.array_equal(seen[s + 1].numpy(), rows[:, s]) for s in range(rows.shape[1] - 1))

    # output: the frames before the <sos/eos> frame
    tokens, frames, ended = select_output(rows[0, : 3 + N + 1], "audio", vocab)
    assert ended and tokens.tolist() == [[3] + [1] * 8] * 3
    tokens, frames, ended = select_output(rows[1, : 12 + N + 1], "text", vocab)
    assert ended and tokens.tolist() == [7] * 12 and (frames[:, 1:] == 0).all()


def test_allowed_ids_and_min_len(vocab):
    rules = ReleaseRules.for_vocab(vocab)
    l0 = torch.zeros(2, vocab.size)
    rest = torch.zeros(2, N - 1, 5)
    a0, ar = rules.constrain(20, [-1, -1], l0, rest, ["audio", "text"], [3, 30], [100, 100])
    finite = [set(torch.nonzero(torch.isfinite(a0[b])).flatten().tolist()) for b in range(2)]
    sem, text = vocab.block("semantic"), vocab.block("text")
    assert finite[0] == set(range(sem.start, sem.end)) | {34, 5}  # semantic units, <codec_ssl_start/end>, <sos/eos>
    assert finite[1] == set(range(text.start, text.end)) | {35}  # text, <text_bpe_start/end>; <sos/eos> not before step 30
    assert torch.isfinite(ar[0]).all()  # speech: each codebook and <pad>
    assert torch.isfinite(ar[1, :, 0]).all() and torch.isinf(ar[1, :, 1:]).all()  # text: only <pad>
    # the last step where <sos/eos> is forced: max_len - 8
    a0, _ = rules.constrain(92, [-1], l0[:1], rest[:1], ["audio"], [3], [100])
    assert torch.nonzero(torch.isfinite(a0[0])).flatten().tolist() == [5]


def test_sampled_rows_obey_the_rules(vocab):
    """Random logits, top-k sampling at temperature 0.8: forced positions and allowed sets hold at every step,
    and the same seed gives the same rows."""
    rules = ReleaseRules.for_vocab(vocab)
    g = torch.Generator().manual_seed(1)
    logits = [(torch.randn(3, vocab.size, generator=g) * 3, torch.randn(3, N - 1, 5, generator=g) * 3) for _ in range(80)]
    cfg = GenerationConfig(text=SamplingConfig(temperature=0.8, top_k=5), semantic=SamplingConfig(temperature=0.8, top_k=30),
                           acoustic=SamplingConfig(temperature=0.8, top_k=30))
    run = lambda seed: run_release_decoding(lambda s, p: logits[s], rules, ["audio", "text", "audio"], [3, 1, 3], [40, 40, 30],  # noqa: E731
                                            cfg, torch.Generator().manual_seed(seed))
    rows, eos, _ = run(7)
    again, _, _ = run(7)
    assert torch.equal(rows, again)
    sem, text, ac = vocab.block("semantic"), vocab.block("text"), vocab.block("acoustic")
    for b, mod in enumerate(["audio", "text", "audio"]):
        E = int(eos[b])
        assert 0 <= E <= (40 if b < 2 else 30) - 8
        for s in range(E + N + 1):
            r = rows[b, s].tolist()
            if not (E >= 0 and s >= E + 2):
                ok0 = (sem.start <= r[0] < sem.end or r[0] == 34) if mod == "audio" else (text.start <= r[0] < text.end or r[0] == 35)
                assert ok0 or (r[0] == 5 and s >= (3 if mod == "audio" else 1)), (b, s, r[0])
            for k in range(1, N):
                lo, hi = vocab.acoustic_stream_range(k)
                forced = k > s or (s >= E + 2 and k <= s - E - 1) or mod == "text"
                assert (r[k] == 0) if forced else (r[k] == 0 or lo <= r[k] < hi), (b, s, k, r[k])
            if s >= E + 2:
                assert r[0] == 0


def test_output_selection_drops_pad_and_marker_frames(vocab):
    sem, ac = vocab.block("semantic"), vocab.block("acoustic")
    frames = np.zeros((6, N), dtype=np.int64)
    frames[:, 0] = [sem.start + 2, 0, 34, sem.start + 4, 5, sem.start + 1]
    frames[:, 1:] = ac.start + 4 * np.arange(8) + 3
    frames[3, 2] = 0  # a <pad> sampled on a code stream inside a kept frame
    rows = np.zeros((6 + N - 1, N), dtype=np.int64)
    for k in range(N):
        rows[k : k + 6, k] = frames[:, k]
    tokens, kept, ended = select_output(rows, "audio", vocab)
    assert ended and tokens[:, 0].tolist() == [2, 4]  # <pad> and marker frames dropped, nothing after <sos/eos>
    assert tokens[1].tolist() == [4, 3, 0, 3, 3, 3, 3, 3, 3]


def test_speaker_prompt_padding(vocab):
    # the release's TTS prompt: speaker frames, zero rows up to the prompt length
    # (here 7) and the N-1 tail, then the speech marker
    text, spk = np.array([1, 2]), np.ones((3, N), dtype=np.int64)
    plain = build_prompt(vocab, "tts", {"text": text, "speaker": spk})
    q = build_prompt(vocab, "tts", {"text": text, "speaker": spk}, speaker_prompt_len=7)
    k = len(plain) - N  # the first row after the speaker frames
    assert len(q) == len(plain) + 4 and np.array_equal(q[:k], plain[:k])
    assert not q[k : k + 4 + N - 1].any() and np.array_equal(q[-1], plain[-1])
    assert np.array_equal(build_prompt(vocab, "tts", {"text": text, "speaker": spk}, speaker_prompt_len=3), plain)


def tiny_release_model(vocab):
    from espnet2_speechlm.model import ModelConfig
    from espnet2_speechlm.model.build import random_body

    cfg = ModelConfig(num_streams=N, convention="espnet_opuslm")
    body = dict(model_type="llama", hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                intermediate_size=64, max_position_embeddings=256, tie_word_embeddings=False)
    return random_body(body, vocab, cfg, seed=3).eval()


def test_generate_dispatches_on_the_model_s_convention(vocab):
    from espnet2_speechlm.infer.generate import generate
    from espnet2_speechlm.tasks import build_prompt

    m = tiny_release_model(vocab)
    rng = np.random.default_rng(0)
    speech = np.stack([rng.integers(0, 10, 12), *[rng.integers(0, 4, 12) for _ in range(8)]], 1)
    prompts = [build_prompt(vocab, "asr", {"speech": speech}), build_prompt(vocab, "tts", {"text": np.arange(5)}),
               build_prompt(vocab, "asr", {"speech": speech[:5]})]
    heads = []
    h = m.head.register_forward_hook(lambda mod, i, o: heads.append(1))
    lim = dataclasses.replace(GREEDY, min_len=1, max_len=14)
    out = generate(m, prompts[:2], ["text", "audio"], lim)
    # the longest hypothesis runs until step max_len - 8 + 9 at most, one head call per step
    assert len(heads) <= 14 + 2
    out += generate(m, prompts[2:], "text", dataclasses.replace(lim, max_len=9))
    h.remove()
    nocache = generate(m, prompts[:2], ["text", "audio"], dataclasses.replace(lim, use_cache=False))
    nocache += generate(m, prompts[2:], "text", dataclasses.replace(lim, max_len=9, use_cache=False))
    for a, b in zip(out, nocache):  # the KV cache and left padding change nothing
        assert np.array_equal(a.tokens, b.tokens) and a.finished == b.finished
    text, sem = vocab.block("text"), vocab.block("semantic")
    assert all(0 <= t < text.size for t in out[0].tokens) and len(out[0].tokens) <= 14 - 8
    assert out[1].tokens.shape[1] == N and ((out[1].tokens[:, 0] >= 0) & (out[1].tokens[:, 0] < sem.size)).all()
    with pytest.raises(ValueError, match="beam search is not part of the released"):
        generate(m, prompts[:1], "text", dataclasses.replace(GREEDY, beam_size=2))
