"""The splicing stage: data directories whose lengths match the built sequences, clear errors."""

import json
import subprocess

import numpy as np
import pytest
from train_helpers import PY, REPO, make_dump, make_vocab

from espnet2_speechlm.data.datadir import DataDir, SpliceError
from espnet2_speechlm.data.splice import IdsTokenizer, SpliceOptions, splice
from espnet2_speechlm.tasks import parse_sequence
from espnet2_speechlm.tokenizers.token_io import TokenReader
from espnet2_speechlm.vocab import SOS_EOS


@pytest.fixture(scope="module")
def dump(tmp_path_factory):
    root = tmp_path_factory.mktemp("splice")
    return root, make_vocab(root), make_dump(root / "dump", n_utt=18, n_spk=3)


def _splice(root, vocab, dump, task, name=None, **kw):
    out = root / (name or task)
    meta = splice(out, vocab, SpliceOptions(task, **kw), dump["tokens"], dump["utt2num_frames"], dump["text"], IdsTokenizer(), dump["utt2spk"], log=lambda m: None)
    return out, meta


@pytest.mark.parametrize("task", ["asr", "tts", "textlm", "audiolm"])
def test_lengths_match_built_sequences_and_tokens_are_referenced(dump, task):
    root, vocab, d = dump
    out, meta = _splice(root, vocab, d, task)
    dd = DataDir(out)
    assert meta["num_examples"] == len(dd) == 18
    tokens = TokenReader(d["tokens"], num_streams=9)
    texts = {line.split()[0]: [int(x) for x in line.split()[1:]] for line in d["text"].read_text().splitlines()}
    for i, ex in enumerate(dd.examples):
        seq = dd.build(i)  # raises if the stored length disagrees with the sequence
        assert len(seq) == ex["len"] == dd.lengths[i]
        t, segs = parse_sequence(dd.vocab, seq.frames)
        assert t == task
        u = ex["utts"][0]
        for s in segs:
            if s.modality == "text":
                assert list(s.tokens) == texts[u]
            else:
                np.testing.assert_array_equal(s.tokens, tokens[u])
    # speech is referenced by utterance id, never copied
    assert "tokens" not in (out / "examples.jsonl").read_text()
    assert meta["length_stats"]["max"] == int(dd.lengths.max())
    assert (out / "lengths.txt").read_text().count("\n") == 18


def test_long_form_splicing_respects_budget_and_speaker(dump):
    root, vocab, d = dump
    budget = 150
    out, meta = _splice(root, vocab, d, "asr", name="asr_long", splice_budget=budget)
    dd = DataDir(out)
    assert len(dd) < 18 and any(len(ex["utts"]) > 1 for ex in dd.examples)
    spk = dict(line.split() for line in d["utt2spk"].read_text().splitlines())
    used = []
    for i, ex in enumerate(dd.examples):
        assert len({spk[u] for u in ex["utts"]}) == 1
        if len(ex["utts"]) > 1:
            assert ex["len"] <= budget
        seq = dd.build(i)
        assert (seq.frames[:, 0] == SOS_EOS).sum() == 1 + len(ex["utts"])  # one opening, one per target
        used += ex["utts"]
    assert sorted(used) == sorted(spk)


def test_speaker_prompts_are_windows_of_another_utterance_of_the_speaker(dump):
    root, vocab, d = dump
    out, _ = _splice(root, vocab, d, "tts", name="tts_spk", speaker_prompt_len=10)
    dd = DataDir(out)
    spk = dict(line.split() for line in d["utt2spk"].read_text().splitlines())
    tokens = TokenReader(d["tokens"], num_streams=9)
    for i, ex in enumerate(dd.examples):
        (o, s, L), u = ex["spk"][0], ex["utts"][0]
        assert o != u and spk[o] == spk[u] and L == min(10, len(tokens[o]))
        seq = dd.build(i)
        assert seq.frames[1, 0] == dd.vocab.special("<tts_task>")
        _, segs = parse_sequence(dd.vocab, seq.frames)
        np.testing.assert_array_equal(segs[1].tokens, tokens[o][s : s + L])


def test_speaker_prompts_padded_to_the_released_length(dump):
    root, vocab, d = dump
    plain, _ = _splice(root, vocab, d, "tts", name="tts_spk_plain", speaker_prompt_len=40)
    out, meta = _splice(root, vocab, d, "tts", name="tts_spk_pad", speaker_prompt_len=40, speaker_prompt_pad=True)
    assert meta["options"]["speaker_prompt_pad"] is True
    a, b = DataDir(plain), DataDir(out)
    padded = 0
    for i, ex in enumerate(b.examples):
        L = ex["spk"][0][2]
        assert ex["len"] == a.examples[i]["len"] + (40 - L) == len(b.build(i))  # build checks the stored length too
        padded += L < 40
    assert padded  # some prompts were shorter than 40 frames
    with pytest.raises(SpliceError, match="speaker_prompt_pad needs speaker_prompt_len"):
        _splice(root, vocab, d, "tts", name="bad", speaker_prompt_pad=True)


def test_bad_inputs_name_the_file_and_line(dump, tmp_path):
    root, vocab, d = dump
    bad = tmp_path / "text"
    lines = d["text"].read_text().splitlines()
    lines[4] = lines[4].split()[0] + " 5 999"  # 999 is outside the text block of 100 ids
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(SpliceError, match=rf"{bad}:5: token ids \[999\]"):
        splice(tmp_path / "o", vocab, SpliceOptions("asr"), d["tokens"], d["utt2num_frames"], bad, IdsTokenizer())
    bad.write_text("\n".join(lines[:3]) + "\n")
    with pytest.raises(SpliceError, match="utterance ids do not match"):
        splice(tmp_path / "o", vocab, SpliceOptions("asr"), d["tokens"], d["utt2num_frames"], bad, IdsTokenizer())
    bad.write_text(lines[0] + "\n" + lines[0] + "\n")
    with pytest.raises(SpliceError, match=rf"{bad}:2: duplicate utterance id"):
        splice(tmp_path / "o", vocab, SpliceOptions("textlm"), text=bad, tokenizer=IdsTokenizer())
    bad.write_text("")
    with pytest.raises(SpliceError, match="no utterances"):
        splice(tmp_path / "o", vocab, SpliceOptions("textlm"), text=bad, tokenizer=IdsTokenizer())
    assert not (tmp_path / "o").exists()  # nothing half written
    with pytest.raises(SpliceError, match="not a data directory"):
        DataDir(tmp_path / "nowhere")


def test_cli_and_hf_tokenizer_file(dump, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    root, vocab, d = dump
    words = {f"w{i}": i for i in range(100)}
    tok = Tokenizer(models.WordLevel(words, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "tokenizer.json"))
    text = tmp_path / "text"
    text.write_text("".join(f"{line.split()[0]} " + " ".join(f"w{x}" for x in line.split()[1:]) + "\n" for line in d["text"].read_text().splitlines()))
    out = tmp_path / "asr"
    r = subprocess.run(
        [PY, "-m", "espnet2_speechlm.bin.splice", "--task", "asr", "--vocab", str(vocab), "--out", str(out), "--tokens", str(d["tokens"]),
         "--utt2num_frames", str(d["utt2num_frames"]), "--text", str(text), "--text_tokenizer", str(tmp_path / "tokenizer.json")],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "wrote 18 examples" in r.stderr
    ref = [json.loads(x)["text"] for x in (root / "asr" / "examples.jsonl").read_text().splitlines()] if (root / "asr").exists() else None
    got = [json.loads(x)["text"] for x in (out / "examples.jsonl").read_text().splitlines()]
    want = [[[int(x) for x in line.split()[1:]]] for line in sorted(d["text"].read_text().splitlines())]
    assert got == want and (ref is None or ref == got)
    r = subprocess.run([PY, "-m", "espnet2_speechlm.bin.splice", "--task", "asr", "--vocab", str(vocab), "--out", str(out)], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 2 and "needs speech tokens" in r.stderr


def test_cli_reads_dump_and_data_dirs_and_leaves_out_skipped_utterances(dump, tmp_path):
    import shutil

    root, vocab, d = dump
    dd = tmp_path / "dump"
    dd.mkdir()
    src = d["tokens"].parent
    for f in ("tokens.scp", "utt2num_frames", "text", "utt2spk"):
        lines = (src / f).read_text().splitlines()
        if f in ("tokens.scp", "utt2num_frames"):
            lines = [x for x in lines if not x.startswith("spk1-utt004 ")]  # the dump skipped it
        (dd / f).write_text("\n".join(lines) + "\n")
    shutil.copy(src / "tokens.ark", dd / "tokens.ark")
    (dd / "tokens.scp").write_text((dd / "tokens.scp").read_text().replace(str(src / "tokens.ark"), str(dd / "tokens.ark")))
    (dd / "skipped_utts").write_text("spk1-utt004 /x/y.wav empty audio\n")
    out = tmp_path / "tts"
    r = subprocess.run(
        [PY, "-m", "espnet2_speechlm.bin.splice", "--task", "tts", "--vocab", str(vocab), "--out", str(out), "--dump_dir", str(dd),
         "--data_dir", str(dd), "--text_tokenizer", "ids", "--speaker_prompt_len", "5"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 0, r.stderr
    data = DataDir(out)
    assert len(data) == 17 and "spk1-utt004" not in {u for ex in data.examples for u in ex["utts"]}
    assert all(ex.get("spk") for ex in data.examples)
    data.build(0)
    (dd / "skipped_utts").unlink()
    r = subprocess.run(
        [PY, "-m", "espnet2_speechlm.bin.splice", "--task", "asr", "--vocab", str(vocab), "--out", str(out), "--dump_dir", str(dd),
         "--data_dir", str(dd), "--text_tokenizer", "ids"], cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 2 and "spk1-utt004" in r.stderr and "utterance ids do not match" in r.stderr
