"""The token-dump stage: job splitting through utils/run.pl, merging, resuming, bad audio, decoding."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from espnet2_speechlm.tokenizers.testing import have_espeak, make_espeak_data_dir
from espnet2_speechlm.tokenizers.token_io import TokenReader

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not have_espeak() or shutil.which("sox") is None, reason="needs espeak-ng and sox")
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))


def run(module, *args, check=True):
    r = subprocess.run([sys.executable, "-m", f"espnet2_speechlm.bin.{module}", *map(str, args)], capture_output=True, text=True, env=ENV, cwd=ROOT)
    if check:
        assert r.returncode == 0, r.stderr[-3000:]
    return r


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """10 espeak utterances; wav.scp mixes plain wav (22.05 kHz), flac and a sox pipe."""
    root = tmp_path_factory.mktemp("dump")
    d = make_espeak_data_dir(root / "data", n=10, seed=2)
    lines = (d / "wav.scp").read_text().splitlines()
    u1, p1 = lines[1].split()
    flac = Path(p1).with_suffix(".flac")
    w, sr = sf.read(p1)
    sf.write(flac, w, sr)
    lines[1] = f"{u1} {flac}"
    u2, p2 = lines[2].split()
    lines[2] = f"{u2} sox -R {p2} -r 8000 -t wav - |"  # -R: repeatable dither
    (d / "wav.scp").write_text("\n".join(lines) + "\n")
    tok = root / "tok"
    run("fit_speech_tokenizer", "--data_dir", d, "--out_dir", tok, "--semantic", "mfcc", "--semantic_k", 16,
        "--codebook_size", 16, "--epochs", 3, "--device", "cpu")
    return root, d, tok


def dump(d, tok, out, nj, *extra, check=True):
    return run("dump_tokens", "--data_dir", d, "--tokenizer_dir", tok, "--out_dir", out, "--nj", nj,
               "--cmd", ROOT / "utils" / "run.pl", "--batch_seconds", 6, *extra, check=check)


def read(out):
    return {u: v.copy() for u, v in TokenReader(out / "tokens.scp").items()}


def test_dump_nj2_equals_nj1_and_resumes(corpus):
    root, d, tok = corpus
    dump(d, tok, root / "d1", 1)
    dump(d, tok, root / "d2", 2)
    a, b = read(root / "d1"), read(root / "d2")
    utts = [l.split()[0] for l in (d / "wav.scp").read_text().splitlines()]
    assert list(a) == utts and list(b) == utts  # data-dir order after the merge
    for u in utts:
        assert a[u].dtype == np.int32 and a[u].shape[1] == 9
        assert np.array_equal(a[u], b[u]), u
    # frame counts: 50 per second of audio (within one frame)
    u2n = dict(l.split() for l in (root / "d2" / "utt2num_frames").read_text().splitlines())
    for line in (d / "wav.scp").read_text().splitlines()[:2]:
        u, p = line.split()
        assert abs(int(u2n[u]) - sf.info(p).duration * 50) <= 1
        assert int(u2n[u]) == a[u].shape[0]
    cfg = (root / "d2" / "tokenizer.json").read_text()
    assert '"semantic_vocab_size": 16' in cfg and '"codebook_size": 16' in cfg
    assert "Ended (code 0)" in (root / "d2" / "log" / "dump.2.log").read_text()

    # a second run does nothing
    r = dump(d, tok, root / "d2", 2)
    assert "already complete" in r.stderr

    # interrupted run: job 2 died half-way (partial ark, no scp, no marker), the merge never happened
    out = root / "d2"
    (out / ".done").unlink()
    (out / "tokens.scp").unlink()
    (out / "split2" / "2.done").unlink()
    (out / "split2" / "2.scp").unlink()
    ark = out / "data" / "tokens.2.ark"
    ark.write_bytes(ark.read_bytes()[:100])
    dump(d, tok, out, 2)
    assert "already complete" in (out / "log" / "dump.1.log").read_text()
    assert "already complete" not in (out / "log" / "dump.2.log").read_text()
    c = read(out)
    assert all(np.array_equal(a[u], c[u]) for u in utts)

    # decode tokens back to audio
    wav_dir = root / "wav_out"
    run("decode_tokens", "--tokens", out / "tokens.scp", "--tokenizer_dir", out, "--out_dir", wav_dir, "--utts", f"{utts[0]},{utts[2]}")
    for u in (utts[0], utts[2]):
        info = sf.info(wav_dir / f"{u}.wav")
        assert info.samplerate == 16000 and info.frames == a[u].shape[0] * 320
    assert len((wav_dir / "wav.scp").read_text().splitlines()) == 2


def test_bad_audio(corpus):
    root, d, tok = corpus
    bad = root / "bad_data"
    bad.mkdir()
    empty = root / "empty.wav"
    sf.write(empty, np.zeros(0, np.float32), 16000)
    short = root / "short.wav"
    sf.write(short, np.zeros(100, np.float32), 16000)
    junk = root / "junk.wav"
    junk.write_bytes(b"RIFF nonsense")
    good = (d / "wav.scp").read_text().splitlines()[:3]
    lines = good[:1] + [f"bad_empty {empty}", f"bad_missing {root / 'nope.flac'}"] + good[1:] + [f"bad_short {short}", f"bad_junk {junk}"]
    (bad / "wav.scp").write_text("\n".join(lines) + "\n")
    out = root / "dbad"
    r = dump(bad, tok, out, 2, check=False)
    assert r.returncode != 0
    for utt, f in [("bad_empty", empty), ("bad_missing", root / "nope.flac"), ("bad_short", short), ("bad_junk", junk)]:
        assert utt in r.stderr and str(f) in r.stderr, (utt, r.stderr[-2000:])
    assert "--skip_bad" in r.stderr
    assert not (out / "tokens.scp").exists() and not (out / ".done").exists()

    r = dump(bad, tok, out, 2, "--skip_bad")
    toks = read(out)
    assert sorted(toks) == sorted(l.split()[0] for l in good)
    skipped = (out / "skipped_utts").read_text().splitlines()
    assert sorted(l.split()[0] for l in skipped) == ["bad_empty", "bad_junk", "bad_missing", "bad_short"]


def test_run_pl_and_slurm_pl(tmp_path):
    runpl = ROOT / "utils" / "run.pl"
    r = subprocess.run([runpl, "JOB=1:3", str(tmp_path / "log" / "a.JOB.log"), "echo", "job", "JOB", "|", "tr", "a-z", "A-Z"], capture_output=True, text=True)
    assert r.returncode == 0
    for j in (1, 2, 3):
        text = (tmp_path / "log" / f"a.{j}.log").read_text()
        assert f"JOB {j}\n" in text and "Ended (code 0)" in text
    r = subprocess.run([runpl, "--max-jobs-run", "1", "JOB=1:4", str(tmp_path / "log" / "b.JOB.log"), "test", "JOB", "-ne", "3"], capture_output=True, text=True)
    assert r.returncode == 1 and "1 / 4 failed" in r.stderr and "b.3.log" in r.stderr

    # slurm.pl against a stand-in sbatch that runs each array task locally (no Slurm here)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "sbatch").write_text(
        "#!/usr/bin/env bash\nfor a in \"$@\"; do case $a in --array=*) r=${a#--array=}; r=${r%%%*};; esac; script=$a; done\n"
        "rc=0; for ((i=${r%-*}; i<=${r#*-}; i++)); do SLURM_ARRAY_TASK_ID=$i bash \"$script\" || rc=1; done; exit $rc\n")
    (bindir / "sbatch").chmod(0o755)
    env = dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}")
    slurm = ROOT / "utils" / "slurm.pl"
    r = subprocess.run([slurm, "--mem", "2G", "JOB=1:2", str(tmp_path / "log" / "s.JOB.log"), "echo", "task", "JOB"], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert "task 2" in (tmp_path / "log" / "s.2.log").read_text()
    r = subprocess.run([slurm, "JOB=1:2", str(tmp_path / "log" / "t.JOB.log"), "test", "JOB", "-ne", "2"], capture_output=True, text=True, env=env)
    assert r.returncode == 1 and "t.2.log" in r.stderr


def test_help():
    for m in ("dump_tokens", "decode_tokens", "fit_speech_tokenizer", "fit_text_tokenizer"):
        assert "usage" in run(m, "--help").stdout
