"""Guided attention: which runs it pairs, its weights, and its exact place in the model's loss."""

import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from espnet2_speechlm.data.collate import collate
from espnet2_speechlm.model.build import random_body
from espnet2_speechlm.model.config import GuidedAttention
from espnet2_speechlm.model.guided_attention import diagonal_weights
from espnet2_speechlm.model.loss import alignment_pairs, category_table
from espnet2_speechlm.model.speechlm import MultiStreamLM
from espnet2_speechlm.tasks import build_sequence
from espnet2_speechlm.vocab import JointVocab

V = JointVocab.build({"semantic": 50, "acoustic": 8 * 16, "text": 100}, num_codebooks=8)
CAT = category_table(V)


def _speech(rng, n):
    return np.concatenate([rng.integers(0, 50, (n, 1)), rng.integers(0, 16, (n, 8))], 1)


def _pairs(seqs):
    return alignment_pairs(torch.as_tensor(np.concatenate([q.frames[:, 0] for q in seqs])),
                           torch.as_tensor(np.concatenate([q.loss_mask for q in seqs])), CAT)


def _span(seq, name, offset=0):
    s = next(s for s in seq.segments if s.name == name)
    return (offset + s.start, offset + s.end)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 12), st.integers(1, 6)), min_size=1, max_size=4), st.integers(0, 2**31 - 1))
def test_each_spliced_asr_utterance_pairs_its_speech_with_its_text(utts, seed):
    rng = np.random.default_rng(seed)
    seq = build_sequence(V, "asr", [{"speech": _speech(rng, n), "text": rng.integers(0, 100, m)} for n, m in utts])
    speech = [(s.start, s.end) for s in seq.segments if s.name == "speech"]
    text = [(s.start, s.end) for s in seq.segments if s.name == "text"]
    assert _pairs([seq]) == list(zip(speech, text))


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 12), st.integers(1, 6), st.booleans(), st.integers(0, 2**31 - 1))
def test_tts_pairs_its_text_with_its_speech_past_the_speaker_prompt(n, m, speaker, seed):
    rng = np.random.default_rng(seed)
    ex = {"text": rng.integers(0, 100, m), "speech": _speech(rng, n)}
    if speaker:
        ex["speaker"] = _speech(rng, 3)
    tts = build_sequence(V, "tts", ex)
    assert _pairs([tts]) == [(_span(tts, "text"), _span(tts, "speech"))]
    # continuation has no conditioning run; packed after a TTS example it does not
    # borrow that example's text or speech
    for other in (build_sequence(V, "textlm", {"text": rng.integers(0, 100, m)}),
                  build_sequence(V, "audiolm", {"speech": _speech(rng, n)})):
        assert _pairs([other]) == []
        assert _pairs([tts, other]) == [(_span(tts, "text"), _span(tts, "speech"))]
    # an ASR example packed after a TTS one pairs within itself
    asr = build_sequence(V, "asr", {"speech": _speech(rng, n), "text": rng.integers(0, 100, m)})
    off = len(tts.frames)
    assert _pairs([tts, asr])[1] == (_span(asr, "speech", off), _span(asr, "text", off))
    # with every frame in the loss there is no conditioning run
    assert _pairs([build_sequence(V, "asr", {"speech": _speech(rng, n), "text": rng.integers(0, 100, m)}, loss_region="all")]) == []


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 40), st.integers(1, 40), st.floats(0.05, 1.0))
def test_diagonal_weights_are_zero_on_the_diagonal_and_grow_away_from_it(nq, nk, sigma):
    w = diagonal_weights(nq, nk, sigma)
    assert w.shape == (nq, nk) and float(w.min()) >= 0 and float(w.max()) <= 1
    if nq == nk:
        assert torch.allclose(torch.diagonal(w), torch.zeros(nq))
    # along each query's row the weight falls towards the key at its own fraction, then rises
    fq = (torch.arange(nq) + 0.5) / nq
    fk = (torch.arange(nk) + 0.5) / nk
    for i in range(nq):
        order = torch.argsort((fk - fq[i]).abs(), stable=True)
        assert torch.all(torch.diff(w[i, order]) >= -1e-7)


BODIES = {
    "llama": dict(model_type="llama", hidden_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=128, max_position_embeddings=512),
    # OLMo-2 normalises the whole query / key projection before splitting the heads
    "olmo2": dict(model_type="olmo2", hidden_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=128, max_position_embeddings=512, tie_word_embeddings=False),
}


def _model(body, guided: GuidedAttention | None):
    from espnet2_speechlm.model.config import ModelConfig

    m = random_body(BODIES[body], V, ModelConfig(num_streams=V.num_streams, attn_implementation="eager"))
    return MultiStreamLM(m.lm, V, dataclasses.replace(m.cfg, guided_attention=guided)) if guided else m


@pytest.mark.parametrize("body", sorted(BODIES))
def test_model_adds_the_penalty_of_the_real_attention_weights(body):
    """The recomputed queries and keys must give the body's own attention: the
    added loss is checked against the weights the eager attention returns."""
    rng = np.random.default_rng(0)
    ga = GuidedAttention(weight=0.7, sigma=0.3, layers=[0, -1], heads=[1, 3])
    plain, guided = _model(body, None), _model(body, ga)
    guided.load_state_dict(plain.state_dict())
    seqs = [build_sequence(V, "asr", {"speech": _speech(rng, 9), "text": rng.integers(0, 100, 3)}),
            build_sequence(V, "tts", {"text": rng.integers(0, 100, 4), "speech": _speech(rng, 6), "speaker": _speech(rng, 2)}),
            build_sequence(V, "textlm", {"text": rng.integers(0, 100, 5)})]
    b = collate(seqs)
    steps, mask, attn = b["steps"], b["loss_mask"], b["attention_mask"]
    plain.train(), guided.train()
    base, frames0, st0 = plain(steps, mask, attn)
    loss, frames, st = guided(steps, mask, attn)
    assert frames == frames0
    assert "loss_guided" not in st0
    # by hand from the eager attention's own probabilities
    out = plain.body(inputs_embeds=plain.embed(steps[:, :-1]), attention_mask=attn[:, :-1], output_attentions=True)
    want, queries = 0.0, 0
    for r, seq in enumerate(seqs):
        for (c0, c1), (y0, y1) in _pairs([seq]):
            w = torch.ones(y1 - y0, y1 - 1)
            w[:, c0:c1] = diagonal_weights(y1 - y0, c1 - c0, ga.sigma)
            for layer in (0, 2):
                a = out.attentions[layer][r, [1, 3], y0 - 1 : y1 - 1, : y1 - 1]
                want += float((a * w).sum().detach())
            queries += y1 - y0
    assert queries == 3 + 6  # the ASR text and the TTS speech; text continuation has no pair
    assert (loss - base).item() == pytest.approx(ga.weight * want, rel=1e-4)
    assert st["loss_guided"] == pytest.approx(want / (queries * 2 * 2), rel=1e-4)
    # the term alone (train minus eval mode of the same weights) trains the chosen heads'
    # query and key projections and what feeds them, nothing after the scores
    guided.zero_grad()
    guided.eval()
    without, _, _ = guided(steps, mask, attn)
    guided.train()
    (guided(steps, mask, attn)[0] - without).backward()
    layers = guided.body.layers
    assert layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0
    assert layers[1].mlp.down_proj.weight.grad.abs().sum() > 0  # below the last chosen layer
    assert layers[2].self_attn.k_proj.weight.grad.abs().sum() > 0
    for p in (layers[2].self_attn.v_proj.weight, layers[2].self_attn.o_proj.weight, layers[2].mlp.down_proj.weight):
        assert p.grad is None or float(p.grad.abs().sum()) == pytest.approx(0.0, abs=1e-6)
    # evaluation does not add it
    guided.eval(), plain.eval()
    with torch.no_grad():
        assert torch.equal(guided(steps, mask, attn)[0], plain(steps, mask, attn)[0])


def test_guided_attention_config_survives_save_and_load_and_is_checked(tmp_path):
    ga = GuidedAttention(weight=0.5, sigma=0.25, layers=[1], heads=[0, 2])
    m = _model("llama", ga)
    m.save_pretrained(tmp_path / "m")
    back = MultiStreamLM.from_pretrained(tmp_path / "m")
    assert back.cfg.guided_attention == ga and back._guided.layer_ids == [1]
    with pytest.raises(ValueError, match="layers \\[3\\]"):
        _model("llama", GuidedAttention(weight=1.0, layers=[3]))
    with pytest.raises(ValueError, match="heads \\[4\\]"):
        _model("llama", GuidedAttention(weight=1.0, heads=[4]))
