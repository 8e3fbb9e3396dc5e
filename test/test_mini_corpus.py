"""mini_espeak's corpus builder: the clause texts added to training never leak a
held-out sentence and obey the recipe's vocabulary and length limits."""

import importlib.util
from pathlib import Path

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
