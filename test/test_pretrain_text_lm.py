import json

import numpy as np
import pytest

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


def test_cli_trains_packed_rows_and_writes_a_hf_directory(tmp_path):
    rng = np.random.default_rng(0)
    lines = [" ".join(rng.choice(WORDS, int(rng.integers(3, 9)))) + " ." for _ in range(300)]
    (tmp_path / "text").write_text("".join(f"s{i:04d} {t}\n" for i, t in enumerate(lines)))
    tok = train_bpe(lines, tmp_path / "bpe", vocab_size=40)
    cfg = tmp_path / "lm.yaml"
    cfg.write_text(json.dumps({
        "hf_config": {"model_type": "llama", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                      "num_key_value_heads": 2, "intermediate_size": 64, "max_position_embeddings": 128},
        "steps": 6, "batch_tokens": 256, "pack_len": 64, "warmup_steps": 2, "valid_lines": 20, "log_every": 3}))
    out = tmp_path / "llm"
    assert ptl.main(["--config", str(cfg), "--text", str(tmp_path / "text"), "--tokenizer", str(tmp_path / "bpe.model"),
                     "--out_dir", str(out)]) == 0
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(out)
    assert m.config.vocab_size == tok.vocab_size and (out / "tokenizer.model").exists()
    ppl = float((out / "valid_perplexity.txt").read_text().split()[0])
    assert 1.0 < ppl < 10 * tok.vocab_size
    assert not (tmp_path / "llm.tmp").exists()
