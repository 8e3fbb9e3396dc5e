#!/usr/bin/env python3
"""Kaldi data dirs from the Debian asterisk prompts (real recorded speech, one speaker).

Audio: ``asterisk-core-sounds-en-wav`` (8 kHz, 16-bit wav, 568 prompts spoken by
one female US English speaker, CC-BY-SA-3.0), resampled here to 16 kHz files.
(``asterisk-core-sounds-en-g722`` has 16 kHz versions, but in the G.722 codec,
which neither libsndfile nor sox reads; its band is the same 50-7000 Hz
telephone speech anyway.)

Transcripts: ``asterisk-core-sounds-en``'s ``core-sounds-en.txt.gz``; after a
header of ``;`` comment lines, one prompt per line::

    agent-pass: Please enter your password followed by the pound key.
    digits/7: seven

``name`` is the wav path under the sounds dir without ``.wav``.  A line that
is not ``name: text`` stops the preparation with the file and the line.

Texts are normalised to what a small English BPE can spell (letters, space
and ``, . ' ? !``): ``*``/``#`` become "star"/"pound" (what the prompts say),
1-3 digit numbers are spelled out, hyphens and ``; :`` become spaces/commas,
bracketed remarks (``[beep]``, ``(simple tone sound plays)``, ``<beep>``) are
removed.  Prompts are left out, with the reason, when nothing speakable
remains (tones, silences), when they hold numbers whose reading is ambiguous
(``1234``, ``28.8``, ``H.323``), other characters, or have no audio.  The
list goes to ``<data>/local/dropped_prompts.txt`` and a summary to stderr.

Held-out prompts: ``--num_test`` for test and ``--num_dev`` for dev, drawn
at random (``--seed``); the rest is train (at most ``--max_train``).
"""

from __future__ import annotations

import argparse
import collections
import gzip
import os
import random
import re
import sys
from fractions import Fraction
from pathlib import Path

TRANSCRIPTS = "/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz"
SOUNDS = "/usr/share/asterisk/sounds/en_US_f_Allison"
SPEAKER = "allison"
ALLOWED = re.compile(r"[A-Za-z ,.'?!]*")

ONES = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen " \
       "seventeen eighteen nineteen".split()
TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


class PrepError(Exception):
    pass


def say_number(n: int) -> str:
    """0-999 in words (American: no "and")."""
    if n < 20:
        return ONES[n]
    if n < 100:
        return TENS[n // 10] + ("" if n % 10 == 0 else " " + ONES[n % 10])
    rest = n % 100
    return ONES[n // 100] + " hundred" + ("" if rest == 0 else " " + say_number(rest))


def normalise(text: str) -> tuple[str, str]:
    """(normalised text, "") or ("", reason it is left out)."""
    t = re.sub(r"\[[^\]]*\]|\([^)]*\)|<[^>]*>", " ", text)  # remarks about sounds, not speech
    if re.search(r"[\[\]()<>]", t):
        return "", "unbalanced brackets"
    t = t.replace('"', " ").replace("*", " star ").replace("#", " pound ")
    t = re.sub(r"(?<=\w)-(?=\w)|/", " ", t)
    t = re.sub(r"\s*[;:]\s*", ", ", t)
    if re.search(r"\d{4,}|\d[.,]\d|\d[A-Za-z]|[A-Za-z][.]?\d", t):
        return "", "number with an ambiguous reading"
    t = re.sub(r"\d+", lambda m: " " + say_number(int(m.group())) + " ", t)
    t = re.sub(r"\s+", " ", t).strip()
    t = re.sub(r"\s+([,.?!])", r"\1", t)
    t = re.sub(r"^[,.\s]+", "", t)
    if not re.search(r"[A-Za-z]", t):
        return "", "no speech in the transcript"
    if not ALLOWED.fullmatch(t):
        bad = sorted(set(re.sub(r"[A-Za-z ,.'?!]", "", t)))
        return "", f"characters {''.join(bad)!r}"
    return t, ""


def read_transcripts(path: Path) -> list[tuple[int, str, str]]:
    """(line number, prompt name, text) for every prompt line; errors name the file and line."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise PrepError(f"{path}: not found (apt-get install asterisk-core-sounds-en)") from None
    except (UnicodeDecodeError, OSError, EOFError) as e:
        raise PrepError(f"{path}: cannot be read as UTF-8 text ({e})") from None
    out, seen = [], {}
    for n, line in enumerate(lines, 1):
        s = line.strip()
        if not s or s.startswith(";"):
            continue
        m = re.fullmatch(r"([A-Za-z0-9_./-]+):\s*(.*)", s)
        if m is None:
            raise PrepError(f"{path}: line {n}: expected 'name: text', got {s[:80]!r}")
        name, text = m.group(1), m.group(2).strip()
        if name in seen:
            raise PrepError(f"{path}: line {n}: prompt {name!r} already given on line {seen[name]}")
        seen[name] = n
        out.append((n, name, text))
    if not out:
        raise PrepError(f"{path}: no 'name: text' lines")
    return out


def resample_to(src: Path, dst: Path, sr_out: int = 16000) -> float:
    """Write src as 16 kHz 16-bit mono wav (tmp + rename); returns seconds."""
    import numpy as np
    import soundfile as sf
    from scipy.signal import resample_poly

    wav, sr = sf.read(str(src), dtype="float32", always_2d=True)
    wav = wav.mean(axis=1)
    if sr != sr_out:
        r = Fraction(sr_out, sr)
        wav = resample_poly(wav, r.numerator, r.denominator).astype(np.float32)
    tmp = dst.with_name(dst.name + ".tmp.wav")
    sf.write(str(tmp), np.clip(wav, -1, 1), sr_out, subtype="PCM_16")
    os.replace(tmp, dst)
    return len(wav) / sr_out


def write_dir(d: Path, utts: list[tuple[str, str, Path]]) -> None:
    d.mkdir(parents=True, exist_ok=True)
    utts = sorted(utts)
    for name, rows in (("wav.scp", [f"{u} {w}" for u, _, w in utts]), ("text", [f"{u} {t}" for u, t, _ in utts]),
                       ("utt2spk", [f"{u} {SPEAKER}" for u, _, _ in utts])):
        tmp = d / (name + ".tmp")
        tmp.write_text("".join(r + "\n" for r in rows))
        os.replace(tmp, d / name)
    (d / "spk2utt").write_text(f"{SPEAKER} {' '.join(u for u, _, _ in utts)}\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--transcripts", default=TRANSCRIPTS, help="core-sounds-en.txt(.gz)")
    p.add_argument("--sounds", default=SOUNDS, help="directory of the 8 kHz wav prompts")
    p.add_argument("--data", default="data")
    p.add_argument("--wav_dir", default="downloads/wav16k", help="where the 16 kHz copies are written")
    p.add_argument("--num_test", type=int, default=60)
    p.add_argument("--num_dev", type=int, default=30)
    p.add_argument("--max_train", type=int, default=0, help="0: all the rest")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    try:
        prompts = read_transcripts(Path(a.transcripts))
    except PrepError as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 1
    sounds = Path(a.sounds)
    if not sounds.is_dir():
        print(f"ERROR: {sounds}: not a directory (apt-get install asterisk-core-sounds-en-wav)", file=sys.stderr)
        return 1

    kept, dropped = [], []
    named = set()
    for n, name, text in prompts:
        named.add(name)
        wav = sounds / f"{name}.wav"
        clean, why = normalise(text)
        if not wav.is_file():
            why = f"no audio {wav}"
        if why:
            dropped.append((name, n, why, text))
        else:
            kept.append((f"{SPEAKER}-{name.replace('/', '-')}", clean, wav))
    unnamed = sorted(str(w.relative_to(sounds))[:-4] for w in sounds.rglob("*.wav") if str(w.relative_to(sounds))[:-4] not in named)
    for name in unnamed:
        dropped.append((name, 0, "audio without a transcript", ""))

    ids = collections.Counter(u for u, _, _ in kept)
    dup = [u for u, c in ids.items() if c > 1]
    if dup:
        print(f"ERROR: {a.transcripts}: prompt names that map to the same utterance id: {dup[:5]}", file=sys.stderr)
        return 1
    rng = random.Random(a.seed)
    order = sorted(kept)
    rng.shuffle(order)
    if len(order) <= a.num_test + a.num_dev:
        print(f"ERROR: only {len(order)} usable prompts for --num_test {a.num_test} + --num_dev {a.num_dev}", file=sys.stderr)
        return 1
    splits = {"test": order[: a.num_test], "dev": order[a.num_test: a.num_test + a.num_dev]}
    train = order[a.num_test + a.num_dev:]
    splits["train"] = train[: a.max_train] if a.max_train > 0 else train

    wav_dir = Path(a.wav_dir)
    wav_dir.mkdir(parents=True, exist_ok=True)
    data = Path(a.data)
    total = 0.0
    for split, utts in splits.items():
        rows = []
        for utt, text, src in utts:
            dst = (wav_dir / f"{utt}.wav").resolve()
            if dst.exists():
                import soundfile as sf

                total += sf.info(str(dst)).duration
            else:
                total += resample_to(src, dst)
            rows.append((utt, text, dst))
        write_dir(data / split, rows)
    (data / "local").mkdir(parents=True, exist_ok=True)
    with open(data / "local" / "dropped_prompts.txt", "w") as f:
        for name, n, why, text in dropped:
            f.write(f"{name}\t{'line ' + str(n) if n else '-'}\t{why}\t{text}\n")
    reasons = collections.Counter(why.split(" /")[0] if why.startswith("no audio") else why for _, _, why, _ in dropped)
    print(f"[prepare_asterisk] {len(prompts)} transcript lines, {len(kept)} usable prompts; left out {len(dropped)} "
          f"({', '.join(f'{c} {r}' for r, c in reasons.most_common())}): see {data / 'local' / 'dropped_prompts.txt'}",
          file=sys.stderr)
    print(f"[prepare_asterisk] wrote " + ", ".join(f"{data / s} ({len(u)})" for s, u in splits.items())
          + f"; {total / 60:.1f} min of 16 kHz audio in {wav_dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
