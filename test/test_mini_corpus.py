"""mini_espeak's corpus builder: the clause texts added to training never leak a
held-out sentence and obey the recipe's vocabulary and length limits; the drawn
training speakers are distinct, real espeak-ng voices and never a test voice."""

import importlib.util
import random
import shutil
from pathlib import Path

import numpy as np
import pytest

from hypothesis import given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("make_corpus", ROOT / "egs2/mini_espeak/speechlm1/local/make_corpus.py")
make_corpus = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_corpus)

WORDS = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran", "far", "away", "zebra"]


def test_clauses_split_at_punctuation_and_skip_held_out_text():
    sents = ["The cat sat on a mat, the dog ran far away.", "A dog sat on the mat; the cat ran.", "The zebra ran far away."]
    vocab = set(WORDS) - {"zebra"}
    held = {"The dog ran far away now."}
    got = make_corpus.held_clauses(sents, vocab, held)
    # "the dog ran far away" lies inside the held-out sentence; "the cat ran" has 3 words;
    # the zebra sentence has an out-of-vocabulary word
    assert got == ["The cat sat on a mat", "A dog sat on the mat", "the cat ran"]


sentence = st.lists(st.sampled_from(WORDS), min_size=1, max_size=14).map(
    lambda ws: " ".join(ws).capitalize()
) .flatmap(lambda s: st.sampled_from([",", ";", ".", ""]).map(lambda p: s + p))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(sentence, min_size=1, max_size=3).map(" ".join), min_size=1, max_size=12),
       st.lists(st.lists(st.sampled_from(WORDS), min_size=4, max_size=12).map(" ".join), max_size=4),
       st.sets(st.sampled_from(WORDS), min_size=3))
def test_clauses_are_in_vocabulary_unique_and_never_inside_held_out_text(sents, held, vocab):
    got = make_corpus.held_clauses(sents, vocab, set(held))
    keys = [" ".join(make_corpus.words(c)) for c in got]
    assert len(set(keys)) == len(keys)
    for k in keys:
        ws = k.split()
        assert 3 <= len(ws) <= 10 and all(w in vocab for w in ws)
        for h in held:
            assert f" {k} " not in f" {' '.join(make_corpus.words(h))} "


@given(st.integers(1, len(make_corpus.SPEAKER_ACCENTS) * len(make_corpus.SPEAKER_VARIANTS)), st.integers(0, 2**16))
@settings(max_examples=50, deadline=None)
def test_drawn_speakers_are_distinct_and_never_a_test_voice(n, seed):
    got = make_corpus.draw_speakers(n, random.Random(seed))
    assert len(got) == n and len({s for s, _, _ in got}) == n and len({(v, p) for _, v, p in got}) == n
    # a test voice with a variant holds out that variant; one without, its accent
    test_accents = {v for v in make_corpus.TEST_VOICES if "+" not in v}
    test_variants = {v.split("+")[1] for v in make_corpus.TEST_VOICES if "+" in v}
    assert test_accents and test_variants
    for spk, voice, pitch in got:
        accent, _, variant = voice.partition("+")
        assert accent not in test_accents and variant not in test_variants
        assert 0 <= pitch <= 99 and spk.startswith(accent)


def test_too_many_speakers_is_refused_with_the_limit():
    n = len(make_corpus.SPEAKER_ACCENTS) * len(make_corpus.SPEAKER_VARIANTS)
    with pytest.raises(SystemExit, match=f"more than the {n}"):
        make_corpus.draw_speakers(n + 1, random.Random(0))


needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")


@needs_espeak
def test_every_speaker_variant_and_accent_is_a_real_espeak_voice():
    # espeak-ng falls back to the plain voice without a word when a variant is unknown,
    # so a misspelt name would silently shrink the speaker pool: each must change the audio
    text = "the cat sat on the mat"
    plain = make_corpus.render(text, "en-us", 160)
    for v in make_corpus.SPEAKER_VARIANTS[1:]:
        assert not np.array_equal(make_corpus.render(text, f"en-us+{v}", 160), plain), f"variant {v!r} sounds like plain en-us"
    for a in make_corpus.SPEAKER_ACCENTS[1:]:
        assert not np.array_equal(make_corpus.render(text, a, 160), plain), f"accent {a!r} sounds like en-us"
    assert not np.array_equal(make_corpus.render(text, "en-us", 160, pitch=30), plain)


@needs_espeak
def test_the_wav_cache_never_serves_another_text_under_the_same_id(tmp_path):
    """Utterance ids number sentences in a list that depends on the options, so
    a rerun with other options may give an id another text: it gets new audio."""
    a = make_corpus.cached_render(tmp_path, "en-us_f2-tr00001", "Hello there.", "en-us+f2", 160, 50)
    stamp = a.stat().st_mtime_ns
    assert make_corpus.cached_render(tmp_path, "en-us_f2-tr00001", "Hello there.", "en-us+f2", 160, 50) == a
    assert a.stat().st_mtime_ns == stamp  # reused, not rendered again
    b = make_corpus.cached_render(tmp_path, "en-us_f2-tr00001", "Good night.", "en-us+f2", 160, 50)
    assert b != a and a.exists()
    import soundfile as sf

    assert np.array_equal(sf.read(b, dtype="int16")[0], sf.read(make_corpus.cached_render(tmp_path, "x", "Good night.", "en-us+f2", 160, 50), dtype="int16")[0])
    assert not np.array_equal(sf.read(a, dtype="int16")[0], sf.read(b, dtype="int16")[0])
    # speed and pitch are part of the key too
    assert len({make_corpus.cached_render(tmp_path, "u", "Hello there.", "en-us", s, p) for s, p in ((160, 50), (170, 50), (160, 40))}) == 3
    assert not list(tmp_path.glob("*.tmp.wav"))


def test_grammar_corpus_holds_out_its_test_sentences_but_not_their_words():
    """The default corpus: dev and test sentences never occur in training or in the text-only
    corpus, yet every word (so every character: the recipe's BPE has no byte fallback) of them does,
    and the same seed gives the same corpus."""
    import argparse
    a = argparse.Namespace(max_train_sentences=3000, num_test=60, lm_sentences=2000)
    train, dev, test, clauses, lm_text = make_corpus.grammar_texts(a, random.Random(0))
    assert (len(train), len(dev), len(test), clauses, len(lm_text)) == (3000, 60, 60, [], 2000)
    held = set(dev) | set(test)
    assert len(held) == 120 and not held & (set(train) | set(lm_text))
    train_words = {w for s in train for w in s.split()}
    assert {w for s in held for w in s.split()} <= train_words
    assert len(train_words) < 200   # a constrained vocabulary, each word seen many times
    again = make_corpus.grammar_texts(a, random.Random(0))
    assert again[0] == train and again[2] == test
