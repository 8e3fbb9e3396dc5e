"""WER/CER scoring: hand-computed cases, the normaliser, files, CLI, results tables."""

import json
import math
import subprocess
import sys

import editdistance
import pytest
from hypothesis import given
from hypothesis import strategies as st

from espnet2_speechlm.bin import collect_results as collect_cli
from espnet2_speechlm.bin import score_asr as score_asr_cli
from espnet2_speechlm.score.results import collect_results, format_table, make_row, write_results
from espnet2_speechlm.score.text_norm import normalize_english, number_to_words, ordinal_to_words
from espnet2_speechlm.score.wer import (
    ScoringInputError,
    align,
    char_error_rate,
    read_text,
    score_corpus,
    score_texts,
    word_error_rate,
)

PY = sys.executable


# ------------------------------------------------------------ hand-computed


def test_alignment_substitution_and_insertion():
    # a b c d -> a x c d e: b->x substituted, e inserted: 2 errors / 4 words.
    ops = [op for op, _, _ in align("a b c d".split(), "a x c d e".split())]
    assert ops == ["C", "S", "C", "C", "I"]
    r = word_error_rate(["a b c d"], ["a x c d e"], normalize=False)
    assert (r["sub"], r["del"], r["ins"], r["cor"], r["errors"], r["ref_words"]) == (1, 0, 1, 3, 2, 4)
    assert r["wer"] == pytest.approx(50.0)


def test_alignment_deletion():
    # a b c -> b: a and c deleted.
    assert align(["a", "b", "c"], ["b"]) == [("D", "a", None), ("C", "b", "b"), ("D", "c", None)]
    r = word_error_rate(["a b c"], ["b"], normalize=False)
    assert (r["sub"], r["del"], r["ins"]) == (0, 2, 0)
    assert r["wer"] == pytest.approx(200 / 3)


def test_empty_hypothesis_is_all_deletions():
    r = word_error_rate(["one two three"], [""])
    assert (r["del"], r["errors"], r["ref_words"], r["wer"]) == (3, 3, 3, 100.0)
    c = char_error_rate(["ab"], [""], normalize=False)
    assert (c["del"], c["cer"]) == (2, 100.0)


def test_empty_reference():
    # Both empty: nothing to score, no error.
    r = word_error_rate([""], [""])
    assert (r["errors"], r["ref_words"], r["wer"]) == (0, 0, 0.0)
    # Empty reference, two hypothesis words: two insertions, rate undefined.
    r = word_error_rate([""], ["a b"], normalize=False)
    assert (r["ins"], r["errors"], r["ref_words"]) == (2, 2, 0)
    assert math.isinf(r["wer"])
    # In a corpus it adds its insertions and nothing to N:
    # (2 + 1 + 0) errors / (4 + 0 + 2) words = 50 %.
    r = word_error_rate(["a b c d", "", "e f"], ["a x c d e", "g", "e f"], normalize=False)
    assert (r["errors"], r["ref_words"], r["ins"], r["num_utts"]) == (3, 6, 2, 3)
    assert r["wer"] == pytest.approx(50.0)


def test_cer_counts_characters_and_word_boundaries():
    assert char_error_rate(["abc"], ["abd"], normalize=False)["cer"] == pytest.approx(100 / 3)
    # "ab cd" -> "abcd": the space is one deleted character of five.
    c = char_error_rate(["ab cd"], ["abcd"], normalize=False)
    assert (c["del"], c["ref_chars"], c["cer"]) == (1, 5, 20.0)


def test_normalisation_changes_the_score():
    refs, hyps = ["It's 5 o'clock, Mr. Smith!"], ["its five o'clock mr smith"]
    assert word_error_rate(refs, hyps)["wer"] == pytest.approx(100 / 5)  # only it's/its differs
    assert word_error_rate(refs, hyps, normalize=False)["errors"] == 5  # every raw token differs
    assert word_error_rate(["Hello, World!"], ["hello world"])["wer"] == 0.0
    assert word_error_rate(["a b"], ["A B"], normalize=lambda s: s.upper())["wer"] == 0.0


@given(
    st.lists(st.sampled_from("abcde"), max_size=12),
    st.lists(st.sampled_from("abcdf"), max_size=12),
)
def test_error_count_is_the_edit_distance(ref, hyp):
    s = score_texts(["u"], [" ".join(ref)], [" ".join(hyp)], normalize=False)
    w = s.words
    assert w.errors == editdistance.eval(ref, hyp)
    assert w.cor + w.sub + w.dele == len(ref) and w.cor + w.sub + w.ins == len(hyp)


# ------------------------------------------------------------ normaliser


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Hello, World!", "hello world"),
        ("It\u2019s 10:30 on the 21st.", "it's ten thirty on the twenty first"),
        ("I paid $5 for 50% of 1,000,000 items", "i paid five dollars for fifty percent of one million items"),
        ("-3 and 3.14", "minus three and three point one four"),
        ("twenty-one \u201cquoted\u201d users' caf\u00e9 & bar", "twenty one quoted users cafe and bar"),
        ("Dial 007, then 105", "dial zero zero seven then one hundred five"),
        ("[ascending tones] MP3", "mp three"),
        ("\uff26\uff35\uff2c\uff2c width", "full width"),
        ("   ", ""),
    ],
)
def test_normaliser_cases(text, expected):
    assert normalize_english(text) == expected


def test_number_words():
    assert number_to_words(0) == "zero"
    assert number_to_words(1990) == "one thousand nine hundred ninety"
    assert number_to_words(2_000_017) == "two million seventeen"
    assert ordinal_to_words(1) == "first" and ordinal_to_words(12) == "twelfth"
    assert ordinal_to_words(40) == "fortieth" and ordinal_to_words(103) == "one hundred third"


@given(st.text(max_size=40))
def test_normaliser_is_idempotent(text):
    once = normalize_english(text)
    assert normalize_english(once) == once


# ------------------------------------------------------------ files and bad input


def _write(path, text, mode="w"):
    if mode == "wb":
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def test_read_text(tmp_path):
    p = _write(tmp_path / "text", "u1 Hello  world\nu2\nu3 a\tb\n")
    assert read_text(p) == {"u1": "Hello  world", "u2": "", "u3": "a\tb"}


@pytest.mark.parametrize(
    "content, message",
    [
        ("u1 a\n\nu2 b\n", ":2: empty line"),
        ("u1 a\n  u2 b\n", ":2: line starts with whitespace"),
        ("u1 a\nu2 b\nu1 c\n", ":3: duplicate utterance id 'u1' (first on line 1)"),
        (b"u1 a\nu2 \xff\xfe\n", ":2: not valid UTF-8"),
        ("", ": file is empty"),
    ],
)
def test_read_text_errors_name_file_and_line(tmp_path, content, message):
    p = _write(tmp_path / "bad_text", content, "wb" if isinstance(content, bytes) else "w")
    with pytest.raises(ScoringInputError) as e:
        read_text(p)
    assert str(e.value).startswith(str(p)) and message in str(e.value)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ScoringInputError, match=r"nothere\.txt: no such file"):
        read_text(tmp_path / "nothere.txt")


def test_id_mismatch(tmp_path):
    ref = {"u1": "a", "u2": "b", "u3": "c"}
    with pytest.raises(ScoringInputError, match=r"hyp\.txt: 1 utterance id\(s\) not in ref\.txt: 'zz'"):
        score_corpus(ref, {"u1": "a", "zz": "b"}, ref_name="ref.txt", hyp_name="hyp.txt")
    with pytest.raises(ScoringInputError, match=r"hyp\.txt: 2 utterance id\(s\) of ref\.txt are missing: 'u2', 'u3'"):
        score_corpus(ref, {"u1": "a"}, ref_name="ref.txt", hyp_name="hyp.txt")
    s = score_corpus(ref, {"u1": "a"}, allow_missing_hyp=True)
    assert (s.words.dele, s.words.errors, s.wer) == (2, 2, pytest.approx(200 / 3))


# ------------------------------------------------------------ CLI and results


def test_score_asr_cli(tmp_path, capsys):
    ref = _write(tmp_path / "ref_text", "u1 The cat sat on the mat.\nu2 Hello world\nu3\n")
    dec = tmp_path / "exp" / "lm_small" / "decode_asr_beam1" / "test_a"
    dec.mkdir(parents=True)
    hyp = _write(dec / "text", "u2 hello, World!\nu1 the cat sat on a mat\nu3 uh\n")
    out = tmp_path / "score"
    assert score_asr_cli.main(["--ref", str(ref), "--hyp", str(hyp), "--out_dir", str(out)]) == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    wer = next(r for r in rows if r["metric"] == "WER")
    # u1: the->a substitution; u3: one insertion against an empty reference: 2 / 8.
    assert wer["value"] == pytest.approx(25.0)
    assert (wer["utterances"], wer["test_set"], wer["decode_config"], wer["model"]) == (
        3, "test_a", "decode_asr_beam1", "lm_small")
    assert wer["details"]["sub"] == 1 and wer["details"]["ins"] == 1
    md = (out / "RESULTS.md").read_text()
    assert "| asr | test_a | WER (%) | 25.00 | 3 | lm_small | decode_asr_beam1 | english-norm |" in md
    ali = (out / "alignments.txt").read_text()
    assert "id: u1\nREF:  the cat sat on THE mat\nHYP:  the cat sat on A   mat\nEVAL:                S" in ali
    assert "WER 25.00% [ 2 / 8, 1 sub, 0 del, 1 ins ]" in ali
    per_utt = [json.loads(l) for l in (out / "per_utt.jsonl").read_text().splitlines()]
    assert per_utt[2]["uttid"] == "u3" and per_utt[2]["words"]["rate"] is None  # undefined, not Infinity

    # Bad input: a malformed hypothesis line is reported with file and line.
    bad = _write(tmp_path / "bad_hyp", "u1 a\n\nu2 b\n")
    assert score_asr_cli.main(["--ref", str(ref), "--hyp", str(bad), "--out_dir", str(tmp_path / "o2")]) == 2
    assert f"{bad}:2: empty line" in capsys.readouterr().err
    assert not (tmp_path / "o2" / "RESULTS.md").exists()


def test_entry_points_help():
    for mod in ("score_asr", "score_tts", "collect_results"):
        r = subprocess.run([PY, "-m", f"espnet2_speechlm.bin.{mod}", "--help"], capture_output=True, text=True)
        assert r.returncode == 0 and "usage" in r.stdout, r.stderr


def test_results_and_collect(tmp_path):
    a, b = tmp_path / "exp" / "a", tmp_path / "exp" / "b"
    write_results(a, [make_row("asr", "test", "CER", 2.5, 10, "m", "d"), make_row("asr", "test", "WER", 5.0, 10, "m", "d")])
    write_results(b, [make_row("tts", "test", "WER", float("inf"), 3, "m", "d"),
                      make_row("tts", "test", "SPK-SIM", 0.61234, 3, "m", "d")])
    rows = collect_results([tmp_path / "exp"])
    assert [(r["task"], r["metric"]) for r in rows] == [("asr", "WER"), ("asr", "CER"), ("tts", "WER"), ("tts", "SPK-SIM")]
    table = format_table(rows)
    assert "| tts | test | WER (%) | n/a | 3 | m | d |" in table and "| 0.6123 |" in table
    out = tmp_path / "exp" / "RESULTS.md"
    assert collect_cli.main([str(tmp_path / "exp"), "--out", str(out)]) == 0
    assert collect_cli.main([str(tmp_path / "exp"), "--out", str(out)]) == 0  # its own output is not re-collected
    assert len(json.loads((tmp_path / "exp" / "RESULTS.json").read_text())["rows"]) == 4
    assert out.read_text().count("\n| ") == 5  # header + 4 rows
    assert collect_cli.main([str(tmp_path / "nothing"), "--out", str(out)]) == 2


def test_collect_keeps_a_repeated_row_once(tmp_path):
    base = make_row("textlm", "test", "perplexity", 159.3, 51, "text_llm", "-")
    write_results(tmp_path / "m1", [base, make_row("textlm", "test", "perplexity", 170.0, 51, "m1", "-")])
    write_results(tmp_path / "m2", [base, make_row("textlm", "test", "perplexity", 165.0, 51, "m2", "-")])
    write_results(tmp_path / "m3", [make_row("textlm", "test", "perplexity", 158.0, 51, "text_llm", "-")])
    rows = collect_results([tmp_path])
    assert sorted((r["model"], r["value"]) for r in rows) == [
        ("m1", 170.0), ("m2", 165.0), ("text_llm", 158.0), ("text_llm", 159.3)]


def test_labels_from_decode_paths():
    from espnet2_speechlm.score.results import infer_labels

    assert infer_labels("exp/lm/decode_asr_beam1/test_clean/text") == {
        "test_set": "test_clean", "decode_config": "decode_asr_beam1", "model": "lm"}
    # This toolkit's recipe layout: the test set is part of the decode dir name.
    assert infer_labels("exp/speechlm/decode_tts_test/wav.scp") == {
        "test_set": "-", "decode_config": "decode_tts_test", "model": "speechlm"}
