"""The auxiliary CTC loss: where it applies, its value, and its place in the model's loss."""

import dataclasses
import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from espnet2_speechlm.data.collate import collate
from espnet2_speechlm.model.build import random_body
from espnet2_speechlm.model.loss import category_table, ctc_loss_sum, ctc_segments
from espnet2_speechlm.model.speechlm import MultiStreamLM
from espnet2_speechlm.tasks import build_sequence
from espnet2_speechlm.vocab import PAD, JointVocab

V = JointVocab.build({"semantic": 50, "acoustic": 8 * 16, "text": 100}, num_codebooks=8)
CAT = category_table(V)


def _speech(rng, n):
    return np.concatenate([rng.integers(0, 50, (n, 1)), rng.integers(0, 16, (n, 8))], 1)


def _segments(seq):
    return ctc_segments(torch.as_tensor(seq.frames[:, 0]), torch.as_tensor(seq.loss_mask), CAT)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 12), st.integers(1, 6)), min_size=1, max_size=4), st.integers(0, 2**31 - 1))
def test_each_spliced_asr_utterance_pairs_its_speech_with_its_text(utts, seed):
    rng = np.random.default_rng(seed)
    examples = [{"speech": _speech(rng, n), "text": rng.integers(0, 100, m)} for n, m in utts]
    seq = build_sequence(V, "asr", examples)
    pairs = _segments(seq)
    assert len(pairs) == len(examples)
    speech = [s for s in seq.segments if s.name == "speech"]
    text = [s for s in seq.segments if s.name == "text"]
    for (f, t), sp, tx, ex in zip(pairs, speech, text, examples):
        assert f.tolist() == list(range(sp.start, sp.end))
        assert t.tolist() == list(range(tx.start, tx.end))
        assert (seq.frames[t, 0] - V.block("text").start).tolist() == ex["text"].tolist()


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 12), st.integers(1, 6), st.booleans(), st.integers(0, 2**31 - 1))
def test_sequences_whose_text_is_not_a_target_have_no_ctc_pair(n, m, speaker, seed):
    rng = np.random.default_rng(seed)
    tts = {"text": rng.integers(0, 100, m), "speech": _speech(rng, n)}
    if speaker:  # a speaker prompt: speech in the prompt, but no text target after it
        tts["speaker"] = _speech(rng, 3)
    for seq in (build_sequence(V, "tts", tts), build_sequence(V, "audiolm", {"speech": _speech(rng, n)}),
                build_sequence(V, "textlm", {"text": rng.integers(0, 100, m)})):
        assert _segments(seq) == []
    # packed into one row with a following text-continuation example, neither pairs (the
    # speaker prompt is followed by target speech, not by the next example's text)
    row = [build_sequence(V, "tts", tts), build_sequence(V, "textlm", {"text": rng.integers(0, 100, m)})]
    assert ctc_segments(torch.as_tensor(np.concatenate([q.frames[:, 0] for q in row])),
                        torch.as_tensor(np.concatenate([q.loss_mask for q in row])), CAT) == []
    # an ASR example packed before a text-continuation one pairs with its own text only
    asr = build_sequence(V, "asr", {"speech": _speech(rng, n), "text": rng.integers(0, 100, m)})
    row = [asr, build_sequence(V, "textlm", {"text": rng.integers(0, 100, m)})]
    pairs = ctc_segments(torch.as_tensor(np.concatenate([q.frames[:, 0] for q in row])),
                         torch.as_tensor(np.concatenate([q.loss_mask for q in row])), CAT)
    tx = next(s for s in asr.segments if s.name == "text")
    assert len(pairs) == 1 and pairs[0][1].tolist() == list(range(tx.start, tx.end))
    # with every frame in the loss the speech is a target too: no pair
    assert _segments(build_sequence(V, "asr", {"speech": _speech(rng, n), "text": rng.integers(0, 100, m)}, loss_region="all")) == []


def _brute_force_ctc(logp: torch.Tensor, target: list[int]) -> float:
    """-log of the summed probability of every frame labelling that collapses to target."""
    T, C = logp.shape
    total = 0.0
    for path in itertools.product(range(C), repeat=T):
        collapsed = [c for i, c in enumerate(path) if c != 0 and (i == 0 or path[i - 1] != c)]
        if collapsed == target:
            total += math.exp(sum(float(logp[i, c]) for i, c in enumerate(path)))
    return -math.log(total) if total > 0 else 0.0


def test_ctc_loss_sum_equals_the_sum_over_alignments():
    torch.manual_seed(0)
    logp = torch.randn(4, 3, 3).log_softmax(-1)  # T=4 frames, 3 sequences, blank + 2 labels
    targets = [torch.tensor([1, 2]), torch.tensor([1, 1]), torch.tensor([2])]
    lengths = [4, 4, 2]
    got = ctc_loss_sum(logp, lengths, targets)
    want = sum(_brute_force_ctc(logp[:n, i], t.tolist()) for i, (n, t) in enumerate(zip(lengths, targets)))
    assert got.item() == pytest.approx(want, rel=1e-5)
    # an impossible alignment (3 labels in 2 frames) counts zero, not infinity
    assert ctc_loss_sum(logp[:, :1], [2], [torch.tensor([1, 2, 1])]).item() == 0.0


def _batch(seqs):
    b = collate(seqs)
    return b["steps"], b["loss_mask"], b["attention_mask"]


def test_model_adds_the_weighted_ctc_loss_of_asr_sequences_only(tiny_llama_cfg):
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    m = random_body(tiny_llama_cfg, V)
    w = 0.4
    mc = MultiStreamLM(m.lm, V, dataclasses.replace(m.cfg, ctc_weight=w))  # same weights, CTC on
    asr = [build_sequence(V, "asr", {"speech": _speech(rng, n), "text": rng.integers(0, 100, k)}) for n, k in ((9, 3), (5, 2))]
    steps, mask, attn = _batch(asr)
    base, frames, st0 = m(steps, mask, attn)
    with_ctc, frames1, st1 = mc(steps, mask, attn)
    assert frames == frames1
    assert "loss_ctc" not in st0
    # by hand: the speech frames' hidden states, scored over <pad> (blank) + the text ids
    h, _ = m.hidden(steps[:, :-1], attn[:, :-1])
    tb = V.block("text")
    idx = torch.cat([torch.tensor([PAD]), torch.arange(tb.start, tb.end)])
    want, ntok = 0.0, 0
    for b, seq in enumerate(asr):
        sp = next(s for s in seq.segments if s.name == "speech")
        tx = next(s for s in seq.segments if s.name == "text")
        logp = F.linear(h[b, sp.start : sp.end] + m.head.stream_emb[0], m.head.weight[idx]).log_softmax(-1)
        tgt = torch.as_tensor(seq.frames[tx.start : tx.end, 0]) - tb.start + 1
        want += F.ctc_loss(logp[:, None], tgt[None], [len(logp)], [len(tgt)], blank=0, reduction="sum").item()
        ntok += len(tgt)
    assert (with_ctc - base).item() == pytest.approx(w * want, rel=1e-4)
    assert st1["loss_ctc"] == pytest.approx(want / ntok, rel=1e-4)
    # the CTC term trains the speech inputs' embeddings
    mc.zero_grad()
    (with_ctc - base.detach()).backward()
    sem = V.block("semantic")
    assert mc.embed.weight.grad[sem.start : sem.end].abs().sum() > 0
    # TTS has no CTC pair: the loss is unchanged
    tts = [build_sequence(V, "tts", {"text": rng.integers(0, 100, 3), "speech": _speech(rng, 6)})]
    steps, mask, attn = _batch(tts)
    a, _, _ = m(steps, mask, attn)
    b, _, st = mc(steps, mask, attn)
    assert torch.equal(a, b) and "loss_ctc" not in st


def test_ctc_weight_survives_save_and_load(tmp_path, tiny_llama_cfg):
    m = random_body(tiny_llama_cfg, V)
    m = MultiStreamLM(m.lm, V, dataclasses.replace(m.cfg, ctc_weight=0.3))
    m.save_pretrained(tmp_path / "m")
    back = MultiStreamLM.from_pretrained(tmp_path / "m")
    assert back.cfg.ctc_weight == 0.3
    assert back.head.ctc_index.tolist() == m.head.ctc_index.tolist()
    assert len(back.head.ctc_index) == 1 + V.block("text").size


def test_ctc_layer_scores_that_layers_output_through_the_final_norm(tiny_llama_cfg):
    rng = np.random.default_rng(1)
    torch.manual_seed(0)
    m = random_body(tiny_llama_cfg, V)
    mc = MultiStreamLM(m.lm, V, dataclasses.replace(m.cfg, ctc_weight=1.0, ctc_layer=1))
    asr = [build_sequence(V, "asr", {"speech": _speech(rng, 8), "text": rng.integers(0, 100, 3)})]
    steps, mask, attn = _batch(asr)
    _, _, st = mc(steps, mask, attn)
    # reference: the body's own hidden_states[1] (after decoder layer 1), normed by its final norm
    out = mc.body(inputs_embeds=mc.embed(steps[:, :-1]), attention_mask=attn[:, :-1], output_hidden_states=True)
    h1 = mc.body.norm(out.hidden_states[1])
    assert not torch.allclose(h1, out.last_hidden_state)
    tb = V.block("text")
    idx = torch.cat([torch.tensor([PAD]), torch.arange(tb.start, tb.end)])
    sp = next(s for s in asr[0].segments if s.name == "speech")
    tx = next(s for s in asr[0].segments if s.name == "text")
    logp = F.linear(h1[0, sp.start : sp.end] + mc.head.stream_emb[0], mc.head.weight[idx]).log_softmax(-1)
    tgt = torch.as_tensor(asr[0].frames[tx.start : tx.end, 0]) - tb.start + 1
    want = F.ctc_loss(logp[:, None], tgt[None], [len(logp)], [len(tgt)], blank=0, reduction="sum").item()
    assert st["loss_ctc"] == pytest.approx(want / len(tgt), rel=1e-4)
    with pytest.raises(ValueError, match="ctc_layer 3"):
        MultiStreamLM(m.lm, V, dataclasses.replace(m.cfg, ctc_weight=1.0, ctc_layer=3))
