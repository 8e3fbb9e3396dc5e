"""Bad input met by a new user, at every stage and at inference: refused with the file (and line) named.

* a speech tokenizer, or a token dump, that does not fit the model: refused by
  pack, ``SpeechLM.from_pretrained`` and the decode stage (stage 5: the asterisk
  recipe test);
* a ``text`` line that is not UTF-8 (stage 2), a duplicate id met by the token
  dump (stage 4);
* stereo audio at scoring (stage 10) is mixed down as the data stages do;
* ``show_example`` on the toolkit's own dumps, and piped into ``head``;
* text with characters the BPE never saw (stage 6): the message says how to fit
  a BPE with byte fallback, and one with it tokenises them;
* ``pack --checkpoint EXP_DIR``;
* segments that end before they start or lie past their recording (stage 2);
* a text LLM directory whose tokenizer outgrows its embedding (stage 5), integer
  PCM arrays at the API, which side of a vocabulary mismatch is which, token
  scps read from another directory.
"""

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from espnet2_speechlm.tokenizers.testing import have_espeak, make_espeak_data_dir

PY = sys.executable
REPO = Path(__file__).resolve().parents[1]
needs_espeak = pytest.mark.skipif(not have_espeak(), reason="needs espeak-ng (Debian)")


def run(*args, cwd=None, check=False):
    r = subprocess.run([PY, "-m", *map(str, args)], capture_output=True, text=True, cwd=cwd)
    if check:
        assert r.returncode == 0, r.stderr[-3000:]
    return r


def sine_data_dir(d: Path, n: int = 3, seconds: float = 2.0) -> Path:
    """A Kaldi data dir of n tones (16 kHz mono wav), one transcript each."""
    (d / "wav").mkdir(parents=True)
    scp, text = [], []
    for i in range(n):
        t = np.arange(int(seconds * 16000)) / 16000
        f = d / "wav" / f"rec{i}.wav"
        sf.write(f, (0.3 * np.sin(2 * np.pi * (200 + 50 * i) * t)).astype(np.float32), 16000)
        scp.append(f"rec{i} {f}")
        text.append(f"rec{i} tone number {i}")
    (d / "wav.scp").write_text("\n".join(scp) + "\n")
    (d / "text").write_text("\n".join(text) + "\n")
    return d


TOK_ARGS = ["--codebook_size", "16", "--epochs", "3", "--griffin_lim_iters", "4"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Real tokenizers fitted on espeak speech: the model's (32 units), one of another size (16 units)
    and one of the model's sizes fitted with another seed; a BPE; a model for the 32-unit tokenizer."""
    if not have_espeak():
        pytest.skip("needs espeak-ng (Debian)")
    from espnet2_speechlm.model.build import random_body
    from espnet2_speechlm.vocab import JointVocab

    root = tmp_path_factory.mktemp("checks")
    data = make_espeak_data_dir(root / "data", n=6, seed=3)
    for name, k, seed in (("stok32", 32, 0), ("stok16", 16, 0), ("stok32b", 32, 1)):
        run("espnet2_speechlm.bin.fit_speech_tokenizer", "--data_dir", data, "--out_dir", root / name,
            "--semantic_k", k, "--seed", seed, *TOK_ARGS, check=True)
    run("espnet2_speechlm.bin.fit_text_tokenizer", "--text", data / "text", "--out_prefix", root / "bpe",
        "--vocab_size", "40", check=True)
    run("espnet2_speechlm.bin.make_vocab", "--speech_tokenizer", root / "stok32", "--text_tokenizer",
        root / "bpe.model", "--out", root / "vocab.json", check=True)
    body = dict(model_type="llama", hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                intermediate_size=64, max_position_embeddings=1024)
    random_body(body, JointVocab.load(root / "vocab.json"), seed=0).save_pretrained(root / "model")
    return root, data


@pytest.fixture(scope="module")
def tones(tmp_path_factory):
    """A data dir of tones and a tiny speech tokenizer fitted on it (no espeak needed)."""
    root = tmp_path_factory.mktemp("tones")
    d = sine_data_dir(root / "recipe" / "data", n=2)
    run("espnet2_speechlm.bin.fit_speech_tokenizer", "--data_dir", d, "--out_dir", root / "stok", "--semantic_k", "4",
        "--codebook_size", "4", "--epochs", "2", "--griffin_lim_iters", "2", check=True)
    return root, d, root / "stok"


def dump(root: Path, data: Path, tok: str) -> Path:
    out = root / f"dump_{tok}"
    if not (out / "tokens.scp").exists():
        run("espnet2_speechlm.bin.dump_tokens", "--data_dir", data, "--tokenizer_dir", root / tok, "--out_dir", out,
            "--nj", "1", "--no_progress", check=True)
    return out


# ------------------------------------------------------------------ item 1
@needs_espeak
def test_speech_tokenizer_or_dump_that_does_not_fit_the_model_is_refused(corpus):
    from espnet2_speechlm.infer.api import SpeechLM, pack
    from espnet2_speechlm.tokenizers.speech import SpeechTokenizer

    root, data = corpus
    model, bpe = root / "model", root / "bpe.model"
    why = (f"{root}/stok16/tokenizer.json: 16 semantic units, 8 x 16 acoustic codes, but {model}/vocab.json "
           "was built for 32 semantic units, 8 x 16 acoustic codes")
    # pack, from Python and from the command line: nothing written
    with pytest.raises(ValueError) as e:
        pack(model, root / "pack16", bpe, root / "stok16")
    assert why in str(e.value) and "does not fit the model" in str(e.value)
    r = run("espnet2_speechlm.bin.pack", "--checkpoint", model, "--out", root / "pack16", "--text_tokenizer", bpe,
            "--speech_tokenizer", root / "stok16")
    assert r.returncode != 0 and why in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert not (root / "pack16").exists() and not (root / "pack16.tmp").exists()
    # a packed directory whose speech tokenizer was swapped for another: refused at load
    good = pack(model, root / "pack", bpe, root / "stok32")
    bad = root / "pack_swapped"
    shutil.copytree(good, bad)
    shutil.rmtree(bad / "speech_tokenizer")
    SpeechTokenizer.load(root / "stok16").save(bad / "speech_tokenizer")
    with pytest.raises(ValueError) as e:
        SpeechLM.from_pretrained(bad, device="cpu")
    assert f"{bad}/speech_tokenizer/tokenizer.json: 16 semantic units" in str(e.value) and f"{bad}/vocab.json" in str(e.value)
    # decoding a dump made by another tokenizer: another size, or the same sizes fitted again
    for tok, want in (("stok16", "16 semantic units"), ("stok32b", "other fitted values")):
        d = dump(root, data, tok)
        out = root / f"decode_{tok}"
        r = run("espnet2_speechlm.bin.decode", "--model_dir", good, "--task", "asr", "--token_scp", d / "tokens.scp",
                "--out_dir", out)
        assert r.returncode != 0 and f"{d}/tokenizer.json" in r.stderr and want in r.stderr, r.stderr[-2000:]
        assert not (out / "text").exists()
    # the model's own tokenizer (a packed copy of it) is accepted
    d = dump(root, data, "stok32")
    r = run("espnet2_speechlm.bin.decode", "--model_dir", good, "--task", "asr", "--token_scp", d / "tokens.scp",
            "--out_dir", root / "decode_ok", "--max_utts", "1", "--override", "generation.max_len=3")
    assert r.returncode == 0, r.stderr[-2000:]
    assert len((root / "decode_ok" / "text").read_text().splitlines()) == 1


# ------------------------------------------------------------------ item 2
def test_text_that_is_not_utf8_and_a_duplicate_id_in_the_dump_name_file_and_line(tmp_path, tones):
    d = sine_data_dir(tmp_path / "data")
    lines = (d / "text").read_bytes().splitlines()
    lines[1] = b"rec1 caf\xe9 au lait"  # latin-1
    (d / "text").write_bytes(b"\n".join(lines) + b"\n")
    r = run("espnet2_speechlm.bin.format_data", "--in_dir", d, "--out_dir", tmp_path / "out")
    assert r.returncode != 0 and f"{d}/text: line 2: not valid UTF-8 (byte 0xe9 at column 9)" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "out").exists()

    d2 = sine_data_dir(tmp_path / "data2")
    scp = (d2 / "wav.scp").read_text().splitlines()
    scp.append(scp[0].split()[0] + " " + scp[1].split()[1])
    (d2 / "wav.scp").write_text("\n".join(scp) + "\n")
    r = run("espnet2_speechlm.bin.dump_tokens", "--data_dir", d2, "--tokenizer_dir", tones[2],
            "--out_dir", tmp_path / "dump", "--nj", "1")
    assert r.returncode != 0 and f"{d2}/wav.scp: line 4: duplicate id 'rec0' (first on line 1)" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "dump" / "tokens.scp").exists()


# ------------------------------------------------------------------ item 4
def test_stereo_audio_is_mixed_down_for_scoring(tmp_path):
    from espnet2_speechlm.score.audio import DataDirAudio

    t = np.arange(16000) / 16000
    stereo = np.stack([0.5 * np.sin(2 * np.pi * 300 * t), 0.1 * np.sin(2 * np.pi * 500 * t)], 1).astype(np.float32)
    sf.write(tmp_path / "st.wav", stereo, 16000)
    (tmp_path / "wav.scp").write_text(f"u1 {tmp_path / 'st.wav'}\n")
    got = DataDirAudio(tmp_path / "wav.scp").load("u1")
    np.testing.assert_allclose(got, stereo.mean(1), atol=1e-4)


# ------------------------------------------------------------------ item 5
@needs_espeak
def test_show_example_reads_the_dump_and_survives_a_closed_pipe(corpus):
    from espnet2_speechlm.bin import show_example

    root, data = corpus
    d = dump(root, data, "stok32")
    utt = (data / "text").read_text().split()[0]
    r = run("espnet2_speechlm.bin.show_example", "--vocab", root / "vocab.json", "--task", "asr", "--utt", utt,
            "--speech_scp", d / "tokens.scp", "--text", data / "text", "--text_tokenizer", root / "bpe.model",
            "--max_frames", "100000")
    assert r.returncode == 0, r.stderr[-2000:]
    import kaldiio

    n = len(kaldiio.load_scp(str(d / "tokens.scp"))[utt]) // 9  # stored flattened, 9 ids a frame
    assert "<asr_task>" in r.stdout and r.stdout.count("<ssl_") == n
    assert "'▁" in r.stdout  # the transcript's pieces, by name
    # the usage names files the stages write
    assert "dump/tokens/train/tokens.scp" in show_example.__doc__ and "dump/raw/train/text" in show_example.__doc__
    # a long listing read by "head": the reader goes away, the command stays quiet
    cmd = (f"set -o pipefail; {PY} -m espnet2_speechlm.bin.show_example --vocab {root / 'vocab.json'} --task tts "
           "--frames 5000 --max_frames 5000 | head -n 3")
    r = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True)
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 3 and "BrokenPipe" not in r.stderr, r.stderr


# ------------------------------------------------------------------ item 6
def test_unseen_characters_say_how_to_fix_and_byte_fallback_takes_them(tmp_path):
    from espnet2_speechlm.data.splice import SpliceError, SpliceOptions, load_text_tokenizer, splice
    from espnet2_speechlm.vocab import JointVocab

    train = tmp_path / "train_text"
    train.write_text("".join(f"u{i} the cat sat on the mat number {i}\n" for i in range(30)))
    dev = tmp_path / "dev_text"
    dev.write_text("d1 the cat sat\nd2 the ïcat mat\n")
    for fallback in (False, True):
        prefix = tmp_path / f"bpe_{fallback}"
        run("espnet2_speechlm.bin.fit_text_tokenizer", "--text", train, "--out_prefix", prefix, "--vocab_size", "300",
            *(["--byte_fallback"] if fallback else []), check=True)
        tok = load_text_tokenizer(f"{prefix}.model")
        vocab = JointVocab.build({"semantic": 8, "acoustic": 8 * 8, "text": tok.vocab_size}).save(tmp_path / f"v{fallback}.json")
        opts = SpliceOptions("textlm")
        if not fallback:
            with pytest.raises(SpliceError) as e:
                splice(tmp_path / "out_no", vocab, opts, text=dev, tokenizer=tok, log=lambda m: None)
            msg = str(e.value)
            assert f"{dev}:2: utterance 'd2'" in msg and "['ï']" in msg and "--bpe_byte_fallback true" in msg, msg
            assert not (tmp_path / "out_no").exists()
        else:
            meta = splice(tmp_path / "out_yes", vocab, opts, text=dev, tokenizer=tok, log=lambda m: None)
            assert meta["num_examples"] == 2
            assert tok.decode(tok.encode("the ïcat mat")) == "the ïcat mat"


# ------------------------------------------------------------------ item 7
def test_pack_takes_an_experiment_directory(tmp_path):
    from train_helpers import make_data_dirs, run_train, train_yaml

    dirs = make_data_dirs(tmp_path, tasks=("asr",), n_utt=8)
    exp = tmp_path / "exp"
    over = {"schedule.total_steps": 4, "checkpoint.every": 2, "checkpoint.keep": 3, "checkpoint.average_last": 2}
    r = run_train(train_yaml(tmp_path / "t.yaml", exp, dirs, **over))
    assert r.returncode == 0, r.stderr[-3000:]
    r = run("espnet2_speechlm.bin.pack", "--checkpoint", exp, "--out", tmp_path / "packed")
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"[pack] {exp}/model_avg + tokenizers" in r.stderr  # averaged up to the latest checkpoint
    assert (tmp_path / "packed" / "averaged_from.json").exists()
    # training went on after the average: the newer checkpoint, not the stale average
    r = run_train(train_yaml(tmp_path / "t2.yaml", exp, dirs, **dict(over, **{"schedule.total_steps": 6, "checkpoint.average_last": 0})))
    assert r.returncode == 0, r.stderr[-3000:]
    r = run("espnet2_speechlm.bin.pack", "--checkpoint", exp, "--out", tmp_path / "packed")
    assert r.returncode == 0 and f"[pack] {exp}/checkpoints/step_00000006/model + tokenizers" in r.stderr, r.stderr[-2000:]


# ------------------------------------------------------------------ item 9
@pytest.mark.parametrize("case", ["past_the_end", "ends_before_start", "overshoot_is_cut"])
def test_segments_are_checked_against_their_recording(tmp_path, case):
    d = sine_data_dir(tmp_path / "data", n=2, seconds=2.0)
    segs = {"past_the_end": "s2 rec0 1.5 3.0", "ends_before_start": "s2 rec1 1.0 0.5", "overshoot_is_cut": "s2 rec0 1.0 2.3"}
    (d / "segments").write_text(f"s1 rec0 0.0 1.0\n{segs[case]}\ns3 rec1 0.5 -1\n")
    (d / "text").write_text("s1 one\ns2 two\ns3 three\n")
    out = tmp_path / "out"
    r = run("espnet2_speechlm.bin.format_data", "--in_dir", d, "--out_dir", out, "--min_seconds", "0.1")
    if case == "overshoot_is_cut":
        assert r.returncode == 0, r.stderr
        durs = dict(line.split() for line in (out / "utt2dur").read_text().splitlines())
        assert durs == {"s1": "1.000", "s2": "1.000", "s3": "1.500"}
        return
    assert r.returncode != 0 and "Traceback" not in r.stderr and not out.exists()
    if case == "past_the_end":
        want = f"{d}/segments: line 2: segment 's2' [1.5, 3.0] s lies past the end of recording 'rec0' (2.000 s, {d}/wav.scp: line 1)"
    else:
        want = f"{d}/segments: line 2: segment 's2' ends at 0.5 s, not after its start (1.0 s)"
    assert want in r.stderr, r.stderr


# ------------------------------------------------------------------ item 10
def test_text_llm_whose_tokenizer_has_more_ids_than_its_embedding_is_refused(tmp_path, tones):
    import json

    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(["the cat sat on the mat", "a dog ran far away"] * 10,
                            trainers.BpeTrainer(vocab_size=60, special_tokens=["<unk>"]))
    llm = tmp_path / "llm"
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>").save_pretrained(llm)
    n = len(PreTrainedTokenizerFast.from_pretrained(llm))
    (llm / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": n - 5}))
    r = run("espnet2_speechlm.bin.make_vocab", "--speech_tokenizer", tones[2], "--text_tokenizer", llm, "--out", tmp_path / "vocab.json")
    assert r.returncode != 0 and f"{llm}: the tokenizer has {n} ids, but {llm}/config.json has vocab_size {n - 5}" in r.stderr, r.stderr
    assert not (tmp_path / "vocab.json").exists()


def test_integer_pcm_arrays_are_scaled():
    from espnet2_speechlm.infer.api import load_audio

    np.testing.assert_allclose(load_audio(np.array([16384, -32768, 0], dtype=np.int16)), [0.5, -1.0, 0.0])
    np.testing.assert_allclose(load_audio(np.array([192, 64], dtype=np.uint8)), [0.5, -0.5])
    np.testing.assert_allclose(load_audio(np.array([0.25, -0.5])), [0.25, -0.5])


def test_vocabulary_mismatch_says_which_side_is_the_data_and_which_the_checkpoint(tmp_path):
    from train_helpers import TINY_BODY

    from espnet2_speechlm.model.build import random_body
    from espnet2_speechlm.train.checkpoint import check_vocab
    from espnet2_speechlm.vocab import JointVocab, VocabError

    data = JointVocab.build({"semantic": 50, "acoustic": 8 * 16, "text": 100}, num_codebooks=8)
    ck = JointVocab.build({"semantic": 50, "acoustic": 8 * 16, "text": 120}, num_codebooks=8)
    random_body(dict(TINY_BODY), ck).save_pretrained(tmp_path / "ck")
    with pytest.raises(VocabError) as e:
        check_vocab(tmp_path / "ck", data)
    assert "text: (434, 100) vs (434, 120) ((start, size) in the data vs in the checkpoint)" in str(e.value)


def test_token_scp_is_read_from_any_directory(tones):
    """A dump made in one directory (relative --out_dir) is read from another; so is one whose scp
    holds paths relative to where it ran, as dumps used to; a missing archive names the scp and line."""
    import re

    from espnet2_speechlm.tokenizers.token_io import TokenReader

    tmp_path, _, stok = tones
    run("espnet2_speechlm.bin.dump_tokens", "--data_dir", "data", "--tokenizer_dir", stok, "--out_dir", "dump",
        "--nj", "1", "--no_progress", cwd=tmp_path / "recipe", check=True)
    scp = tmp_path / "recipe" / "dump" / "tokens.scp"
    assert Path.cwd() != tmp_path / "recipe"
    frames = dict(TokenReader(scp))
    assert set(frames) == {"rec0", "rec1"} and all(f.shape[1] == 9 and len(f) > 90 for f in frames.values())
    # an scp with relative archive paths, as written from the recipe directory
    rel = [f"{u} {v.split(str(tmp_path / 'recipe') + '/', 1)[1]}" for u, v in (l.split() for l in scp.read_text().splitlines())]
    assert all(" dump/data/tokens.1.ark:" in x for x in rel)
    scp.write_text("\n".join(rel) + "\n")
    again = TokenReader(scp)
    assert all(np.array_equal(again[u], frames[u]) for u in frames)
    scp.write_text(rel[0] + "\n" + rel[1].replace("tokens.1.ark", "tokens.9.ark") + "\n")
    with pytest.raises(FileNotFoundError, match=re.escape(f"{scp}: line 2: token archive dump/data/tokens.9.ark not found")):
        TokenReader(scp)
