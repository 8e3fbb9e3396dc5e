"""Text tokenizers: the base LLM's Hugging Face tokenizer, or a sentencepiece BPE.

Both give LOCAL ids (``0 .. vocab_size - 1``) with no special tokens added;
the joint vocabulary offsets them into the text block.  ``load_text_tokenizer``
picks the kind from the path: a directory in Hugging Face format
(``tokenizer.json`` / ``tokenizer_config.json``) or a sentencepiece
``*.model`` file.

A text that maps to the unknown token is an error by default
(:class:`TextTokenizerError`, naming the utterance), since a model trained on
``<unk>`` silently learns nothing about those characters.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Iterable, Sequence


class TextTokenizerError(ValueError):
    pass


class HFTextTokenizer:
    """A Hugging Face tokenizer loaded from a local directory (never the hub)."""

    kind = "hf"

    def __init__(self, path: str | os.PathLike, strict: bool = True):
        p = Path(path)
        if not p.is_dir():
            raise FileNotFoundError(f"Hugging Face tokenizer directory not found: {p}")
        if not any((p / f).exists() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json")):
            raise FileNotFoundError(f"{p} holds no tokenizer.json / tokenizer_config.json: not a Hugging Face tokenizer directory")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoTokenizer

        self.path = str(p.resolve())
        self.tok = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        self.strict = strict

    @property
    def vocab_size(self) -> int:
        return len(self.tok)

    @property
    def unk_id(self):
        return self.tok.unk_token_id

    def encode(self, text: str, utt: str | None = None) -> list[int]:
        ids = self.tok.encode(text, add_special_tokens=False)
        if self.strict and self.unk_id is not None and self.unk_id in ids:
            raise TextTokenizerError(f"{'utterance ' + repr(utt) + ': ' if utt else ''}text maps to the unknown token: {text!r}")
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode(list(map(int, ids)), skip_special_tokens=False)

    def describe(self) -> str:
        return f"hf:{self.path}"

    def to_dict(self) -> dict:
        return {"type": self.kind, "path": self.path, "vocab_size": self.vocab_size}


class SentencePieceTokenizer:
    """A sentencepiece model (BPE or unigram)."""

    kind = "sentencepiece"

    def __init__(self, model: str | os.PathLike, strict: bool = True):
        import sentencepiece as spm

        p = Path(model)
        if not p.is_file():
            raise FileNotFoundError(f"sentencepiece model not found: {p}")
        self.path = str(p.resolve())
        self.sp = spm.SentencePieceProcessor(model_file=self.path)
        self.strict = strict

    @property
    def vocab_size(self) -> int:
        return int(self.sp.get_piece_size())

    @property
    def unk_id(self) -> int:
        return int(self.sp.unk_id())

    def encode(self, text: str, utt: str | None = None) -> list[int]:
        ids = self.sp.encode(text, out_type=int)
        if self.strict and self.unk_id in ids:
            bad = sorted({ch for ch in text if ch.strip() and self.sp.piece_to_id(ch) == self.unk_id and self.unk_id in self.sp.encode(ch)})
            raise TextTokenizerError(
                f"{'utterance ' + repr(utt) + ': ' if utt else ''}characters not in the BPE model {self.path}: {bad} "
                "(it was fitted without byte fallback; fit it again with byte fallback - in a recipe "
                "--bpe_byte_fallback true, the default; fit_text_tokenizer --byte_fallback - so that unseen "
                "characters become byte pieces, or take these characters out of the text)")
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.sp.decode(list(map(int, ids)))

    def pieces(self) -> list[str]:
        return [self.sp.id_to_piece(i) for i in range(self.vocab_size)]

    def describe(self) -> str:
        return f"sentencepiece:{self.path}"

    def to_dict(self) -> dict:
        return {"type": self.kind, "path": self.path, "vocab_size": self.vocab_size}


def read_kaldi_text(paths: Iterable[str | os.PathLike]) -> list[str]:
    """Transcripts (utterance id dropped) of Kaldi ``text`` files."""
    from .audio import open_utf8

    out = []
    for path in paths:
        if not Path(path).is_file():
            raise FileNotFoundError(f"text file not found: {path}")
        with open_utf8(path, TextTokenizerError) as f:
            for lineno, line in enumerate(f, 1):
                parts = line.rstrip("\n").split(maxsplit=1)
                if not parts:
                    continue
                if len(parts) == 1:
                    continue  # an utterance with an empty transcript
                out.append(parts[1])
    return out


def train_bpe(texts: Sequence[str], model_prefix: str | os.PathLike, vocab_size: int = 500, model_type: str = "bpe",
              character_coverage: float = 1.0, byte_fallback: bool = False, seed: int = 0, user_defined_symbols: Sequence[str] = ()) -> SentencePieceTokenizer:
    """Train a sentencepiece model on ``texts``; writes ``<prefix>.model`` and ``<prefix>.vocab`` atomically."""
    import sentencepiece as spm

    if not texts:
        raise ValueError("train_bpe: no text to train on")
    prefix = Path(model_prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=prefix.parent) as tmp:
        corpus = Path(tmp) / "corpus.txt"
        corpus.write_text("\n".join(texts) + "\n", encoding="utf-8")
        tmp_prefix = Path(tmp) / prefix.name
        kw = dict(
            input=str(corpus), model_prefix=str(tmp_prefix), vocab_size=vocab_size, model_type=model_type,
            character_coverage=character_coverage, byte_fallback=byte_fallback, unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1,
            hard_vocab_limit=False, num_threads=1, minloglevel=2,
        )
        if user_defined_symbols:
            kw["user_defined_symbols"] = list(user_defined_symbols)
        # training is deterministic with one thread; the seed only matters for sampling large corpora
        kw["input_sentence_size"], kw["shuffle_input_sentence"] = 2_000_000, seed != 0
        try:
            spm.SentencePieceTrainer.train(**kw)
        except RuntimeError as e:
            m = re.search(r"smaller than required_chars\. (\d+) vs (\d+)", str(e))
            if not m:
                raise
            why = " (byte fallback adds 256 byte pieces)" if byte_fallback else ""
            raise ValueError(f"vocab_size {vocab_size} is too small: these texts need at least {m.group(2)} pieces{why}; "
                             "raise the vocabulary size (in a recipe --bpe_vocab_size)") from None
        for ext in (".vocab", ".model"):  # .model last: its presence means "complete"
            os.replace(str(tmp_prefix) + ext, str(prefix) + ext)
    print(f"[bpe] trained {model_type} with {vocab_size} pieces on {len(texts)} lines -> {prefix}.model", file=sys.stderr)
    return SentencePieceTokenizer(str(prefix) + ".model")


def load_text_tokenizer(path: str | os.PathLike, strict: bool = True):
    p = Path(path)
    if p.is_dir():
        return HFTextTokenizer(p, strict)
    if p.suffix == ".model":
        return SentencePieceTokenizer(p, strict)
    raise FileNotFoundError(f"text tokenizer not found at {p}: give a Hugging Face tokenizer directory or a sentencepiece .model file")
