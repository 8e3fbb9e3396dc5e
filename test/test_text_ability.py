import math

import numpy as np
import pytest
import torch

from espnet2_speechlm.model.build import from_text_llm
from espnet2_speechlm.eval.text_ability import MCItem, hf_logprobs, multiple_choice_accuracy, perplexity, speechlm_logprobs


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    conf = AutoConfig.for_model("llama", vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                num_key_value_heads=2, intermediate_size=64, max_position_embeddings=256)
    base = AutoModelForCausalLM.from_config(conf).eval()
    d = tmp_path_factory.mktemp("llm")
    base.save_pretrained(d)
    return base, from_text_llm(d, semantic_size=10, num_codebooks=8, codebook_size=4).eval()


def test_logprobs_batched_equal_unbatched_and_hand_computed(pair):
    base, lm = pair
    rng = np.random.default_rng(0)
    seqs = [rng.integers(0, 50, n).tolist() for n in (2, 7, 13, 5)]
    a = speechlm_logprobs(lm, seqs, batch_size=3)
    for x, s in zip(a, seqs):
        np.testing.assert_allclose(x, speechlm_logprobs(lm, [s])[0], rtol=1e-5, atol=1e-6)
        assert len(x) == len(s) - 1
    # by hand for one sequence: prefix <sos/eos> <textlm_task> <text_bpe_start/end>, then the text
    from espnet2_speechlm.data.collate import collate
    from espnet2_speechlm.tasks import build_sequence

    s = seqs[1]
    b = collate([build_sequence(lm.vocab, "textlm", {"text": np.array(s)})])
    with torch.no_grad():
        l0, _ = lm.head(lm.hidden(b["steps"])[0])
    lp = l0.log_softmax(-1)[0]
    t0 = lm.vocab.block("text").start
    hand = [float(lp[3 + i - 1, t0 + s[i]]) for i in range(1, len(s))]
    np.testing.assert_allclose(a[1], hand, rtol=1e-5, atol=1e-6)
    # the plain HF path, batched vs unbatched
    hb = hf_logprobs(base, seqs, batch_size=4)
    for x, s in zip(hb, seqs):
        np.testing.assert_allclose(x, hf_logprobs(base, [s])[0], rtol=1e-5, atol=1e-6)
    ppl, n = perplexity(a)
    assert n == sum(len(s) - 1 for s in seqs) and ppl == pytest.approx(math.exp(-sum(x.sum() for x in a) / n), rel=1e-6)
    with pytest.raises(ValueError, match="no token"):
        perplexity([np.zeros(0)])


def test_multiple_choice_picks_highest_likelihood(pair):
    base, lm = pair

    class Tok:  # ids spelled as space-separated integers
        def encode(self, s):
            return [int(x) for x in s.split()]

    ctx = "3 4 5"
    choices = ["6 7", "8 9", "1 2", "10 11"]
    lps = speechlm_logprobs(lm, [[3, 4, 5] + [int(x) for x in c.split()] for c in choices])
    best = int(np.argmax([lp[2:].sum() for lp in lps]))
    res = multiple_choice_accuracy(lm, Tok(), [MCItem(ctx, choices, best), MCItem(ctx, choices, (best + 1) % 4)])
    assert res["predictions"] == [best, best] and res["accuracy"] == 0.5
