"""Dump speech tokens of a Kaldi data directory: kaldiio ark/scp of int32 frames.

Usage (the recipe's token-dump stage calls exactly this)::

    python -m espnet2_speechlm.bin.dump_tokens --data_dir data/train \\
        --tokenizer_dir exp/speech_tokenizer --out_dir dump/tokens/train --nj 4 --cmd utils/run.pl

The utterances are split into ``nj`` jobs, run through ``--cmd`` (``utils/run.pl``
locally, ``utils/slurm.pl`` on a cluster) as ``--job JOB`` invocations of this
same command, then merged.  Outputs in ``out_dir``::

    tokens.scp         utt -> ark offset; each value is the flattened [T, 1 + K] int32 frame matrix
                       [semantic, codebook 0..K-1], local ids (see tokenizers/token_io.py)
    utt2num_frames     utt T
    tokenizer.json     what produced the tokens (sizes and tokenizer files)
    skipped_utts       (--skip_bad) ids of bad utterances with file and reason
    data/tokens.JOB.ark, log/dump.JOB.log

Resuming: a job that completed (its ``.done`` marker matches the inputs'
fingerprint) is not redone; the whole dump is skipped when ``out_dir/.done``
matches.  Nothing is renamed to its final name before it is complete.

Bad audio (unreadable, empty, shorter than ``--min_seconds``) is reported with
its utterance id and file; the dump fails listing every bad utterance unless
``--skip_bad`` is given.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

DONE = ".done"


def log(msg: str) -> None:
    print(f"[dump_tokens] {msg}", file=sys.stderr, flush=True)


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", required=True, help="Kaldi data dir with wav.scp (and optional segments)")
    p.add_argument("--tokenizer_dir", required=True, help="directory with tokenizer.json (fit_speech_tokenizer output)")
    p.add_argument("--out_dir", required=True)
    p.add_argument("--nj", type=int, default=1, help="number of jobs")
    p.add_argument("--cmd", default=None, help="job runner, e.g. 'utils/run.pl' or 'utils/slurm.pl --gpu 1' (default: run.pl next to this toolkit)")
    p.add_argument("--job", type=int, default=None, help="internal: run only job JOB (1-based) of --nj and exit")
    p.add_argument("--skip_bad", action="store_true", help="skip bad utterances (listed in out_dir/skipped_utts) instead of failing")
    p.add_argument("--min_seconds", type=float, default=0.05, help="shorter audio is bad")
    p.add_argument("--batch_seconds", type=float, default=120.0, help="padded seconds of audio per device batch")
    p.add_argument("--chunk_utts", type=int, default=512, help="utterances read at a time and sorted by length for batching")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (GPU when present)")
    p.add_argument("--num_threads", type=int, default=1, help="torch CPU threads per job")
    p.add_argument("--no_progress", action="store_true")
    return p


def fingerprint(args, data_dir: Path, tokenizer_cfg: str) -> str:
    h = hashlib.sha256()
    for name in ("wav.scp", "segments"):
        f = data_dir / name
        h.update(name.encode() + (f.read_bytes() if f.exists() else b"-"))
    h.update(tokenizer_cfg.encode())
    h.update(json.dumps({"nj": args.nj, "skip_bad": args.skip_bad, "min_seconds": args.min_seconds}).encode())
    return h.hexdigest()[:20]


def split_ids(ids: list[str], nj: int) -> list[list[str]]:
    """Contiguous, near-equal parts (Kaldi's split_scp.pl style); every part non-empty when nj <= len(ids)."""
    n = len(ids)
    return [ids[(j * n) // nj : ((j + 1) * n) // nj] for j in range(nj)]


def default_cmd() -> str:
    here = Path(__file__).resolve().parents[2] / "utils" / "run.pl"
    return str(here)


def read_done(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return None


def resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


# --------------------------------------------------------------------- worker
def run_job(args, job: int) -> int:
    import numpy as np
    import torch

    from ..tokenizers.audio import SAMPLE_RATE, AudioError, iter_audio, read_data_dir
    from ..tokenizers.speech import SpeechTokenizer
    from ..tokenizers.token_io import flatten_frames, write_lines_atomic

    import kaldiio

    out = Path(args.out_dir)
    split = out / f"split{args.nj}"
    fp = (split / "fingerprint").read_text().strip()
    done = split / f"{job}{DONE}"
    if read_done(done) == fp:
        log(f"job {job}/{args.nj} already complete ({done}); not run again")
        return 0
    for f in split.glob(f"{job}.bad*"):
        f.unlink()
    ids = [l.strip() for l in (split / f"{job}.ids").read_text().splitlines() if l.strip()]
    want = set(ids)
    items = [it for it in read_data_dir(args.data_dir) if it.utt in want]
    torch.set_num_threads(args.num_threads)
    device = resolve_device(args.device)
    t0 = time.time()
    tok = SpeechTokenizer.load(args.tokenizer_dir, device=device)
    log(f"job {job}/{args.nj}: {len(items)} utterances, device {device}, tokenizer loaded in {time.time() - t0:.1f} s")

    (out / "data").mkdir(exist_ok=True)
    # absolute: tokens.scp names this file, and is read from other directories than this one
    ark = (out / "data" / f"tokens.{job}.ark").resolve()
    scp_tmp = split / f"{job}.scp.tmp"
    frames_of: dict[str, int] = {}
    bad: list[AudioError] = []
    audio_sec = 0.0
    max_batch = int(args.batch_seconds * SAMPLE_RATE)
    try:
        from tqdm import tqdm

        bar = tqdm(total=len(items), desc=f"dump job {job}/{args.nj}", unit="utt", file=sys.stderr, disable=args.no_progress, mininterval=2.0)
    except ImportError:  # pragma: no cover
        bar = None
    with kaldiio.WriteHelper(f"ark,scp:{ark},{scp_tmp}") as writer:
        for c in range(0, len(items), args.chunk_utts):
            loaded = []
            for it, wav in iter_audio(items[c : c + args.chunk_utts], min_seconds=args.min_seconds):
                if isinstance(wav, AudioError):
                    bad.append(wav)
                    log(f"BAD {wav}")
                    if bar:
                        bar.update(1)
                else:
                    loaded.append((it.utt, wav))
            # batch by length: similar lengths together, padded size bounded
            loaded.sort(key=lambda x: -len(x[1]))
            i = 0
            while i < len(loaded):
                j = i + 1
                while j < len(loaded) and len(loaded[i][1]) * (j + 1 - i) <= max_batch:
                    j += 1
                batch = loaded[i:j]
                frames = tok.encode([w for _, w in batch], [u for u, _ in batch])
                for (utt, wav), fr in zip(batch, frames):
                    writer[utt] = flatten_frames(fr)
                    frames_of[utt] = int(fr.shape[0])
                    audio_sec += len(wav) / SAMPLE_RATE
                if bar:
                    bar.update(len(batch))
                i = j
    if bar:
        bar.close()
    el = time.time() - t0
    log(f"job {job}/{args.nj}: {len(frames_of)} utterances, {audio_sec:.1f} s of audio in {el:.1f} s "
        f"({audio_sec / max(el, 1e-9):.1f} s audio / s), {len(bad)} bad")
    bad_lines = [f"{e.utt} {e.source} {e.reason}" for e in bad]
    if bad and not args.skip_bad:
        write_lines_atomic(split / f"{job}.bad", bad_lines)
        scp_tmp.unlink(missing_ok=True)
        msg = "\n".join(f"  {e}" for e in bad)
        log(f"ERROR: job {job}: {len(bad)} bad utterance(s) (pass --skip_bad to skip them):\n{msg}")
        return 1
    write_lines_atomic(split / f"{job}.skipped", bad_lines)
    write_lines_atomic(split / f"{job}.utt2num_frames", [f"{u} {frames_of[u]}" for u in ids if u in frames_of])
    os.replace(scp_tmp, split / f"{job}.scp")
    write_lines_atomic(done, [fp])
    return 0


# --------------------------------------------------------------- orchestrator
def run_all(args) -> int:
    from ..tokenizers.audio import FRAME_RATE, DataDirError, read_data_dir
    from ..tokenizers.speech import fingerprint as tokenizer_fingerprint, read_config, write_config
    from ..tokenizers.token_io import write_lines_atomic

    t0 = time.time()
    data_dir, out = Path(args.data_dir), Path(args.out_dir)
    try:
        items = read_data_dir(data_dir)
        cfg = read_config(args.tokenizer_dir)
    except (DataDirError, FileNotFoundError, ValueError) as e:
        # the same message stage 2 gives for the same bad file, not a traceback
        print(f"ERROR: {e}", file=sys.stderr)
        return 1
    if not items:
        raise SystemExit(f"ERROR: {data_dir / 'wav.scp'} lists no utterances")
    cfg_text = json.dumps(cfg, sort_keys=True)
    if args.nj > len(items):
        log(f"nj={args.nj} > {len(items)} utterances; using nj={len(items)}")
        args.nj = len(items)
    fp = fingerprint(args, data_dir, cfg_text)
    log(f"read {data_dir} ({len(items)} utterances), tokenizer {args.tokenizer_dir}; writing {out} with {args.nj} job(s)")
    if read_done(out / DONE) == fp:
        log(f"{out} is already complete for these inputs; nothing to do")
        return 0
    (out / DONE).unlink(missing_ok=True)
    split = out / f"split{args.nj}"
    if read_done(split / "fingerprint") != fp:
        # inputs changed (or first run): old job outputs must not be reused
        if split.exists():
            import shutil

            shutil.rmtree(split)
        split.mkdir(parents=True)
        for j, part in enumerate(split_ids([it.utt for it in items], args.nj), 1):
            write_lines_atomic(split / f"{j}.ids", part)
        write_lines_atomic(split / "fingerprint", [fp])
    (out / "log").mkdir(parents=True, exist_ok=True)
    pending = [j for j in range(1, args.nj + 1) if read_done(split / f"{j}{DONE}") != fp]
    if pending:
        log(f"running jobs {pending} of {args.nj} (others already complete)")
        passthrough = ["--data_dir", str(data_dir), "--tokenizer_dir", str(args.tokenizer_dir), "--out_dir", str(out),
                       "--nj", str(args.nj), "--min_seconds", str(args.min_seconds), "--batch_seconds", str(args.batch_seconds),
                       "--chunk_utts", str(args.chunk_utts), "--device", args.device, "--num_threads", str(args.num_threads)]
        if args.skip_bad:
            passthrough.append("--skip_bad")
        if args.no_progress:
            passthrough.append("--no_progress")
        cmd = shlex.split(args.cmd or default_cmd())
        full = cmd + [f"JOB=1:{args.nj}", str(out / "log" / "dump.JOB.log"), sys.executable, "-m", "espnet2_speechlm.bin.dump_tokens",
                      "--job", "JOB"] + passthrough
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        rc = subprocess.run(full, env=env).returncode
        if rc != 0:
            bad = []
            for j in range(1, args.nj + 1):
                f = split / f"{j}.bad"
                if f.exists():
                    bad += f.read_text().splitlines()
            failed = [j for j in range(1, args.nj + 1) if read_done(split / f"{j}{DONE}") != fp]
            lines = [f"ERROR: token dump of {data_dir} failed ({len(failed)} of {args.nj} jobs)."]
            if bad:
                lines.append(f"{len(bad)} bad utterance(s) (id, file, reason); fix them or pass --skip_bad to skip them:")
                lines += [f"  {b}" for b in bad]
            other = [j for j in failed if not (split / f"{j}.bad").exists()]
            if other:
                lines.append("see the logs: " + ", ".join(str(out / "log" / f"dump.{j}.log") for j in other))
            print("\n".join(lines), file=sys.stderr)
            return 1
    # merge, in data-dir order
    scp, u2n, skipped = {}, {}, []
    for j in range(1, args.nj + 1):
        for line in (split / f"{j}.scp").read_text().splitlines():
            k, v = line.split(maxsplit=1)
            scp[k] = v
        for line in (split / f"{j}.utt2num_frames").read_text().splitlines():
            k, v = line.split()
            u2n[k] = v
        skipped += [l for l in (split / f"{j}.skipped").read_text().splitlines() if l.strip()]
    order = [it.utt for it in items if it.utt in scp]
    write_lines_atomic(out / "tokens.scp", [f"{u} {scp[u]}" for u in order])
    write_lines_atomic(out / "utt2num_frames", [f"{u} {u2n[u]}" for u in order])
    if args.skip_bad:
        write_lines_atomic(out / "skipped_utts", skipped)
        if skipped:
            log(f"skipped {len(skipped)} bad utterance(s), listed in {out / 'skipped_utts'}")
    # the fingerprint lets decoding tell these tokens from another tokenizer's, even after
    # the tokenizer directory is fitted again in place
    out_cfg = dict(cfg, tokenizer_dir=str(Path(args.tokenizer_dir).resolve()), data_dir=str(data_dir.resolve()),
                   fingerprint=tokenizer_fingerprint(cfg))
    write_config(out, out_cfg)
    write_lines_atomic(out / DONE, [fp])
    frames = sum(int(v) for v in u2n.values())
    log(f"wrote {out / 'tokens.scp'} ({len(order)} utterances, {frames} frames = {frames / cfg.get('frame_rate', FRAME_RATE) / 3600:.2f} h) in {time.time() - t0:.1f} s")
    return 0


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    if args.nj < 1:
        raise SystemExit("--nj must be >= 1")
    if args.job is not None:
        if not 1 <= args.job <= args.nj:
            raise SystemExit(f"--job {args.job} is outside 1..{args.nj}")
        return run_job(args, args.job)
    return run_all(args)


if __name__ == "__main__":
    sys.exit(main())
