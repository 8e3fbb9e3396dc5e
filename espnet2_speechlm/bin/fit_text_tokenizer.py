"""Train a sentencepiece BPE on a recipe's transcripts (Kaldi ``text`` files).

    python -m espnet2_speechlm.bin.fit_text_tokenizer --text data/train/text --out_prefix exp/bpe/bpe --vocab_size 500

Writes ``<out_prefix>.model`` / ``.vocab`` (the ``.model`` last, atomically).
Recipes that start from a pretrained LLM use its Hugging Face tokenizer
directory instead and need no fitting.  With ``--byte_fallback`` (the
recipes' default, ``--bpe_byte_fallback true``) a character never seen in
the fitting text becomes its UTF-8 byte pieces instead of ``<unk>``, so dev
and test text with new characters still tokenises; it takes 256 ids of the
vocabulary.
"""

from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--text", action="append", required=True, help="Kaldi text file '<utt> <transcript>' (repeatable)")
    p.add_argument("--out_prefix", required=True)
    p.add_argument("--vocab_size", type=int, default=500)
    p.add_argument("--model_type", choices=["bpe", "unigram", "char", "word"], default="bpe")
    p.add_argument("--character_coverage", type=float, default=1.0)
    p.add_argument("--byte_fallback", action="store_true", help="unknown characters become byte pieces instead of <unk>")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    from ..tokenizers.text import read_kaldi_text, train_bpe

    try:
        texts = read_kaldi_text(args.text)
        tok = train_bpe(texts, args.out_prefix, args.vocab_size, args.model_type, args.character_coverage, args.byte_fallback, args.seed)
    except (ValueError, FileNotFoundError) as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 1
    print(f"[fit_text_tokenizer] {tok.vocab_size} pieces -> {tok.path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
