"""Build the joint vocabulary (the recipe's vocabulary stage) and write vocab.json.

    python -m espnet2_speechlm.bin.make_vocab --speech_tokenizer exp/speech_tokenizer \\
        --text_tokenizer exp/text_llm --out dump/vocab.json

Sizes are read from the fitted speech tokenizer's ``tokenizer.json`` and from
the text tokenizer (a Hugging Face tokenizer / LLM directory, whose
embedding size wins when it has a config.json, or a sentencepiece model);
nothing is guessed.  Building again from the same inputs gives the same file.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


class TextSizeError(ValueError):
    pass


def text_block_size(path: Path) -> int:
    """Rows of the text block: the LLM's embedding size when ``path`` is a model
    directory (it may exceed the tokenizer's length), else the tokenizer's size.
    A tokenizer with more ids than the embedding has rows is refused: its last
    ids would have no row, or the row of another block."""
    from ..tokenizers.text import load_text_tokenizer

    cfg = path / "config.json" if path.is_dir() else None
    if cfg is not None and cfg.exists():
        d = json.loads(cfg.read_text())
        if "vocab_size" in d:
            rows = int(d["vocab_size"])
            # the LLM's own tokenizer: Hugging Face files, or the sentencepiece model
            # (and the tokenizer directory) that pretrain_text_lm copies beside it
            tok = next((t for t in (path, path / "tokenizer.model", path / "tokenizer")
                        if (t / "tokenizer.json").exists() or (t / "tokenizer_config.json").exists()
                        or (t.suffix == ".model" and t.is_file())), None)
            n = int(load_text_tokenizer(tok).vocab_size) if tok is not None else 0
            if n > rows:
                raise TextSizeError(f"{tok}: the tokenizer has {n} ids, but {cfg} has vocab_size {rows}: "
                                    "its last ids would have no embedding row (is this the tokenizer of that model?)")
            return rows
    return int(load_text_tokenizer(path).vocab_size)


def main(argv=None) -> int:
    from ..tokenizers.speech import read_config
    from ..vocab import JointVocab

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--speech_tokenizer", required=True, help="fitted speech tokenizer directory (tokenizer.json)")
    p.add_argument("--text_tokenizer", required=True, help="HF LLM/tokenizer directory or sentencepiece .model")
    p.add_argument("--out", required=True, help="output vocab.json (or a directory)")
    args = p.parse_args(argv)
    try:
        sp = read_config(args.speech_tokenizer)
        text = text_block_size(Path(args.text_tokenizer))
    except (TextSizeError, FileNotFoundError, ValueError) as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 1
    vocab = JointVocab.build(
        {"semantic": sp["semantic_vocab_size"], "acoustic": sp["num_codebooks"] * sp["codebook_size"], "text": text},
        num_codebooks=sp["num_codebooks"],
        text_tokenizer=str(args.text_tokenizer),
    )
    out = vocab.save(args.out)
    blocks = ", ".join(f"{b.name} [{b.start}, {b.end})" for b in vocab.blocks)
    print(f"[make_vocab] {out}: {vocab.size} ids, {vocab.num_streams} streams: {blocks}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
