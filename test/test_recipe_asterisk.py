"""egs2/asterisk (real recorded speech) at tiny sizes: fine-tuning the mini_espeak model.

The mini_espeak --fast model (built once per session, conftest.mini_fast_recipe)
is fine-tuned on a few asterisk prompts with its own tokenizers and
vocabulary; RESULTS_fast.md must hold ASR and TTS WER of the starting model
("init") and of the fine-tuned one ("speechlm").  Also: the data preparation
(filtering, 16 kHz, held-out prompts), a bad transcript file stopped with the
file and the line, a missing starting model named.
"""

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from espnet2_speechlm.tokenizers.testing import have_espeak
from recipe_helpers import ROOT, copy_recipe, sh

RECIPE = ROOT / "egs2" / "asterisk" / "speechlm1"
TRANSCRIPTS = Path("/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz")
SOUNDS = Path("/usr/share/asterisk/sounds/en_US_f_Allison")
have_asterisk = TRANSCRIPTS.exists() and SOUNDS.is_dir()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not have_asterisk, reason="needs asterisk-core-sounds-en and -en-wav (Debian)"),
]
needs_mini = pytest.mark.skipif(not (have_espeak() and Path("/usr/share/games/fortunes").is_dir()),
                                reason="the starting model is the mini_espeak recipe's: needs espeak-ng and fortunes")


@pytest.fixture(scope="module")
def asterisk(mini_fast_recipe, tmp_path_factory):
    mini, _ = mini_fast_recipe
    d = copy_recipe(RECIPE, tmp_path_factory.mktemp("asterisk") / "speechlm1")
    r = sh(d, "./run.sh", "--fast", "true", "--pretrained", str(mini / "exp" / "packed"))
    return d, mini, r


def results(d: Path) -> dict:
    rows = {}
    assert not (d / "RESULTS.md").exists()  # --fast: RESULTS_fast.md, not the recipe's tracked table
    for line in (d / "RESULTS_fast.md").read_text().splitlines():
        if line.startswith("| ") and not line.startswith("| task"):
            c = [x.strip() for x in line.strip("|").split("|")]
            if len(c) >= 6 and c[0] != "---":
                rows[(c[0], c[2], c[5])] = float(c[3])
    return rows


@needs_mini
def test_before_and_after_wer_in_results(asterisk):
    d, mini, r = asterisk
    assert "Successfully finished" in r.stderr
    got = results(d)
    for task in ("asr", "tts"):
        for model in ("init", "speechlm"):
            assert (task, "WER (%)", model) in got, (task, model, (d / "RESULTS_fast.md").read_text())
    assert ("tts_real_audio", "WER (%)", "real_audio") in got
    # the real test audio is intelligible to the scoring ASR model (a broken resampling would not be)
    assert got[("tts_real_audio", "WER (%)", "real_audio")] < 50
    # nothing was fitted: the starting model's tokenizers and vocabulary
    assert not (d / "exp" / "speech_tokenizer").exists() and not (d / "exp" / "text_tokenizer").exists()
    assert json.loads((d / "dump/vocab.json").read_text()) == json.loads((mini / "exp/packed/vocab.json").read_text())
    assert (d / "exp/packed/model.safetensors").exists()


@needs_mini
def test_finetuning_starts_from_the_given_model(asterisk):
    from safetensors.numpy import load_file

    from espnet2_speechlm.train.checkpoint import find_model_dir

    d, mini, _ = asterisk
    init = load_file(str(mini / "exp/packed/model.safetensors"))
    tuned = load_file(str(find_model_dir(d / "exp/speechlm/checkpoints") / "model.safetensors"))
    assert init.keys() == tuned.keys()
    # 6 small steps move the weights a little; a fresh initialisation would differ by ~100 %
    num = sum(float(np.sum((tuned[k].astype(np.float64) - init[k]) ** 2)) for k in init)
    den = sum(float(np.sum(init[k].astype(np.float64) ** 2)) for k in init)
    assert 0 < (num / den) ** 0.5 < 0.2
    assert any(not np.array_equal(init[k], tuned[k]) for k in init)


@needs_mini
def test_data_is_filtered_resampled_and_held_out(asterisk):
    d, _, _ = asterisk
    sets = {}
    for s in ("train", "dev", "test"):
        lines = (d / "data" / s / "text").read_text().splitlines()
        sets[s] = {ln.split(" ", 1)[0] for ln in lines}
        for ln in lines:
            assert re.fullmatch(r"[A-Za-z ,.'?!]+", ln.split(" ", 1)[1]), ln
    assert len(sets["test"]) == 6 and len(sets["dev"]) == 4 and len(sets["train"]) == 30
    assert not (sets["test"] & sets["train"]) and not (sets["dev"] & sets["train"])
    wav = (d / "data/test/wav.scp").read_text().split("\n", 1)[0].split(" ", 1)[1]
    assert sf.info(wav).samplerate == 16000
    dropped = (d / "data/local/dropped_prompts.txt").read_text()
    assert re.search(r"silence/1\tline \d+\tno speech in the transcript", dropped)
    assert "number with an ambiguous reading" in dropped


@needs_mini
def test_starting_model_that_does_not_fit_the_tokenizer_is_refused(asterisk, tmp_path):
    import shutil

    d, mini, _ = asterisk
    tok = tmp_path / "speech_tokenizer"
    shutil.copytree(mini / "exp/packed/speech_tokenizer", tok)
    cfg = json.loads((tok / "tokenizer.json").read_text())
    cfg["semantic_vocab_size"] += 1
    (tok / "tokenizer.json").write_text(json.dumps(cfg))
    r = sh(d, "./run.sh", "--fast", "true", "--pretrained", str(mini / "exp/packed"), "--speech_tokenizer", str(tok),
           "--stage", "5", "--stop_stage", "5", "--dumpdir", str(tmp_path / "dump"), check=False)
    assert r.returncode != 0 and "does not fit" in r.stderr, r.stderr[-2000:]
    n = cfg["semantic_vocab_size"]
    assert f"{tok}/tokenizer.json: {n} semantic units" in r.stderr and f"vocab.json was built for {n - 1} semantic units" in r.stderr
    assert not (tmp_path / "dump" / "vocab.json").exists()


def test_normalisation():
    import importlib.util

    spec = importlib.util.spec_from_file_location("prep", RECIPE / "local" / "prepare_asterisk.py")
    prep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prep)
    assert prep.normalise("Press 1 to mute, or # to exit.") == ("Press one to mute, or pound to exit.", "")
    assert prep.normalise("press * to toggle pause")[0] == "press star to toggle pause"
    assert prep.normalise("Call-Forward on Busy.")[0] == "Call Forward on Busy."
    assert prep.normalise("IAX (note: does not say \"2\")")[0] == "IAX"
    assert prep.normalise("dial 115")[0] == "dial one hundred fifteen"
    assert prep.normalise("[sound of monkeys screaming]") == ("", "no speech in the transcript")
    assert prep.normalise("extension 1234")[1] == "number with an ambiguous reading"
    assert prep.normalise("caf\u00e9 ok")[1].startswith("characters")


@pytest.mark.parametrize("breakage", ["no_colon", "duplicate"])
def test_bad_transcript_file_names_file_and_line(tmp_path, breakage):
    d = copy_recipe(RECIPE, tmp_path / "r")
    lines = ["; a header", "", "activated: Activated.", "added: Added."]
    if breakage == "no_colon":
        lines.append("agent-pass Please enter your password")
    else:
        lines.append("activated: Activated again.")
    bad = tmp_path / "bad.txt"
    bad.write_text("\n".join(lines) + "\n")
    r = sh(d, "local/data.sh", "--transcripts", str(bad), "--num_test", "1", "--num_dev", "0", check=False)
    assert r.returncode != 0
    assert f"{bad}: line 5" in r.stderr, r.stderr
    assert "line 3" in r.stderr if breakage == "duplicate" else "expected 'name: text'" in r.stderr
    assert not (d / "data" / "train").exists()


def test_missing_starting_model_is_named(tmp_path):
    d = copy_recipe(RECIPE, tmp_path / "r")
    r = sh(d, "./run.sh", "--fast", "true", "--pretrained", str(tmp_path / "nope"), check=False)
    assert r.returncode != 0 and f"{tmp_path / 'nope'} not found" in r.stderr, r.stderr


def test_recipe_links_are_relative_and_resolve():
    for name in ("speechlm.sh", "path.sh", "utils"):
        p = RECIPE / name
        assert p.is_symlink() and not os.path.isabs(os.readlink(p)) and p.exists(), name
