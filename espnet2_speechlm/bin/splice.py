"""Task-sequence splicing stage: one (corpus, task) -> one data directory.

    python -m espnet2_speechlm.bin.splice --task asr --vocab data/vocab.json \
        --dump_dir dump/tokens/train --data_dir data/train --text_tokenizer exp/text_llm \
        --out dump/splice/train_asr

or with every file named (``--tokens``, ``--utt2num_frames``, ``--text``, ``--utt2spk``)::

    python -m espnet2_speechlm.bin.splice --task asr --vocab data/vocab.json \
        --tokens dump/train/tokens.scp --utt2num_frames dump/train/utt2num_frames \
        --text data/train/text --text_tokenizer data/bpe/tokenizer.json \
        --out dump/splice/train_asr [--utt2spk data/train/utt2spk --splice_budget 3000] \
        [--speaker_prompt_len 500 [--speaker_prompt_pad]] [--max_len 4000] [--loss_region target]

The format of the output is described in ``espnet2_speechlm/data/datadir.py``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..data.splice import SpliceError, SpliceOptions, load_text_tokenizer, splice


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", required=True, choices=["asr", "tts", "textlm", "audiolm"])
    p.add_argument("--vocab", required=True, help="vocab.json of the joint vocabulary")
    p.add_argument("--out", required=True, help="output data directory")
    p.add_argument("--dump_dir", help="token dump directory (bin/dump_tokens.py): its tokens.scp, utt2num_frames, skipped_utts")
    p.add_argument("--data_dir", help="Kaldi data directory: its text (and utt2spk when splicing or prompting)")
    p.add_argument("--tokens", help="kaldiio scp of int32 [T, N] local speech tokens")
    p.add_argument("--utt2num_frames", help="frames per utterance of --tokens")
    p.add_argument("--text", help="Kaldi text file")
    p.add_argument("--text_tokenizer", help="'ids', a tokenizer.json (or its directory), or a sentencepiece .model")
    p.add_argument("--utt2spk", help="utterance -> speaker or recording (long-form splicing, speaker prompts)")
    p.add_argument("--splice_budget", type=int, default=0, help="concatenate utterances of one speaker up to this many frames")
    p.add_argument("--speaker_prompt_len", type=int, default=0, help="tts: frames of another utterance of the speaker as prompt")
    p.add_argument("--speaker_prompt_pad", action="store_true",
                   help="pad a shorter speaker prompt with all-pad frames to --speaker_prompt_len (the released OpusLM layout)")
    p.add_argument("--max_len", type=int, default=0, help="drop examples longer than this many frames")
    p.add_argument("--loss_region", default="target", choices=["target", "all"])
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    skip = []
    if a.dump_dir:
        d = Path(a.dump_dir)
        a.tokens = a.tokens or str(d / "tokens.scp")
        a.utt2num_frames = a.utt2num_frames or str(d / "utt2num_frames")
        if (d / "skipped_utts").exists():
            skip = [line.split()[0] for line in (d / "skipped_utts").read_text().splitlines() if line.strip()]
    if a.data_dir:
        d = Path(a.data_dir)
        if a.task != "audiolm":
            a.text = a.text or str(d / "text")
        if (a.splice_budget or a.speaker_prompt_len) and (d / "utt2spk").exists():
            a.utt2spk = a.utt2spk or str(d / "utt2spk")
    if a.task == "textlm":
        a.tokens = a.utt2num_frames = None
    try:
        tok = load_text_tokenizer(a.text_tokenizer) if a.text_tokenizer else None
        opts = SpliceOptions(a.task, a.loss_region, a.splice_budget, a.speaker_prompt_len, a.max_len, a.seed, a.speaker_prompt_pad)
        splice(a.out, a.vocab, opts, a.tokens, a.utt2num_frames, a.text, tok, a.utt2spk, log=lambda m: print(m, file=sys.stderr), skip=skip)
    except (SpliceError, FileNotFoundError) as e:
        print(f"splice: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
