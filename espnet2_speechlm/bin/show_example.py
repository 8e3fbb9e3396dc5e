"""Print a task sequence frame by frame with token names.

For users who add tasks or corpora: see exactly what the LM is trained on.

    # a synthetic example of each entry, to see a template
    python -m espnet2_speechlm.bin.show_example --vocab dump/vocab.json --task tts --speaker_frames 4
    # a real utterance: its tokens from the dump (stage 4) and its transcript (stage 2)
    python -m espnet2_speechlm.bin.show_example --vocab dump/vocab.json --task asr --utt utt001 \\
        --speech_scp dump/tokens/train/tokens.scp --text dump/raw/train/text \\
        --text_tokenizer exp/text_tokenizer/bpe.model

``--text_ids`` instead of ``--text``/``--text_tokenizer`` reads a file of
already tokenised lines (``utt id id id ...``).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from ..tasks import MODALITIES, build_sequence, format_sequence, get_task
from ..vocab import JointVocab


def _read_table(path: str, utt: str) -> str:
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            parts = line.rstrip("\n").split(maxsplit=1)
            if parts and parts[0] == utt:
                return parts[1] if len(parts) > 1 else ""
    raise SystemExit(f"{path}: no line for utterance {utt!r}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vocab", required=True, help="vocab.json (or the directory holding it)")
    p.add_argument("--task", required=True, help="textlm | audiolm | asr | tts")
    p.add_argument("--utt", help="utterance id to read from --speech_scp and --text (or --text_ids)")
    p.add_argument("--speech_scp", help="tokens.scp of the token dump (stage 4): [T, N] local speech tokens")
    p.add_argument("--text", help="Kaldi text file ('uttid transcript'), tokenised with --text_tokenizer")
    p.add_argument("--text_tokenizer", help="sentencepiece .model or Hugging Face tokenizer directory")
    p.add_argument("--text_ids", help="file of 'uttid id id id ...' text token ids")
    p.add_argument("--frames", type=int, default=5, help="speech frames of a synthetic example")
    p.add_argument("--speaker_frames", type=int, default=0, help="add a synthetic speaker prompt of this many frames (tts)")
    p.add_argument("--loss_region", default="target", choices=["target", "all"])
    p.add_argument("--max_frames", type=int, default=200, help="print at most this many frames")
    args = p.parse_args(argv)

    if args.text and not args.text_tokenizer:
        p.error("--text needs --text_tokenizer (or give --text_ids)")
    vocab = JointVocab.load(args.vocab)
    tmpl = get_task(args.task)
    rng = np.random.default_rng(0)
    text_tok = pieces = None
    if args.text_tokenizer:
        from ..tokenizers.text import load_text_tokenizer

        text_tok = load_text_tokenizer(args.text_tokenizer)
        pieces = text_tok.pieces() if hasattr(text_tok, "pieces") else None
    example = {}
    for e in tmpl.entries:
        kind = MODALITIES[e.modality][1]
        if e.optional and not args.speaker_frames:
            continue
        if kind == "text":
            if args.utt and args.text:
                example[e.name] = np.array(text_tok.encode(_read_table(args.text, args.utt), args.utt), dtype=np.int64)
            elif args.utt and args.text_ids:
                example[e.name] = np.array(_read_table(args.text_ids, args.utt).split(), dtype=np.int64)
            else:
                example[e.name] = rng.integers(0, vocab.block("text").size, 6)
        else:
            n = args.speaker_frames if e.modality == "speaker" else args.frames
            if args.utt and args.speech_scp and e.modality != "speaker":
                # the dump stores each utterance flattened; the reader gives it back as [T, N]
                from ..tokenizers.token_io import TokenReader

                tokens = TokenReader(args.speech_scp, vocab.num_streams)
                if args.utt not in tokens:
                    raise SystemExit(f"{args.speech_scp}: no utterance {args.utt!r}")
                example[e.name] = np.asarray(tokens[args.utt], dtype=np.int64)
            else:
                sem = rng.integers(0, vocab.block("semantic").size, (n, 1))
                ac = rng.integers(0, vocab.block("acoustic").codebook_size, (n, vocab.num_codebooks))
                example[e.name] = np.concatenate([sem, ac], 1)
    seq = build_sequence(vocab, args.task, example, loss_region=args.loss_region)
    try:
        print(format_sequence(vocab, seq, text_pieces=pieces, max_frames=args.max_frames))
        sys.stdout.flush()
    except BrokenPipeError:
        # the reader (e.g. "| head") has gone: say nothing more, and keep the
        # interpreter from failing again when it flushes stdout at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main())
