"""Text tokenizers: a Hugging Face tokenizer saved and loaded from disk, and sentencepiece BPE."""

import subprocess
import sys

import pytest

from espnet2_speechlm.tokenizers.text import (
    HFTextTokenizer,
    SentencePieceTokenizer,
    TextTokenizerError,
    load_text_tokenizer,
    read_kaldi_text,
    train_bpe,
)

CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "please leave a message after the tone",
    "seven green apples and three sour lemons",
    "the office is closed on sunday",
    "call me back at your convenience",
] * 20


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=120, special_tokens=["<unk>", "<|endoftext|>"]))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<|endoftext|>")
    d = tmp_path_factory.mktemp("hf_tok")
    fast.save_pretrained(d)
    return d


def test_hf_tokenizer_roundtrip(hf_dir):
    tok = load_text_tokenizer(hf_dir)
    assert isinstance(tok, HFTextTokenizer)
    assert (hf_dir / "tokenizer.json").exists()
    ids = tok.encode("the quick brown fox")
    assert ids and all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids).replace(" ", "") == "thequickbrownfox"
    # same ids as the tokenizers library itself gives for the saved file
    from tokenizers import Tokenizer

    assert Tokenizer.from_file(str(hf_dir / "tokenizer.json")).encode("the quick brown fox").ids == ids


def test_hf_tokenizer_unknown_is_error(hf_dir):
    tok = HFTextTokenizer(hf_dir)
    with pytest.raises(TextTokenizerError, match="utt7"):
        tok.encode("JAVA quiz", utt="utt7")  # capitals never seen in training
    assert 0 in HFTextTokenizer(hf_dir, strict=False).encode("JAVA")


def test_hf_tokenizer_missing_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a Hugging Face"):
        HFTextTokenizer(tmp_path)


def test_bpe_train_roundtrip(tmp_path):
    tok = train_bpe(CORPUS, tmp_path / "bpe", vocab_size=60)
    assert isinstance(tok, SentencePieceTokenizer) and tok.vocab_size <= 60 + 5
    text = "please call the office"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert len(ids) < len(text)  # merges were learned
    with pytest.raises(TextTokenizerError, match=r"u1.*\['X'\]"):
        tok.encode("X marks", utt="u1")
    assert (tmp_path / "bpe.vocab").exists() and not list(tmp_path.glob("*.tmp*"))


def test_fit_text_tokenizer_cli(tmp_path):
    text = tmp_path / "text"
    text.write_text("".join(f"u{i} {s}\n" for i, s in enumerate(CORPUS)) + "uempty\n")
    assert len(read_kaldi_text([text])) == len(CORPUS)
    r = subprocess.run([sys.executable, "-m", "espnet2_speechlm.bin.fit_text_tokenizer", "--text", str(text),
                        "--out_prefix", str(tmp_path / "bpe" / "bpe"), "--vocab_size", "50"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    tok = load_text_tokenizer(tmp_path / "bpe" / "bpe.model")
    assert tok.decode(tok.encode("seven green apples")) == "seven green apples"
