"""Score ASR hypotheses against references: WER, CER, alignments, RESULTS.md.

    python -m espnet2_speechlm.bin.score_asr --ref data/test/text \
        --hyp exp/MODEL/decode_asr/test/text --out_dir exp/MODEL/decode_asr/test/score_asr

Writes into ``--out_dir``:

* ``alignments.txt``: per-utterance REF/HYP/EVAL alignment with S/D/I
  counts, then the corpus totals;
* ``per_utt.jsonl``: the same counts, one JSON object per utterance;
* ``results.json`` and ``RESULTS.md``: one row each for WER and CER (%).

Both files are Kaldi ``text`` files (``uttid transcript``).  Texts are
normalised with the English normaliser unless ``--no_normalize``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from espnet2_speechlm.score.results import atomic_write_text, infer_labels, json_safe, make_row, write_results
from espnet2_speechlm.score.wer import ScoringInputError, read_text, score_corpus, write_alignments


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ref", required=True, help="reference Kaldi text file")
    p.add_argument("--hyp", required=True, help="hypothesis Kaldi text file")
    p.add_argument("--out_dir", default=None, help="output directory (default: the directory of --hyp)")
    p.add_argument("--no_normalize", action="store_true", help="score raw text (whitespace collapsed only)")
    p.add_argument(
        "--allow_missing_hyp",
        action="store_true",
        help="score reference ids missing from --hyp as empty hypotheses (all deletions) instead of failing",
    )
    p.add_argument("--task", default="asr", help="task label for the results table")
    p.add_argument("--test_set", default=None, help="test set label (default: guessed from the --hyp path)")
    p.add_argument("--model", default=None, help="model label (default: guessed from the --hyp path)")
    p.add_argument("--decode_config", default=None, help="decode config label (default: guessed from --hyp)")
    return p


def score_asr(args: argparse.Namespace) -> dict:
    t0 = time.time()
    out_dir = Path(args.out_dir) if args.out_dir else Path(args.hyp).resolve().parent
    ref = read_text(args.ref)
    hyp = read_text(args.hyp)
    score = score_corpus(
        ref, hyp, normalize=not args.no_normalize, ref_name=args.ref, hyp_name=args.hyp,
        allow_missing_hyp=args.allow_missing_hyp,
    )
    missing = len(ref) - sum(1 for k in ref if k in hyp)
    write_alignments(out_dir / "alignments.txt", score)
    atomic_write_text(
        out_dir / "per_utt.jsonl",
        "".join(json.dumps(json_safe(u.as_dict()), ensure_ascii=False) + "\n" for u in score.utts),
    )
    labels = infer_labels(args.hyp)
    labels.update({k: getattr(args, k) for k in ("test_set", "model", "decode_config") if getattr(args, k)})
    common = dict(utterances=len(score.utts), dir=str(out_dir), ref=str(args.ref), hyp=str(args.hyp),
                  normalized=score.normalized, missing_hyp=missing,
                  scorer="english-norm" if score.normalized else "raw text", **labels)
    rows = [
        make_row(args.task, metric="WER", value=score.wer, details=score.words.as_dict(), **common),
        make_row(args.task, metric="CER", value=score.cer, details=score.chars.as_dict(), **common),
    ]
    notes = f"Reference `{args.ref}`, hypothesis `{args.hyp}`; text normalised: {score.normalized}."
    if missing:
        notes += f" {missing} utterance(s) had no hypothesis and were scored as empty."
    write_results(out_dir, rows, title=f"{args.task} scoring", notes=notes)
    w, c = score.words, score.chars
    logging.info(
        "%s: %d utts, WER %.2f%% (S %d D %d I %d / N %d), CER %.2f%%; wrote %s in %.1fs",
        args.hyp, len(score.utts), w.rate, w.sub, w.dele, w.ins, w.ref, c.rate, out_dir, time.time() - t0,
    )
    return score.totals()


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [score_asr] %(message)s")
    args = get_parser().parse_args(argv)
    try:
        score_asr(args)
    except ScoringInputError as e:
        print(f"score_asr: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
