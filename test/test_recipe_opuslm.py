"""egs2/asterisk with a released OpusLM model: import, dump, splice, fine-tune, decode and score, end to end.

The release is a replica in the released formats (release/testing.py: a tiny
Llama body under the released key names, config.yaml with the released block
layout), and so are its tokenizers (a tiny XEUS-class SSL model, a k-means
pickle, a tiny DAC; test_opuslm_tokenizer.py).  ``run.sh --fast true
--released_model ... --released_tokenizers ... --base_llm ...`` must import
it, tokenise the asterisk prompts with the released tokenizers, fine-tune
with the release's conventions kept (speaker prompts padded to 500 frames), and write ASR and TTS WER (RESULTS_fast.md) before ("init")
and after ("speechlm") fine-tuning.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from recipe_helpers import ROOT, copy_recipe, sh

pytest.importorskip("espnet2")
RECIPE = ROOT / "egs2" / "asterisk" / "speechlm1"
have_asterisk = Path("/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz").exists() and \
    Path("/usr/share/asterisk/sounds/en_US_f_Allison").is_dir()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not have_asterisk, reason="needs asterisk-core-sounds-en and -en-wav (Debian)")]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from test_opuslm_tokenizer import write_released_tokenizers

    from espnet2_speechlm.release.testing import write_replica

    root = tmp_path_factory.mktemp("opuslm_recipe")
    rel, base = write_replica(root / "replica", "llama", semantic=20, codebook_size=16)
    tok = root / "released_tokenizers"
    tok.mkdir()
    write_released_tokenizers(tok, semantic=20, bins=16)
    d = copy_recipe(RECIPE, root / "speechlm1")
    r = sh(d, "./run.sh", "--fast", "true", "--released_model", str(rel), "--base_llm", str(base),
           "--released_tokenizers", str(tok))
    return d, rel, r


def test_released_model_is_fine_tuned_and_scored(run):
    d, rel, r = run
    assert "Successfully finished" in r.stderr
    rows = {}
    for line in (d / "RESULTS_fast.md").read_text().splitlines():
        c = [x.strip() for x in line.strip("|").split("|")]
        if line.startswith("| ") and len(c) >= 6 and c[0] not in ("task", "---"):
            rows[(c[0], c[2], c[5])] = float(c[3])
    for task in ("asr", "tts"):
        for model in ("init", "speechlm"):
            assert (task, "WER (%)", model) in rows, (task, model, (d / "RESULTS_fast.md").read_text())
    imported = d / "exp" / "released_model"
    assert yaml.safe_load((imported / "speechlm.yaml").read_text())["convention"] == "espnet_opuslm"
    # the release's vocabulary, read from its token_list, is the recipe's
    assert json.loads((d / "dump/vocab.json").read_text()) == json.loads((imported / "vocab.json").read_text())
    conf = yaml.safe_load((rel / "config.yaml").read_text())
    assert json.loads((imported / "vocab.json").read_text())["size"] == len(conf["token_list"])


def test_tokens_fine_tuning_and_decoding_keep_the_release_s_conventions(run, monkeypatch):
    import kaldiio

    from espnet2_speechlm.model import MultiStreamLM
    from espnet2_speechlm.train.checkpoint import find_model_dir

    d, _, _ = run
    monkeypatch.chdir(d)  # a token scp may name its archives relative to the recipe
    cfg = json.loads((d / "exp/released_model/speech_tokenizer/tokenizer.json").read_text())
    assert cfg["semantic"]["features"]["use_final_output"] is True and cfg["acoustic"]["type"] == "espnet_codec"
    frames = [np.asarray(v).reshape(-1, 9) for _, v in kaldiio.load_scp_sequential(str(d / "dump/tokens/test/tokens.scp"))]
    allf = np.concatenate(frames)
    assert allf[:, 0].max() < 20 and allf[:, 1:].max() < 16
    tuned = find_model_dir(d / "exp/speechlm/checkpoints")
    assert yaml.safe_load((tuned / "speechlm.yaml").read_text())["convention"] == "espnet_opuslm"
    p0 = {k: v.detach() for k, v in MultiStreamLM.from_pretrained(d / "exp/released_model").named_parameters()}
    p1 = {k: v.detach() for k, v in MultiStreamLM.from_pretrained(tuned).named_parameters()}
    assert p0.keys() == p1.keys()
    num = sum(float(((p1[k] - p0[k]).double() ** 2).sum()) for k in p0)
    den = sum(float((p0[k].double() ** 2).sum()) for k in p0)
    assert 0 < (num / den) ** 0.5 < 0.2  # a few small steps from the released weights, not a fresh start
    # the fine-tuned model is decoded with the release's decoding defaults (packed decode.yaml)
    dec = yaml.safe_load((d / "exp/speechlm/pack/decode.yaml").read_text())
    assert dec["tts"]["speaker_prompt_frames"] == 500 and dec["tts"]["generation"]["min_len"] == 3
    hyps = (d / "exp/speechlm/decode_asr_test/text").read_text().splitlines()
    assert len(hyps) == 4  # run.sh --fast with a released model: 4 test prompts
    # TTS fine-tuning data in the release's layout: speaker prompts padded to 500 frames
    meta = json.loads((d / "dump/splice/train_tts/meta.json").read_text())
    assert meta["options"]["speaker_prompt_len"] == 500 and meta["options"]["speaker_prompt_pad"] is True
    examples = [json.loads(x) for x in (d / "dump/splice/train_tts/examples.jsonl").read_text().splitlines()]
    assert any("spk" in ex for ex in examples)
