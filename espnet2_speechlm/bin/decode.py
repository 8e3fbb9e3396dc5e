"""Decode a test set with a packed speech LM: ASR, TTS, text or speech continuation.

Usage (the recipe's decode stage calls exactly this)::

    python -m espnet2_speechlm.bin.decode --model_dir exp/pack --task asr \\
        --data_dir data/test --token_scp dump/tokens/test/tokens.scp \\
        --out_dir exp/decode/asr_test --config conf/decode_asr.yaml --nj 2 --cmd utils/run.pl

Inputs by task:
  asr      speech of each utterance: ``--token_scp`` (dumped tokens) or ``--data_dir``/wav.scp
  tts      ``--data_dir``/text; with ``--speaker_prompt same_speaker`` (and utt2spk, token_scp)
           another utterance of the same speaker is the speaker prompt
  textlm   ``--data_dir``/text: the first ``--prompt_ratio`` of each line's tokens is the prompt
  audiolm  speech as for asr: the first ``--prompt_seconds`` are the prompt

Outputs in ``out_dir``: ``text`` (asr, textlm: ``utt hypothesis``), ``wav.scp`` and
``wav/<utt>.wav`` 16 kHz (tts, audiolm), ``tokens.scp`` + ark of the generated
tokens (flattened int32, as the dump stores them), ``decode.yaml`` (the config
used) and ``.done``.  Work is split into ``nj`` jobs run by ``--cmd``; a job
that finished is not run again.

A ``--token_scp`` whose ``tokenizer.json`` (written by the dump stage) does not
fit the model's vocabulary, or names another speech tokenizer than the one
packed with the model, is refused before any job starts.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

DONE = ".done"
TASKS = ("asr", "tts", "textlm", "audiolm")


def log(msg: str) -> None:
    print(f"[decode] {msg}", file=sys.stderr, flush=True)


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_dir", required=True, help="packed model directory (infer.api.pack)")
    p.add_argument("--task", required=True, choices=TASKS)
    p.add_argument("--data_dir", help="Kaldi data dir (wav.scp, text, utt2spk)")
    p.add_argument("--token_scp", help="dumped speech tokens of the test set (tokens.scp)")
    p.add_argument("--out_dir", required=True)
    p.add_argument("--config", help="decode config YAML (DecodeConfig keys); default: the model's decode.yaml")
    p.add_argument("--override", nargs="*", default=[], help="dotted overrides, e.g. generation.semantic.top_k=20")
    p.add_argument("--speaker_prompt", default="none", choices=["none", "same_speaker"])
    p.add_argument("--prompt_ratio", type=float, default=0.5, help="textlm: share of each line given as prompt")
    p.add_argument("--prompt_seconds", type=float, default=3.0, help="audiolm: seconds of speech given as prompt")
    p.add_argument("--max_utts", type=int, default=0, help="decode only the first N utterances (0: all)")
    p.add_argument("--nj", type=int, default=1)
    p.add_argument("--job", type=int, default=0, help="internal: run job J of nj (1-based)")
    p.add_argument("--cmd", default=None, help="job runner, e.g. utils/run.pl or 'utils/slurm.pl --gpu 1'")
    p.add_argument("--device", default="auto")
    p.add_argument("--num_threads", type=int, default=1)
    return p


# ------------------------------------------------------------------- inputs
def read_kaldi_table(path: Path) -> dict[str, str]:
    from ..tokenizers.audio import read_table

    return {k: v for k, v, _ in read_table(path, min_fields=1)}


def utterance_ids(args) -> list[str]:
    if args.task in ("asr", "audiolm"):
        if args.token_scp:
            from ..tokenizers.token_io import TokenReader

            ids = list(TokenReader(args.token_scp))
        elif args.data_dir:
            from ..tokenizers.audio import read_data_dir

            ids = [it.utt for it in read_data_dir(args.data_dir)]
        else:
            raise SystemExit(f"ERROR: --task {args.task} needs --token_scp or --data_dir")
    else:
        if not args.data_dir:
            raise SystemExit(f"ERROR: --task {args.task} needs --data_dir (with a text file)")
        ids = list(read_kaldi_table(Path(args.data_dir) / "text"))
    if not ids:
        raise SystemExit("ERROR: the test set has no utterances")
    ids = sorted(ids)
    return ids[: args.max_utts] if args.max_utts else ids


def check_token_dump(args) -> None:
    """Tokens dumped by another speech tokenizer than the model's are refused
    before any job runs: the model would decode ids that mean something else."""
    from ..tokenizers.speech import TOKENIZER_FILE, TokenizerMismatchError, check_fits_vocab, check_same_tokenizer

    dump_cfg = Path(args.token_scp).parent / TOKENIZER_FILE
    model_tok = Path(args.model_dir) / "speech_tokenizer"
    if not dump_cfg.exists():
        log(f"{args.token_scp}: no {TOKENIZER_FILE} beside it; the tokenizer that made it is not checked")
        return
    try:
        check_fits_vocab(dump_cfg, Path(args.model_dir) / "vocab.json")
        if (model_tok / TOKENIZER_FILE).exists():
            check_same_tokenizer(dump_cfg, model_tok)
    except (TokenizerMismatchError, FileNotFoundError, ValueError) as e:
        raise SystemExit(f"ERROR: --token_scp {args.token_scp} does not fit --model_dir {args.model_dir}: {e}") from None


def load_decode_config(args, lm):
    from .. import config as cfgmod
    from ..infer.api import DecodeConfig, upgrade_decode_dict, upgrade_decode_override

    base = getattr(lm.defaults, args.task)
    overrides = [upgrade_decode_override(o) for o in args.override]
    if args.config:
        data = upgrade_decode_dict(cfgmod.load_yaml(args.config) or {}, args.config)
        return cfgmod.from_dict(DecodeConfig, cfgmod.apply_overrides(data, overrides), args.config)
    if overrides:
        data = cfgmod.apply_overrides(cfgmod.to_dict(base), overrides)
        return cfgmod.from_dict(DecodeConfig, data, "decode config")
    return base


# ------------------------------------------------------------------- worker
def run_job(args, job: int, ids: list[str]) -> None:
    import kaldiio
    import numpy as np
    import soundfile as sf
    import torch

    from .. import config as cfgmod
    from ..infer.api import SpeechLM
    from ..tokenizers.token_io import TokenReader, flatten_frames, write_lines_atomic

    torch.set_num_threads(args.num_threads)
    device = "cuda" if (args.device == "auto" and torch.cuda.is_available()) else ("cpu" if args.device == "auto" else args.device)
    out = Path(args.out_dir) / f"split{args.nj}" / str(job)
    if (out / DONE).exists():
        log(f"job {job}: already complete")
        return
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    t0 = time.time()
    lm = SpeechLM.from_pretrained(args.model_dir, device=device)
    cfg = load_decode_config(args, lm)
    cfgmod.save(cfg, out / "decode.yaml")
    log(f"job {job}: {len(ids)} utterances, task {args.task}, device {device}")

    tokens = TokenReader(args.token_scp, lm.vocab.num_streams) if args.token_scp else None
    texts = read_kaldi_table(Path(args.data_dir) / "text") if args.data_dir and (Path(args.data_dir) / "text").exists() else {}

    def speech_of(utt):
        if tokens is not None:
            return np.asarray(tokens[utt], dtype=np.int64)
        from ..tokenizers.audio import read_data_dir

        items = {it.utt: it for it in read_data_dir(args.data_dir)}
        return lm.encode_speech([items[utt].spec])[0]

    hyps, wavs, gen = {}, {}, {}
    if args.task == "asr":
        frames = [speech_of(u) for u in ids]
        for u, f in zip(ids, frames):
            if len(f) == 0:
                raise SystemExit(f"ERROR: utterance {u!r} has no speech frames")
        hyp = lm.asr_tokens(frames, cfg)
        hyps = dict(zip(ids, hyp))
    elif args.task == "tts":
        missing = [u for u in ids if not texts.get(u, "").strip()]
        if missing:
            raise SystemExit(f"ERROR: {Path(args.data_dir) / 'text'}: empty text for utterances {missing[:10]}")
        prompts = None
        if args.speaker_prompt == "same_speaker":
            prompts = [speech_of(p) for p in same_speaker_prompts(args, ids)]
        scorer = None
        if cfg.nbest > 1:  # keep the candidate whose Whisper transcript has the lowest WER
            from ..score.whisper import wer_scorer

            scorer = wer_scorer()
        out_frames = lm.tts_tokens([texts[u] for u in ids], prompts, cfg, scorer)
        gen = dict(zip(ids, out_frames))
    elif args.task == "textlm":
        prompts = []
        for u in ids:
            t = lm.encode_text(texts[u])
            k = max(1, int(len(t) * args.prompt_ratio))
            prompts.append(t[:k])
        res = lm.continue_text_batch([lm.text_tokenizer.decode(p.tolist()) for p in prompts], cfg)
        hyps = dict(zip(ids, res))
    else:  # audiolm
        frames = [speech_of(u)[: max(1, int(args.prompt_seconds * lm.frame_rate))] for u in ids]
        conts = lm.continue_speech_tokens(frames, cfg)
        gen = {u: np.concatenate([f, c]) for u, f, c in zip(ids, frames, conts)}

    if hyps:
        write_lines_atomic(out / "text", [f"{u} {hyps[u]}".rstrip() for u in ids])
    if gen:
        (out / "wav").mkdir()
        lines = []
        with kaldiio.WriteHelper(f"ark,scp:{out.resolve() / 'tokens.ark'},{out / 'tokens.scp'}") as w:
            for u in ids:
                w(u, flatten_frames(gen[u]))
                wav = lm.decode_speech(gen[u])
                path = (out / "wav" / f"{u}.wav").resolve()
                sf.write(path, wav, lm.sample_rate)
                lines.append(f"{u} {path}")
        write_lines_atomic(out / "wav.scp", lines)
    (out / DONE).write_text(f"{len(ids)} utterances in {time.time() - t0:.1f}s\n")
    log(f"job {job}: done in {time.time() - t0:.1f}s")


def same_speaker_prompts(args, ids: list[str]) -> list[str]:
    """For each utterance, another utterance of its speaker (deterministic: the
    next one in sorted order, cycling); an only child uses itself."""
    u2s = read_kaldi_table(Path(args.data_dir) / "utt2spk")
    by_spk: dict[str, list[str]] = {}
    for u in sorted(u2s):
        by_spk.setdefault(u2s[u], []).append(u)
    out = []
    for u in ids:
        if u not in u2s:
            raise SystemExit(f"ERROR: {Path(args.data_dir) / 'utt2spk'}: no speaker for utterance {u!r}")
        group = by_spk[u2s[u]]
        out.append(group[(group.index(u) + 1) % len(group)])
    return out


# ------------------------------------------------------------------ driver
def merge(args, ids_per_job: list[list[str]]) -> None:
    out = Path(args.out_dir)
    parts = [out / f"split{args.nj}" / str(j) for j in range(1, args.nj + 1)]
    for name in ("text", "wav.scp", "tokens.scp"):
        files = [p / name for p in parts if (p / name).exists()]
        if files:
            tmp = out / (name + ".tmp")
            with open(tmp, "w", encoding="utf-8") as f:
                for fp in files:
                    f.write(fp.read_text())
            os.replace(tmp, out / name)
    shutil.copy(parts[0] / "decode.yaml", out / "decode.yaml")


def input_identity(args) -> dict:
    """What identifies the files a decode reads: a model trained again into the
    same directory, or a changed config or test set, is decoded again instead
    of being taken as already done.  Small files by their content (packing
    rewrites decode.yaml unchanged), large ones (weights, which packing copies
    with their times) by size and modification time."""
    files = [Path(args.model_dir) / f for f in ("model.safetensors", "config.json", "vocab.json", "decode.yaml")]
    for f in (args.config, args.token_scp):
        if f:
            files.append(Path(f))
    if args.data_dir:
        files += [Path(args.data_dir) / f for f in ("wav.scp", "text", "segments")]
    out = {}
    for f in files:
        try:
            st = f.stat()
            if st.st_size < 2**20:
                out[str(f)] = hashlib.sha1(f.read_bytes()).hexdigest()
            else:
                out[str(f)] = [st.st_size, st.st_mtime_ns]
        except FileNotFoundError:
            pass
    return out


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    if args.token_scp and not args.job:
        check_token_dump(args)
    ids = utterance_ids(args)
    args.nj = max(1, min(args.nj, len(ids)))
    parts = [ids[(j * len(ids)) // args.nj : ((j + 1) * len(ids)) // args.nj] for j in range(args.nj)]
    if args.job:
        run_job(args, args.job, parts[args.job - 1])
        return 0
    t0 = time.time()
    out = Path(args.out_dir)
    if args.config:  # fail before any job starts on a bad decode config
        from .. import config as cfgmod
        from ..infer.api import DecodeConfig

        try:
            cfgmod.from_dict(DecodeConfig, cfgmod.apply_overrides(cfgmod.load_yaml(args.config), args.override), args.config)
        except cfgmod.ConfigError as e:
            print(f"ERROR: {e}", file=sys.stderr)
            return 2
    stamp = json.dumps({**{k: v for k, v in vars(args).items() if k not in ("cmd", "job")},
                        "inputs": input_identity(args)}, sort_keys=True)
    if (out / DONE).exists() and (out / DONE).read_text() == stamp:
        log(f"{out} is already complete for these inputs; nothing to do")
        return 0
    (out / DONE).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    split = out / f"split{args.nj}"
    if split.exists() and (split / "stamp").exists() and (split / "stamp").read_text() != stamp:
        shutil.rmtree(split)  # other inputs: old job outputs must not be reused
    split.mkdir(exist_ok=True)
    (split / "stamp").write_text(stamp)
    pending = [j for j in range(1, args.nj + 1) if not (split / str(j) / DONE).exists()]
    log(f"task {args.task}: {len(ids)} utterances, {args.nj} job(s), {len(pending)} to run -> {out}")
    if pending:
        from .dump_tokens import default_cmd

        argv = list(sys.argv[1:] if argv is None else argv)
        cmd = shlex.split(args.cmd or default_cmd())
        (out / "log").mkdir(exist_ok=True)
        # finished jobs return at once (their .done marker), so one call covers all
        full = cmd + [f"JOB=1:{args.nj}", str(out / "log" / "decode.JOB.log"), sys.executable, "-m",
                      "espnet2_speechlm.bin.decode", *argv, "--nj", str(args.nj), "--job", "JOB"]
        rc = subprocess.run(full).returncode
        if rc != 0:
            for j in pending:
                lf = out / "log" / f"decode.{j}.log"
                if lf.exists() and "# Ended (code 0)" not in lf.read_text(errors="replace"):
                    tail = lf.read_text(errors="replace").strip().splitlines()[-8:]
                    print(f"--- {lf} (last lines):\n" + "\n".join(tail), file=sys.stderr)
                    break
            raise SystemExit(f"ERROR: decoding failed (exit {rc}); see {out / 'log'}/decode.*.log")
    merge(args, parts)
    (out / DONE).write_text(stamp)
    log(f"wrote {out} in {time.time() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
