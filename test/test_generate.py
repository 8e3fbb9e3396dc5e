import numpy as np
import pytest
import torch

from espnet2_speechlm.infer.generate import GenerationConfig, SamplingConfig, generate, sample
from espnet2_speechlm.model.build import random_body
from espnet2_speechlm.tasks import build_prompt
from espnet2_speechlm.vocab import PAD, SOS_EOS, JointVocab

GREEDY = SamplingConfig(greedy=True)


@pytest.fixture(scope="module")
def setup():
    v = JointVocab.build({"semantic": 50, "acoustic": 8 * 16, "text": 100})
    cfg = dict(model_type="llama", hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, intermediate_size=128, max_position_embeddings=512)
    # float64 so that argmax ties cannot flip between numerically different paths
    m = random_body(cfg, v, seed=1).double().eval()
    rng = np.random.default_rng(0)
    prompts, mods = [], []
    for T in (5, 11, 2):
        audio = np.concatenate([rng.integers(0, 50, (T, 1)), rng.integers(0, 16, (T, 8))], 1)
        prompts.append(build_prompt(v, "asr", {"speech": audio}))
        prompts.append(build_prompt(v, "tts", {"text": rng.integers(0, 100, T)}))
        mods += ["text", "audio"]
    prompts.append(build_prompt(v, "audiolm", {}))
    mods.append("audio")
    return v, m, prompts, mods


def _same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.tokens, y.tokens)
        assert x.finished == y.finished


def test_cached_equals_recomputed_prefix_for_unequal_batch(setup):
    v, m, prompts, mods = setup
    assert len({len(p) for p in prompts}) > 3
    cfg = GenerationConfig(text=GREEDY, semantic=GREEDY, acoustic=GREEDY, max_len=25)
    cached = generate(m, prompts, mods, cfg)
    recomputed = generate(m, prompts, mods, GenerationConfig(text=GREEDY, semantic=GREEDY, acoustic=GREEDY, max_len=25, use_cache=False))
    _same(cached, recomputed)
    one_by_one = [generate(m, [p], [mo], cfg)[0] for p, mo in zip(prompts, mods)]
    _same(cached, one_by_one)
    assert any(len(r.tokens) > 3 for r in cached)


def test_modality_constraints_and_lengths(setup):
    v, m, prompts, mods = setup
    cfg = GenerationConfig(text=SamplingConfig(temperature=1.0), semantic=SamplingConfig(temperature=1.5), acoustic=SamplingConfig(top_p=0.9), min_len=4, max_len=12, seed=3)
    res = generate(m, prompts, mods, cfg)
    for r, mod in zip(res, mods):
        assert 4 <= len(r.tokens) <= 12
        if mod == "text":
            assert r.tokens.ndim == 1 and r.tokens.min() >= 0 and r.tokens.max() < 100
            assert (r.frames[:, 1:] == PAD).all()
        else:
            assert r.tokens.shape[1] == 9
            assert r.tokens[:, 0].max() < 50 and r.tokens[:, 1:].max() < 16 and r.tokens.min() >= 0
            assert (r.frames != PAD).all()  # every stream of a speech frame is a real code
        # <sos/eos> is imposed at max_len: a target of max_len frames was cut, a shorter one ended
        assert r.finished == (len(r.tokens) < 12), (len(r.tokens), r.finished)


def test_min_len_blocks_eos_and_eos_stops(setup):
    v, m, prompts, mods = setup
    # bias the head strongly towards <sos/eos>: generation must still respect min_len, then stop at once
    with torch.no_grad():
        old = m.head.weight[SOS_EOS].clone()
        m.head.weight[SOS_EOS] = 50 * m.head.weight.abs().max()
        try:
            m.head.stream_emb[0].fill_(1.0)
            res = generate(m, prompts, mods, GenerationConfig(text=GREEDY, semantic=GREEDY, acoustic=GREEDY, min_len=3, max_len=20))
        finally:
            m.head.weight[SOS_EOS] = old
            m.head.stream_emb[0].zero_()
    assert all(len(r.tokens) == 3 and r.finished for r in res)


def test_seeded_sampling_is_reproducible_and_top_k_1_is_greedy(setup):
    v, m, prompts, mods = setup
    c = GenerationConfig(semantic=SamplingConfig(temperature=1.0, top_k=5), max_len=10, seed=7)
    _same(generate(m, prompts[:3], mods[:3], c), generate(m, prompts[:3], mods[:3], c))
    logits = torch.randn(4, 30)
    assert torch.equal(sample(logits, SamplingConfig(top_k=1), torch.Generator().manual_seed(0)), logits.argmax(-1))
    assert torch.equal(sample(logits, SamplingConfig(top_p=1e-6), torch.Generator().manual_seed(0)), logits.argmax(-1))


def test_length_limits_ratios_and_context():
    from espnet2_speechlm.infer.prompts import length_limits

    class M:  # what length_limits reads of a model
        max_steps = 100
        vocab = JointVocab.build({"semantic": 5, "acoustic": 8 * 4, "text": 10})

    P = np.array([10, 10, 80])
    cfg = GenerationConfig(min_len=2, max_len=50, min_len_ratio=1.5, max_len_ratio=4.0)
    lo, hi = length_limits(M, P, cfg, input_lens=[3, 20, 3])
    # max: min(50, ceil(4 * n)) and the context: 80 + target + <sos/eos> + 8 delay steps <= 100
    assert hi.tolist() == [12, 50, 100 - 80 - 9]
    # min: max(2, floor(1.5 * n)), never above the max
    assert lo.tolist() == [4, 30, 4]
    assert [x.tolist() for x in length_limits(M, P, GenerationConfig(min_len=2, max_len=50))] == [[2, 2, 2], [50, 50, 11]]
    with pytest.raises(ValueError, match="input_lens"):
        length_limits(M, P, cfg)


def test_prompt_longer_than_context(setup):
    v, m, prompts, mods = setup
    long = np.concatenate([prompts[0]] * 60)
    from espnet2_speechlm.model.speechlm import ContextLengthError

    with pytest.raises(ContextLengthError, match="prompt 0"):
        generate(m, [long], "text")
