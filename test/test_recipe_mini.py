"""The mini_espeak recipe end to end at tiny sizes (--fast true), as a user runs it.

Also: finished stages are skipped when run again, a later stage can be
started alone, setup.sh makes a recipe that runs, and bad data directories
stop the pipeline with a message naming the file and the line.
"""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from espnet2_speechlm.tokenizers.testing import have_espeak

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "egs2" / "mini_espeak" / "speechlm1"
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not (have_espeak() and Path("/usr/share/games/fortunes").is_dir()),
                                                   reason="needs espeak-ng and fortunes (Debian)")]


def copy_recipe(dst: Path) -> Path:
    """A copy of the recipe outside the repository, linked back to TEMPLATE and utils."""
    dst.mkdir(parents=True)
    for name in ("run.sh", "cmd.sh", "conf", "local"):
        src = RECIPE / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dst / name)
    os.symlink(ROOT / "egs2/TEMPLATE/speechlm1/speechlm.sh", dst / "speechlm.sh")
    os.symlink(ROOT / "egs2/TEMPLATE/speechlm1/path.sh", dst / "path.sh")
    os.symlink(ROOT / "utils", dst / "utils")
    return dst


def sh(cwd, *args, check=True):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run(["bash", *args], cwd=cwd, capture_output=True, text=True, env=env)
    if check and r.returncode != 0:
        raise AssertionError(f"{args} failed ({r.returncode}):\n{r.stderr[-4000:]}")
    return r


@pytest.fixture(scope="module")
def recipe(mini_fast_recipe):
    return mini_fast_recipe  # conftest.py: run once per session, shared with test_recipe_asterisk


def test_full_pipeline_writes_results(recipe):
    d, r = recipe
    assert "Successfully finished" in r.stderr
    # --fast results go beside the recipe's tracked RESULTS.md, never over it
    assert not (d / "RESULTS.md").exists() and not (d / "RESULTS.json").exists()
    assert (d / "RESULTS_fast.json").exists() and (d / "exp/packed/RESULTS.md").read_text() == (d / "RESULTS_fast.md").read_text()
    table = (d / "RESULTS_fast.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| task")]
    got = {(c[0], c[2]) for c in ([x.strip() for x in row.strip("|").split("|")] for row in rows)}
    for need in [("asr", "WER (%)"), ("tts", "WER (%)"), ("textlm", "perplexity"), ("audiolm", "semantic_perplexity"),
                 ("tts_real_audio", "WER (%)"), ("textlm", "perplexity_ratio_to_base")]:
        assert need in got, (need, table)
    for stage in range(1, 12):
        assert f"Stage {stage}:" in r.stderr
    # the packed model loads with one call and transcribes
    from espnet2_speechlm.infer.api import SpeechLM

    lm = SpeechLM.from_pretrained(d / "exp" / "packed", device="cpu")
    wav = next(iter((d / "dump/raw/test/wav.scp").read_text().splitlines())).split(" ", 1)[1]
    assert isinstance(lm.asr(wav), str)


def test_finished_stages_are_skipped_and_later_stages_run_alone(recipe):
    d, _ = recipe
    r = sh(d, "./run.sh", "--fast", "true", "--stage", "1", "--stop_stage", "6")
    for stage in (1, 3):
        assert f"Stage {stage} already done" in r.stderr or "already done" in r.stderr
    assert "already complete" in r.stderr  # the token dump
    assert "Stage 6" in r.stderr and "train_asr: already done" in r.stderr
    r = sh(d, "./run.sh", "--fast", "true", "--stage", "9", "--stop_stage", "10")
    assert "already complete" in r.stderr and (d / "RESULTS_fast.md").exists()


def test_training_with_changed_settings_is_refused_and_checkpoints_kept(recipe):
    d, _ = recipe
    ck = sorted(p.name for p in (d / "exp/speechlm/checkpoints").iterdir())
    r = sh(d, "./run.sh", "--fast", "true", "--stage", "7", "--stop_stage", "7", "--train_args", "optim.lr=1e-4", check=False)
    assert r.returncode != 0
    assert "exp/speechlm holds a training run begun with other settings" in r.stderr and "mv exp/speechlm" in r.stderr
    assert sorted(p.name for p in (d / "exp/speechlm/checkpoints").iterdir()) == ck
    # the same settings as before: the finished run is found complete, nothing retrained
    r = sh(d, "./run.sh", "--fast", "true", "--stage", "7", "--stop_stage", "7")
    assert "holds a training run" not in r.stderr


def test_help_lists_every_stage(recipe):
    d, _ = recipe
    r = sh(d, "./speechlm.sh", "--help")
    for stage in range(1, 12):
        assert f"\n{stage:3d}  " in "\n" + r.stderr or f" {stage}  " in r.stderr
    assert "--stage" in r.stderr and "--nj" in r.stderr and "--ngpu" in r.stderr
    r = sh(d, "./speechlm.sh", "--stgae", "3", check=False)
    assert r.returncode != 0 and "invalid option --stgae" in r.stderr


def test_setup_sh_makes_a_recipe_that_runs(recipe, tmp_path):
    d, _ = recipe
    new = tmp_path / "my_corpus" / "speechlm1"
    sh(ROOT, str(ROOT / "egs2/TEMPLATE/speechlm1/setup.sh"), str(new))
    assert (new / "speechlm.sh").is_symlink() and (new / "local/data.sh").exists() and (new / "run.sh").exists()
    # the user fills in local/data.sh: here, it reuses the mini corpus
    (new / "local/data.sh").write_text(f"#!/usr/bin/env bash\nset -e\nmkdir -p data\ncp -r {d}/data/train {d}/data/dev {d}/data/test data/\n")
    r = sh(new, "./run.sh", "--stop_stage", "2")
    assert "Successfully finished" in r.stderr and (new / "dump/raw/test/utt2dur").exists()


@pytest.mark.parametrize("breakage", ["missing_wav", "id_mismatch", "empty_text"])
def test_bad_data_dir_stops_stage_2_naming_file_and_line(recipe, tmp_path, breakage):
    d, _ = recipe
    new = copy_recipe(tmp_path / "r")
    shutil.copytree(d / "data", new / "data")
    test = new / "data" / "test"
    lines = (test / "wav.scp").read_text().splitlines()
    if breakage == "missing_wav":
        lines[1] = lines[1].split(" ", 1)[0] + " /nonexistent/x.wav"
        (test / "wav.scp").write_text("\n".join(lines) + "\n")
        want = ["wav.scp: line 2", "not found"]
    elif breakage == "id_mismatch":
        t = (test / "text").read_text().splitlines()
        t[2] = "someone_else " + t[2].split(" ", 1)[1]
        (test / "text").write_text("\n".join(t) + "\n")
        want = ["line 3", "not in"]
    else:
        t = (test / "text").read_text().splitlines()
        t[0] = t[0].split(" ", 1)[0]
        (test / "text").write_text("\n".join(t) + "\n")
        want = ["text: line 1", "empty"]
    r = sh(new, "./run.sh", "--fast", "true", "--stage", "2", "--stop_stage", "2", check=False)
    assert r.returncode != 0
    for w in want:
        assert w in r.stderr, r.stderr[-2000:]
