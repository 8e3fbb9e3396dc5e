"""Throughput of the token-dump stage with the offline back-ends on CPU, one job.

Synthesises an espeak-ng corpus (default 200 utterances, about 10 minutes),
fits the offline speech tokenizer on it (MFCC k-means 500 units, log-mel
residual k-means codec 8 x 1024), then times the whole dump command
(``python -m espnet2_speechlm.bin.dump_tokens --nj 1`` through utils/run.pl,
process start-up included) and the decode command.  Prints::

    dump_audio_s_per_wall_s    <seconds of audio tokenised per wall-clock second>  x
    decode_audio_s_per_wall_s  <seconds of audio decoded per wall-clock second>    x
    fit_speech_tokenizer_s     <wall-clock seconds to fit both tokenizers>         s

Other output goes to stderr.  One torch thread everywhere.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run(module, *args):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    t = time.time()
    r = subprocess.run([sys.executable, "-m", f"espnet2_speechlm.bin.{module}", *map(str, args)], env=env, cwd=ROOT,
                       stdout=sys.stderr, stderr=sys.stderr)
    if r.returncode:
        raise SystemExit(f"{module} failed with exit code {r.returncode}")
    return time.time() - t


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n_utts", type=int, default=200)
    ap.add_argument("--semantic_k", type=int, default=500)
    ap.add_argument("--keep", default=None, help="work in this directory and keep it")
    args = ap.parse_args(argv)

    from espnet2_speechlm.tokenizers.testing import make_espeak_data_dir

    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_dump."))
    t = time.time()
    data = make_espeak_data_dir(work / "data", n=args.n_utts, seed=0)
    import soundfile as sf

    seconds = sum(sf.info(l.split()[1]).duration for l in (data / "wav.scp").read_text().splitlines())
    print(f"[bench_dump] {args.n_utts} espeak utterances, {seconds / 60:.1f} min, synthesised in {time.time() - t:.1f} s", file=sys.stderr)
    fit_s = run("fit_speech_tokenizer", "--data_dir", data, "--out_dir", work / "tok", "--semantic", "mfcc",
                "--semantic_k", args.semantic_k, "--device", "cpu")
    dump_s = run("dump_tokens", "--data_dir", data, "--tokenizer_dir", work / "tok", "--out_dir", work / "dump",
                 "--nj", 1, "--device", "cpu", "--no_progress")
    dec_s = run("decode_tokens", "--tokens", work / "dump" / "tokens.scp", "--tokenizer_dir", work / "dump", "--out_dir", work / "wav", "--limit", 40)
    dec_audio = sum(sf.info(p).duration for p in (work / "wav").glob("*.wav"))
    print(f"dump_audio_s_per_wall_s {seconds / dump_s:.1f} x")
    print(f"decode_audio_s_per_wall_s {dec_audio / dec_s:.1f} x")
    print(f"fit_speech_tokenizer_s {fit_s:.1f} s")
    if not args.keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
