import dataclasses
import math

import numpy as np
import pytest
import torch

from espnet2_speechlm import config as cfgmod
from espnet2_speechlm.interleave import delay, loss_frames
from espnet2_speechlm.model import LossWeights, ModelConfig, MultiStreamLM
from espnet2_speechlm.model.build import from_text_llm, random_body
from espnet2_speechlm.model.loss import category_table, multistream_loss, weight_per_category
from espnet2_speechlm.model.speechlm import ContextLengthError
from espnet2_speechlm.tasks import build_sequence
from espnet2_speechlm.vocab import PAD, SOS_EOS, JointVocab, VocabError


def tiny_vocab():
    # 2 codebooks of 2 codes: N = 3 streams
    return JointVocab.build({"semantic": 3, "acoustic": 4, "text": 4}, num_codebooks=2)


def test_loss_against_hand_computed_example():
    v = tiny_vocab()
    V = v.size  # 256 + 3 + 4 + 4 = 267
    sem, ac, txt = v.block("semantic").start, v.block("acoustic").start, v.block("text").start
    # targets of 4 steps, streams (0, 1, 2):
    #   t0: text token            (pads)        -> weight 1 on stream 0
    #   t1: semantic unit         codebook-0 code 1, codebook-1 code 0
    #   t2: <sos/eos>             pads
    #   t3: text token, NOT in the loss
    targets = torch.tensor([[[txt + 2, PAD, PAD], [sem + 1, ac + 1, ac + 2 + 0], [SOS_EOS, PAD, PAD], [txt, PAD, PAD]]])
    mask = torch.tensor([[[True] * 3, [True] * 3, [True] * 3, [False] * 3]])
    logits0 = torch.zeros(1, 4, V)
    a = 2.0
    logits0[0, 0, txt + 2] = a  # a confident (correct) text prediction
    acoustic_index = torch.tensor([[PAD, ac, ac + 1], [PAD, ac + 2, ac + 3]])
    rest = torch.zeros(1, 4, 2, 3)  # uniform over <pad> + 2 codes
    w = LossWeights(text=1.0, semantic=0.5, acoustic=0.25, special=10.0, pad=0.0)
    loss_sum, stats = multistream_loss(logits0, rest, targets, mask, category_table(v), weight_per_category(w), acoustic_index)
    frames = loss_frames(torch.cat([targets[:, :1], targets], 1), torch.cat([mask[:, :1], mask], 1), None, PAD)
    ce_text = math.log(math.exp(a) + V - 1) - a
    ce_uniform = math.log(V)
    expected = 1.0 * ce_text + 0.5 * ce_uniform + 0.25 * math.log(3) * 2 + 10.0 * ce_uniform
    assert frames.item() == 3  # the text frame, the speech frame, the <sos/eos> frame
    assert loss_sum.item() == pytest.approx(expected, rel=1e-6)
    assert stats["loss_text"] == pytest.approx(ce_text, rel=1e-6)
    assert stats["loss_acoustic"] == pytest.approx(math.log(3), rel=1e-6)
    assert stats["acc_stream0"] == pytest.approx(1 / 3)  # only the text step is right (argmax)
    # the weights are config: doubling the acoustic weight adds exactly that term again
    w2 = LossWeights(text=1.0, semantic=0.5, acoustic=0.5, special=10.0, pad=0.0)
    loss2, _ = multistream_loss(logits0, rest, targets, mask, category_table(v), weight_per_category(w2), acoustic_index)
    assert loss2.item() - loss_sum.item() == pytest.approx(0.25 * math.log(3) * 2, rel=1e-5)


def test_restricted_head_logits_equal_full_head_logits(small_vocab, tiny_llama_cfg):
    m = random_body(tiny_llama_cfg, small_vocab)
    h = torch.randn(2, 5, 64)
    l0, rest = m.head(h)
    full = torch.nn.functional.linear(h.unsqueeze(-2) + m.head.stream_emb[1:], m.head.weight)  # [2,5,8,V]
    idx = m.head.acoustic_index
    gathered = torch.stack([full[..., n, idx[n]] for n in range(8)], -2)
    torch.testing.assert_close(rest, gathered)
    assert rest.shape[-1] == 1 + 16


def small_vocab_acoustic_mask(v) -> torch.Tensor:
    a = v.block("acoustic")
    m = torch.zeros(v.size, dtype=torch.bool)
    m[a.start : a.end] = True
    return m


def test_stream0_head_scores_every_id_but_acoustic_codes(small_vocab, tiny_llama_cfg):
    m = random_body(tiny_llama_cfg, small_vocab)
    h = torch.randn(2, 5, 64)
    l0, _ = m.head(h)
    full = torch.nn.functional.linear(h + m.head.stream_emb[0], m.head.weight)
    ac = small_vocab_acoustic_mask(small_vocab)
    assert torch.isneginf(l0[..., ac]).all()
    torch.testing.assert_close(l0[..., ~ac], full[..., ~ac])
    local, _ = m.head(h, local0=True)
    assert local.shape[-1] == small_vocab.size - int(ac.sum())
    torch.testing.assert_close(local, full[..., ~ac])
    # switched off, stream 0 is scored over the whole vocabulary
    m2 = random_body(tiny_llama_cfg, small_vocab, dataclasses.replace(m.cfg, restrict_stream0_logits=False))
    assert m2.head.stream0_index.numel() == 0
    assert torch.isfinite(m2.head(h)[0]).all()


def test_loss_refuses_an_acoustic_code_in_stream0(small_vocab, tiny_llama_cfg):
    m = random_body(tiny_llama_cfg, small_vocab)
    seq = np.zeros((1, 6, 9), dtype=np.int64)
    seq[0, :, 0] = small_vocab.block("acoustic").start + 3  # a codec id where a semantic/text id belongs
    steps = torch.as_tensor(seq)
    with pytest.raises(ValueError, match="stream 0"):
        m(steps, torch.ones(1, 6, 9, dtype=torch.bool))


def test_model_forward_matches_unrestricted_loss_form(small_vocab, tiny_llama_cfg):
    """The model's loss equals the loss computed from the full-vocabulary head
    with the softmax of streams >= 1 taken over <pad> + their codebook."""
    torch.manual_seed(0)
    m = random_body(tiny_llama_cfg, small_vocab)
    rng = np.random.default_rng(0)
    audio = np.concatenate([rng.integers(0, 50, (6, 1)), rng.integers(0, 16, (6, 8))], 1)
    seq = build_sequence(small_vocab, "tts", {"text": np.array([1, 2, 3]), "speech": audio})
    steps = torch.as_tensor(delay(seq.frames, PAD))[None]
    mask = torch.as_tensor(delay(np.repeat(seq.loss_mask[:, None], 9, 1), False))[None]
    loss_sum, num_frames, stats = m(steps, mask)
    loss = loss_sum / num_frames
    h, _ = m.hidden(steps[:, :-1])
    tgt, msk = steps[:, 1:], mask[:, 1:]
    full = torch.nn.functional.linear(h.unsqueeze(-2) + m.head.stream_emb, m.head.weight)  # [1,S,9,V]
    w = weight_per_category(m.cfg.loss_weights)[category_table(small_vocab)[tgt]] * msk
    # stream 0: softmax over every id but the acoustic codes
    logp0 = full[..., 0, :].masked_fill(small_vocab_acoustic_mask(small_vocab), float("-inf")).log_softmax(-1)
    total = -(logp0.gather(-1, tgt[..., 0:1]).squeeze(-1) * w[..., 0]).sum()
    for n in range(1, 9):
        idx = m.head.acoustic_index[n - 1]
        sub = full[..., n, idx].log_softmax(-1)
        local = torch.where(tgt[..., n] == PAD, 0, tgt[..., n] - idx[1] + 1)
        total = total - (sub.gather(-1, local.unsqueeze(-1)).squeeze(-1) * w[..., n]).sum()
    frames = (msk[..., 0] & (tgt[..., 0] != PAD)).sum()
    assert frames.item() == 6 + 1
    torch.testing.assert_close(loss, total / frames)
    loss.backward()
    assert m.head.stream_emb.grad is not None and m.head.stream_emb.grad[1:].abs().sum() > 0


@pytest.mark.parametrize(
    "arch",
    [
        dict(model_type="llama", tie_word_embeddings=True),
        dict(model_type="llama", tie_word_embeddings=False),
        dict(model_type="olmo2", tie_word_embeddings=False),
    ],
)
def test_text_logits_equal_base_llm_after_init(tmp_path, arch):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    conf = AutoConfig.for_model(
        arch["model_type"], vocab_size=120, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=128, max_position_embeddings=256,
        tie_word_embeddings=arch["tie_word_embeddings"],
    )
    base = AutoModelForCausalLM.from_config(conf).eval()
    base.save_pretrained(tmp_path / "llm")
    m = from_text_llm(tmp_path / "llm", semantic_size=30, num_codebooks=8, codebook_size=16).eval()
    v = m.vocab
    assert v.block("text").size == 120 and v.block("text").start == 256 + 30 + 128
    ids = torch.randint(0, 120, (2, 17))
    frames = np.zeros((2, 17, 9), dtype=np.int64)
    frames[..., 0] = v.text_to_global(ids.numpy())
    steps = torch.as_tensor(delay(frames, PAD))
    with torch.no_grad():
        ref = base(input_ids=ids).logits
        h, _ = m.hidden(steps)
        l0, _ = m.head(h)
    t = v.block("text")
    torch.testing.assert_close(l0[:, :17, t.start : t.end], ref, rtol=1e-5, atol=1e-5)
    assert (m.lm.get_input_embeddings().weight[PAD] == 0).all()
    # the tying of the base model is kept
    tied = m.head.weight is m.embed.weight
    assert tied == arch["tie_word_embeddings"]


def test_save_load_round_trip_and_vocab_checks(tmp_path, small_vocab, tiny_llama_cfg):
    torch.manual_seed(0)
    m = random_body(tiny_llama_cfg, small_vocab).eval()
    m.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors", "speechlm.yaml", "vocab.json"]
    m2 = MultiStreamLM.from_pretrained(tmp_path / "m", vocab=small_vocab).eval()
    x = torch.randint(256, small_vocab.size, (1, 7, 9))
    with torch.no_grad():
        a, b = m.head(m.hidden(x)[0]), m2.head(m2.hidden(x)[0])
    torch.testing.assert_close(a[0], b[0])
    torch.testing.assert_close(a[1], b[1])
    # the caller's data was built with another vocabulary
    other = JointVocab.build({"semantic": 51, "acoustic": 8 * 16, "text": 100})
    with pytest.raises(VocabError, match="semantic"):
        MultiStreamLM.from_pretrained(tmp_path / "m", vocab=other)
    # a vocab.json that does not belong to the checkpoint
    other.save(tmp_path / "m" / "vocab.json")
    with pytest.raises(VocabError, match="does not match the checkpoint"):
        MultiStreamLM.from_pretrained(tmp_path / "m")
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        (tmp_path / "m" / "model.safetensors").unlink()
        MultiStreamLM.from_pretrained(tmp_path / "m")


def test_sequence_longer_than_context(small_vocab, tiny_llama_cfg):
    m = random_body({**tiny_llama_cfg, "max_position_embeddings": 32}, small_vocab)
    with pytest.raises(ContextLengthError, match="longer than the model's context of 32"):
        m.hidden(torch.zeros(1, 33, 9, dtype=torch.long))


def test_unknown_config_key_is_named(tmp_path):
    p = tmp_path / "model.yaml"
    p.write_text("num_streams: 9\nloss_weights:\n  text: 1.0\n  acoustc: 0.1\n")
    with pytest.raises(cfgmod.ConfigError, match=r"loss_weights: unknown key 'acoustc'"):
        cfgmod.load(ModelConfig, p)
    with pytest.raises(cfgmod.ConfigError, match="unknown key 'heads'"):
        cfgmod.load(ModelConfig, None, ["heads=shared"])
    with pytest.raises(cfgmod.ConfigError, match="expected a number"):
        cfgmod.load(ModelConfig, None, ["loss_weights.text=abc"])
    p.write_text("num_streams: [9\n")
    with pytest.raises(cfgmod.ConfigError, match="line"):
        cfgmod.load(ModelConfig, p)
    c = cfgmod.load(ModelConfig, None, ["loss_weights.acoustic=0.125", "head=shared"])
    assert c.loss_weights.acoustic == 0.125


def test_head_runs_only_where_a_target_is_in_the_loss(small_vocab, tiny_llama_cfg):
    """An ASR row (speech prompt outside the loss) padded beside a TTS row: the
    head sees only steps with a target in the loss, and the loss and its
    gradients equal the head and loss over every step."""
    from espnet2_speechlm.data.collate import collate

    torch.manual_seed(0)
    m = random_body(tiny_llama_cfg, small_vocab)
    rng = np.random.default_rng(1)

    def audio(T):
        return np.concatenate([rng.integers(0, 50, (T, 1)), rng.integers(0, 16, (T, 8))], 1)

    b = collate([
        build_sequence(small_vocab, "asr", {"speech": audio(20), "text": np.array([1, 2, 3])}),
        build_sequence(small_vocab, "tts", {"text": np.array([4, 5]), "speech": audio(9)}),
    ])
    seen = []
    hook = m.head.register_forward_hook(lambda mod, args, out: seen.append(args[0].shape[:-1].numel()))
    loss_sum, num_frames, stats = m(b["steps"], b["loss_mask"], b["attention_mask"])
    loss = loss_sum / num_frames
    hook.remove()
    loss.backward()
    got = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
    m.zero_grad()

    steps, lmask, am = b["steps"], b["loss_mask"], b["attention_mask"]
    mask = lmask[:, 1:] & am[:, 1:].bool().unsqueeze(-1)
    in_loss = int(mask.any(-1).sum())
    assert seen == [in_loss] and in_loss < am[:, :-1].sum() - 15  # the ASR prompt's steps are skipped
    h, _ = m.hidden(steps[:, :-1], am[:, :-1])
    logits0, rest = m.head(h, local0=True)
    ref_sum, ref_stats = multistream_loss(
        logits0, rest, steps[:, 1:], mask, m.categories, m.cat_weights, m.head.acoustic_index, stream0_local=m.head.stream0_local)
    ref_frames = (mask[..., 0] & (steps[:, 1:, 0] != PAD)).sum()
    ref = ref_sum / ref_frames
    torch.testing.assert_close(loss, ref)
    assert num_frames == ref_frames and stats["loss_text"] == pytest.approx(ref_stats["loss_text"], rel=1e-5)
    ref.backward()
    assert got.keys() == {n for n, p in m.named_parameters() if p.grad is not None}
    for n, p in m.named_parameters():
        if n in got:
            torch.testing.assert_close(got[n], p.grad, msg=n)
