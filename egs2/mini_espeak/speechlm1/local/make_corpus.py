#!/usr/bin/env python3
"""Build the mini_espeak corpus: English sentences rendered by espeak-ng.

Text (``--text_source``): ``grammar`` (the recipe's default) draws distinct
sentences from the 177-word grammar of ``local/grammar.py``, dev and test
sentences held out of training and of the text-only corpus.  ``fortunes``
takes the sentences of the Debian ``fortunes`` collection: speech data uses
only sentences of 4-12 words whose words are all among the ``--vocab_words``
most frequent ones (a tiny model can learn that vocabulary in minutes); the
text-only corpus (``data/lm_text``) is every clean sentence except the
dev/test ones.  Test sentences are held out of training, and so are the test
voices; every test word occurs in some training sentence.  With
``--clause_voices`` the clauses of every in-vocabulary fortune sentence (split
at , ; : and sentence ends, 3-10 words) are spoken too: several times more
short training texts over the same words.  A clause that occurs inside a
dev/test sentence is left out.  With ``--train_speakers N`` the training speech
comes from N speakers drawn from espeak-ng's English accents x voice variants x
pitches instead of 8 fixed voices: more voices to generalise to the held-out
ones from (the test accent and variant are never drawn).

Writes data/{train,dev,test}/{wav.scp,text,utt2spk}, data/lm_text/text and
the wav files under --wav_dir (16 kHz, mono).
"""

from __future__ import annotations

import argparse
import collections
import glob
import hashlib
import io
import os
import random
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import grammar  # noqa: E402

TRAIN_VOICES = ["en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-us+f2", "en-us+m3", "en-gb+f4", "en-us+m7"]
TEST_VOICES = ["en-gb-x-gbclan", "en-us+f5"]
# --train_speakers draws its speakers from these accents x variants x pitches.  The test
# voices' accent (gbclan) and variant (f5) are not among them, so no test voice is trained on.
SPEAKER_ACCENTS = ["en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbcwmd", "en-029", "en-us-nyc"]
SPEAKER_VARIANTS = [
    "", "m1", "m2", "m3", "m4", "m6", "m7", "m8", "f1", "f2", "f3", "f4", "klatt", "klatt2", "klatt3",
    "adam", "Alex", "Andy", "Annie", "benjamin", "caleb", "david", "ed", "edward", "iven", "john",
    "linda", "max", "Michael", "paul", "quincy", "rob", "robert", "steph", "travis", "victor", "zac",
]


def speaker_id(voice: str) -> str:
    """A fixed voice's speaker id, also the prefix of its utterance ids (``+`` is not Kaldi-safe)."""
    return voice.replace("+", "_")


def draw_speakers(n: int, rng: random.Random) -> list[tuple[str, str, int]]:
    """``n`` distinct (speaker id, espeak-ng voice, pitch 0-99) for training."""
    combos = [(a, v) for a in SPEAKER_ACCENTS for v in SPEAKER_VARIANTS]
    if n > len(combos):
        raise SystemExit(f"make_corpus.py: --train_speakers {n} is more than the {len(combos)} accent x variant voices")
    out = []
    for a, v in rng.sample(combos, n):
        pitch = rng.randint(25, 75)
        voice = f"{a}+{v}" if v else a
        out.append((f"{a}_{v or 'base'}_p{pitch:02d}", voice, pitch))
    return out


def read_fortunes(root: str) -> list[str]:
    files = sorted(f for f in glob.glob(os.path.join(root, "*")) if "." not in os.path.basename(f) and os.path.isfile(f))
    if not files:
        sys.exit(f"ERROR: no fortune files in {root} (apt-get install fortunes)")
    out = []
    for f in files:
        text = open(f, encoding="latin-1").read()
        for cookie in text.split("\n%\n"):
            cookie = re.split(r"\n\s*--", cookie)[0]  # drop attributions
            flat = " ".join(cookie.split())
            for s in re.split(r"(?<=[.!?])\s+", flat):
                s = s.strip()
                if re.fullmatch(r"[A-Za-z][A-Za-z ,'.?!]*[.?!]", s) and "  " not in s:
                    out.append(s)
    return list(dict.fromkeys(out))  # unique, in file order


def words(s: str) -> list[str]:
    return re.findall(r"[a-z']+", s.lower())


def held_clauses(sentences: list[str], vocab: set[str], held: set[str]) -> list[str]:
    """Clauses of 3-10 in-vocabulary words (as written, punctuation stripped), in first-seen order;
    none whose words occur as a run in a held-out sentence, so that no test text is trained on."""
    held_text = [" " + " ".join(words(s)) + " " for s in held]
    out = {}
    for s in sentences:
        for part in re.split(r"[,;:.!?]", s):
            w = words(part)
            if not 3 <= len(w) <= 10 or not all(x in vocab for x in w):
                continue
            key = " ".join(w)
            if key in out or any(" " + key + " " in h for h in held_text):
                continue
            out[key] = part.strip()
    return list(out.values())


def fortunes_texts(a, rng: random.Random):
    """Sentences of 4-12 words of the fortunes made only of the --vocab_words most frequent words
    (training, dev, test), their clauses (--clause_voices) and the text-only corpus."""
    allsent = read_fortunes(a.fortunes)
    counts = collections.Counter(w for s in allsent for w in words(s))
    top = {w for w, _ in counts.most_common(a.vocab_words)}
    speech = [s for s in allsent if 4 <= len(words(s)) <= 12 and all(w in top for w in words(s))]
    rng.shuffle(speech)
    # held-out sentences use only words that occur in training sentences
    n_held = 2 * a.num_test
    if a.max_train_sentences:
        train = speech[: a.max_train_sentences]
        pool = speech[a.max_train_sentences :]
    else:
        train, pool = speech[n_held:], speech[:n_held]
    train_words = {w for s in train for w in words(s)}
    ok = [s for s in pool if all(w in train_words for w in words(s))][:n_held]
    if not a.max_train_sentences:
        train += [s for s in pool if s not in ok]
    test, dev = ok[: len(ok) // 2], ok[len(ok) // 2 :]
    held_set = set(test) | set(dev)
    clauses = held_clauses(allsent, top, held_set) if a.clause_voices else []
    train_keys = {" ".join(words(s)) for s in train}
    clauses = [c for c in clauses if " ".join(words(c)) not in train_keys]
    lm_text = [s for s in allsent if s not in held_set and 3 <= len(words(s)) <= 30]
    print(f"[make_corpus] {len(allsent)} fortune sentences; speech: {len(train)} train / {len(dev)} dev / {len(test)} test "
          f"sentences over {len(train_words)} words, {len(clauses)} clauses; text-only corpus {len(lm_text)} sentences", file=sys.stderr)
    return train, dev, test, clauses, lm_text


def grammar_texts(a, rng: random.Random):
    """Distinct sentences of the small grammar (local/grammar.py): 2 x --num_test held out for dev
    and test, --max_train_sentences for training and --lm_sentences for the text-only corpus, none of
    them a held-out sentence.  Every word of the grammar occurs in training thousands of times."""
    n_train = a.max_train_sentences or 4000
    held = grammar.sentences(2 * a.num_test, rng)
    test, dev = held[: a.num_test], held[a.num_test :]
    train = grammar.sentences(n_train, rng, exclude=set(held))
    lm_text = grammar.sentences(a.lm_sentences, rng, exclude=set(held))
    print(f"[make_corpus] grammar of {len(grammar.vocabulary())} words; speech: {len(train)} train / {len(dev)} dev / "
          f"{len(test)} test sentences; text-only corpus {len(lm_text)} sentences", file=sys.stderr)
    return train, dev, test, [], lm_text


def render(text: str, voice: str, speed: int, pitch: int = 50) -> np.ndarray:
    cmd = ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", text]
    raw = subprocess.run(cmd, capture_output=True, check=True).stdout
    wav, sr = sf.read(io.BytesIO(raw), dtype="float32")
    if sr != 16000:
        from fractions import Fraction

        r = Fraction(16000, sr)
        wav = resample_poly(wav, r.numerator, r.denominator).astype(np.float32)
    return wav


def cached_render(wav_dir: Path, utt: str, text: str, voice: str, speed: int, pitch: int) -> Path:
    """``wav_dir/<utt>.<key>.wav``, rendered unless already there.  The key
    hashes what is spoken and how, so a rerun with other options (another
    sentence list, speed range or seed) never reuses audio of another text
    under the same utterance id."""
    key = hashlib.sha1(f"{voice}|{speed}|{pitch}|{text}".encode()).hexdigest()[:12]
    path = wav_dir / f"{utt}.{key}.wav"
    if not path.exists():
        tmp = path.with_suffix(".tmp.wav")
        sf.write(tmp, render(text, voice, speed, pitch), 16000, subtype="PCM_16")
        os.replace(tmp, path)
    return path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fortunes", default="/usr/share/games/fortunes")
    p.add_argument("--data", default="data")
    p.add_argument("--wav_dir", default="downloads/wav")
    p.add_argument("--text_source", choices=["fortunes", "grammar"], default="fortunes",
                   help="fortunes: real sentences of the Debian fortunes; grammar: sentences of a ~180-word grammar "
                        "(local/grammar.py), nearly all distinct")
    p.add_argument("--vocab_words", type=int, default=500, help="fortunes: the sentences' words are among the N most frequent")
    p.add_argument("--lm_sentences", type=int, default=20000, help="grammar: sentences of the text-only corpus")
    p.add_argument("--num_test", type=int, default=60, help="held-out sentences for test (and as many for dev)")
    p.add_argument("--voices_per_sentence", type=int, default=4, help="training renderings of each sentence")
    p.add_argument("--max_train_sentences", type=int, default=0, help="0: all (fortunes) or 4000 (grammar)")
    p.add_argument("--clause_voices", type=int, default=0,
                   help="also train on the clauses (3-10 words, split at , ; :) of every fortune sentence made of the "
                        "--vocab_words words, each spoken by this many voices (0: none); clauses that occur in a held-out "
                        "sentence are left out")
    p.add_argument("--train_speakers", type=int, default=0,
                   help="0: the 8 fixed training voices; N: N speakers drawn from espeak-ng accents x voice variants x "
                        "pitches (more speakers for a model to generalise to unseen voices from)")
    p.add_argument("--speed_range", default="130:200", help="espeak-ng speeds (words per minute) of training speech, lo:hi")
    p.add_argument("--test_speed", type=int, default=160)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=2)
    a = p.parse_args()
    rng = random.Random(a.seed)

    if a.text_source == "grammar":
        train, dev, test, clauses, lm_text = grammar_texts(a, rng)
    else:
        train, dev, test, clauses, lm_text = fortunes_texts(a, rng)
    lo, hi = (int(x) for x in a.speed_range.split(":"))

    if a.train_speakers:
        speakers = draw_speakers(a.train_speakers, rng)
    else:
        speakers = [(speaker_id(v), v, 50) for v in TRAIN_VOICES]
    jobs = []  # (set, utt, spk, text, voice, speed, pitch)
    for i, s in enumerate(train):
        for spk, v, pitch in rng.sample(speakers, a.voices_per_sentence):
            jobs.append(("train", f"{spk}-tr{i:05d}", spk, s, v, rng.randint(lo, hi), pitch))
    for i, s in enumerate(clauses):
        for spk, v, pitch in rng.sample(speakers, a.clause_voices):
            jobs.append(("train", f"{spk}-cl{i:05d}", spk, s, v, rng.randint(lo, hi), pitch))
    for name, sents in (("dev", dev), ("test", test)):
        for i, s in enumerate(sents):
            v = TEST_VOICES[i % len(TEST_VOICES)]
            jobs.append((name, f"{speaker_id(v)}-{name}{i:04d}", speaker_id(v), s, v, a.test_speed, 50))
    wav_dir = Path(a.wav_dir).resolve()
    wav_dir.mkdir(parents=True, exist_ok=True)

    with ThreadPoolExecutor(a.jobs) as ex:
        paths = list(ex.map(lambda j: cached_render(wav_dir, j[1], *j[3:]), jobs))  # (utt, text, voice, speed, pitch)
    for name in ("train", "dev", "test"):
        d = Path(a.data) / name
        d.mkdir(parents=True, exist_ok=True)
        rows = sorted((utt, spk, text, path) for (n, utt, spk, text, *_), path in zip(jobs, paths) if n == name)
        (d / "wav.scp").write_text("".join(f"{u} {pth}\n" for u, _, _, pth in rows))
        (d / "text").write_text("".join(f"{u} {t}\n" for u, _, t, _ in rows))
        (d / "utt2spk").write_text("".join(f"{u} {s}\n" for u, s, _, _ in rows))
    d = Path(a.data) / "lm_text"
    d.mkdir(parents=True, exist_ok=True)
    (d / "text").write_text("".join(f"lm{i:06d} {s}\n" for i, s in enumerate(lm_text)))
    print(f"[make_corpus] wrote {a.data}/{{train,dev,test,lm_text}} ({len(jobs)} utterances)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
