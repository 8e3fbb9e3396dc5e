import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from espnet2_speechlm.bin import pretrain_text_lm as ptl
from espnet2_speechlm.tokenizers.text import train_bpe

WORDS = "the cat dog sees a big small red green house tree runs walks near far".split()


def test_pack_rows_keeps_every_token_and_the_length():
    rng = np.random.default_rng(0)
    rows = [np.arange(i * 100, i * 100 + n) for i, n in enumerate([3, 7, 2, 11, 5])]
    packed = ptl.pack_rows(rows, 8, np.random.default_rng(1))
    assert all(len(r) == 8 for r in packed[:-1]) and 2 <= len(packed[-1]) <= 8
    flat = np.concatenate(packed)
    assert sorted(flat.tolist()) == sorted(np.concatenate(rows).tolist())
    # whole lines stay contiguous (only the cut points split them)
    starts = [int(np.nonzero(flat == r[0])[0][0]) for r in rows]
    for r, s in zip(rows, starts):
        np.testing.assert_array_equal(flat[s : s + len(r)], r)
    with pytest.raises(ValueError, match="pack_len"):
        ptl.pack_rows(rows, 1, rng)


@settings(max_examples=50, deadline=None)
@given(lens=st.lists(st.integers(1, 9), min_size=0, max_size=30), fraction=st.floats(0.0, 1.0), seed=st.integers(0, 99))
def test_repeat_rows_doubles_the_asked_share_and_keeps_the_rest(lens, fraction, seed):
    rows = [np.arange(i * 100, i * 100 + n) for i, n in enumerate(lens)]
    out = ptl.repeat_rows(rows, fraction, np.random.default_rng(seed))
    assert len(out) == len(rows)
    doubled = 0
    for r, o in zip(rows, out):
        if len(o) == 2 * len(r):
            np.testing.assert_array_equal(o, np.concatenate([r, r]))
            doubled += 1
        else:
            np.testing.assert_array_equal(o, r)
    assert doubled == round(fraction * len(rows))


def test_repeat_rows_refuses_a_share_outside_0_1():
    with pytest.raises(ValueError, match="repeat_fraction"):
        ptl.repeat_rows([np.arange(3)], 1.5, np.random.default_rng(0))


def _tiny_corpus(tmp_path, **cfg_extra):
    """A 300-line corpus, its BPE and a tiny model's config -> (CLI arguments but --out_dir, tokenizer)."""
    rng = np.random.default_rng(0)
    lines = [" ".join(rng.choice(WORDS, int(rng.integers(3, 9)))) + " ." for _ in range(300)]
    (tmp_path / "text").write_text("".join(f"s{i:04d} {t}\n" for i, t in enumerate(lines)))
    tok = train_bpe(lines, tmp_path / "bpe", vocab_size=40)
    cfg = tmp_path / "lm.yaml"
    cfg.write_text(json.dumps({
        "hf_config": {"model_type": "llama", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                      "num_key_value_heads": 2, "intermediate_size": 64, "max_position_embeddings": 256},
        "steps": 4, "batch_tokens": 256, "warmup_steps": 2, "valid_lines": 20, "log_every": 2, **cfg_extra}))
    return ["--config", str(cfg), "--text", str(tmp_path / "text"), "--tokenizer", str(tmp_path / "bpe.model")], tok


def test_repeated_lines_train_but_never_enter_validation(tmp_path, capsys):
    args, _ = _tiny_corpus(tmp_path)
    assert ptl.main(args + ["--out_dir", str(tmp_path / "once")]) == 0
    assert ptl.main(args + ["--out_dir", str(tmp_path / "twice"), "repeat_fraction=1.0"]) == 0
    assert "training lines given twice over" in capsys.readouterr().err
    # the validation set is drawn before the repetition: the same lines, the same token count
    n_once = int((tmp_path / "once/valid_perplexity.txt").read_text().split()[1])
    n_twice = int((tmp_path / "twice/valid_perplexity.txt").read_text().split()[1])
    assert n_once == n_twice > 0


def test_a_bad_repeat_fraction_is_refused_naming_the_config(tmp_path):
    args, _ = _tiny_corpus(tmp_path, repeat_fraction=2.0)
    with pytest.raises(SystemExit, match=r"lm\.yaml: repeat_fraction must be in \[0, 1\], got 2\.0"):
        ptl.main(args + ["--out_dir", str(tmp_path / "llm")])
    assert not (tmp_path / "llm").exists()


def test_cli_trains_packed_rows_and_writes_a_hf_directory(tmp_path):
    args, tok = _tiny_corpus(tmp_path, steps=6, pack_len=64, log_every=3)
    out = tmp_path / "llm"
    assert ptl.main(args + ["--out_dir", str(out)]) == 0
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(out)
    assert m.config.vocab_size == tok.vocab_size and (out / "tokenizer.model").exists()
    ppl = float((out / "valid_perplexity.txt").read_text().split()[0])
    assert 1.0 < ppl < 10 * tok.vocab_size
    assert not (tmp_path / "llm.tmp").exists()
