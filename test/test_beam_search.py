import itertools

import numpy as np
import pytest
import torch

from espnet2_speechlm.infer.api import decode_batch
from espnet2_speechlm.infer.beam_search import beam_search, beam_search_nbest
from espnet2_speechlm.infer.config import GenerationConfig, SamplingConfig
from espnet2_speechlm.infer.generate import generate
from espnet2_speechlm.interleave import delay
from espnet2_speechlm.model.build import random_body
from espnet2_speechlm.tasks import build_prompt
from espnet2_speechlm.vocab import PAD, SOS_EOS, JointVocab

BODY = dict(model_type="llama", hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, intermediate_size=128, max_position_embeddings=512)


def _model(text_size, seed=1):
    v = JointVocab.build({"semantic": 50, "acoustic": 8 * 16, "text": text_size})
    return v, random_body(BODY, v, seed=seed).double().eval()


def _asr_prompts(v, lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [build_prompt(v, "asr", {"speech": np.concatenate([rng.integers(0, 50, (T, 1)), rng.integers(0, 16, (T, 8))], 1)})
            for T in lengths]


@torch.no_grad()
def teacher_forced_logprob(model, prompt, global_tokens):
    """log p(tokens, <sos/eos> | prompt) from one full forward, no cache."""
    N = model.vocab.num_streams
    target = np.full((len(global_tokens) + 1, N), PAD)
    target[:, 0] = list(global_tokens) + [SOS_EOS]
    frames = torch.as_tensor(np.concatenate([prompt, target]))
    steps = delay(frames, PAD)[: len(frames)][None]
    h, _ = model.hidden(steps)
    logits0, _ = model.head(h[0], streams="first")
    logp = torch.log_softmax(logits0.double(), -1)
    P = len(prompt)
    return float(sum(logp[P - 1 + i, t] for i, t in enumerate(target[:, 0])))


def test_beam_search_is_exact_when_the_beam_holds_every_hypothesis():
    # 4 text ids and at most 2 tokens: 1 + 4 + 16 = 21 hypotheses, all kept by 32 beams
    v, m = _model(text_size=4)
    prompt = _asr_prompts(v, [6])[0]
    text = v.block("text")
    brute = {}
    for n in range(3):
        for seq in itertools.product(range(text.start, text.end), repeat=n):
            brute[seq] = teacher_forced_logprob(m, prompt, seq)
    cfg = GenerationConfig(beam_size=32, length_penalty=0.0, max_len=2)
    hyps = beam_search_nbest(m, [prompt], cfg)[0]
    best = max(brute, key=brute.get)
    assert tuple(hyps[0].frames[:, 0]) == best
    assert hyps[0].score == pytest.approx(brute[best], abs=1e-9)
    # the n-best list is the brute-force ranking
    ranked = sorted(brute.values(), reverse=True)[: len(hyps)]
    np.testing.assert_allclose([h.score for h in hyps], ranked, atol=1e-9)


def test_scores_match_teacher_forcing_and_batching_changes_nothing():
    v, m = _model(text_size=100)
    prompts = _asr_prompts(v, [5, 11, 2, 8])
    cfg = GenerationConfig(beam_size=4, max_len=12)
    batched = beam_search(m, prompts, cfg)
    for p, r in zip(prompts, batched):
        assert r.score == pytest.approx(teacher_forced_logprob(m, p, r.frames[:, 0]), abs=1e-8)
        assert (r.frames[:, 1:] == PAD).all() and r.tokens.max() < 100
        alone = beam_search(m, [p], cfg)[0]
        np.testing.assert_array_equal(alone.tokens, r.tokens)
        assert alone.score == pytest.approx(r.score, abs=1e-8)
    assert any(len(r.tokens) > 1 for r in batched)
    # a wider beam never finds a worse raw log-probability here than greedy decoding
    greedy = generate(m, prompts, "text", GenerationConfig(text=SamplingConfig(greedy=True), max_len=12))
    wide = beam_search(m, prompts, GenerationConfig(beam_size=8, length_penalty=0.0, max_len=12))
    for p, g, w in zip(prompts, greedy, wide):
        g_lp = teacher_forced_logprob(m, p, v.text_to_global(g.tokens)) if g.finished else -np.inf
        assert w.score >= g_lp - 1e-9


def test_one_beam_is_greedy_and_limits_hold():
    v, m = _model(text_size=100)
    prompts = _asr_prompts(v, [5, 11, 2])
    greedy = generate(m, prompts, "text", GenerationConfig(text=SamplingConfig(greedy=True), min_len=3, max_len=9))
    one = beam_search_nbest(m, prompts, GenerationConfig(beam_size=1, min_len=3, max_len=9))
    for g, b in zip(greedy, one):
        np.testing.assert_array_equal(g.tokens, b[0].tokens)
    for r in beam_search(m, prompts, GenerationConfig(beam_size=3, min_len=3, max_len=9)):
        assert 3 <= len(r.tokens) <= 9
    res = beam_search(m, prompts, GenerationConfig(beam_size=3, min_len=4, max_len=4))
    assert all(len(r.tokens) == 4 and not r.finished for r in res)


def test_the_api_chooses_beam_search_for_text_only():
    v, m = _model(text_size=20)
    tts = build_prompt(v, "tts", {"text": np.arange(5)})
    with pytest.raises(ValueError, match="beam search is for text"):
        decode_batch(m, [tts], "audio", GenerationConfig(beam_size=2))
    with pytest.raises(ValueError, match="generate\\(\\) samples"):
        generate(m, [tts], "audio", GenerationConfig(beam_size=2))
    asr = _asr_prompts(v, [4, 7])
    cfg = GenerationConfig(beam_size=3, max_len=6)
    for got, want in zip(decode_batch(m, asr, "text", cfg), beam_search(m, asr, cfg)):
        np.testing.assert_array_equal(got.tokens, want.tokens)
        assert want.score is not None and got.score == want.score
    greedy = GenerationConfig(text=SamplingConfig(greedy=True), max_len=6)
    for got, want in zip(decode_batch(m, asr, "text", greedy), generate(m, asr, "text", greedy)):
        np.testing.assert_array_equal(got.tokens, want.tokens)
        assert got.score is None
