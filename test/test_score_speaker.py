"""Speaker similarity through an ESPnet speaker model loaded from local files.

No trained speaker weights exist offline, so a small randomly initialised
ECAPA-TDNN of espnet2's own SpeakerTask is built and saved the way ESPnet
saves one (config.yaml + .pth); the test checks that the loader rebuilds the
same network with the same weights and that scoring runs end to end.
The similarity values of a random model mean nothing about speakers.
"""

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

espnet2 = pytest.importorskip("espnet2")
torch = pytest.importorskip("torch")

from espnet2_speechlm.score.speaker import ESPnetSpeakerEmbedder, cosine_similarity  # noqa: E402

SOUNDS = Path("/usr/share/asterisk/sounds/en")


@pytest.fixture(scope="module")
def spk_model_dir(tmp_path_factory):
    from espnet2.tasks.spk import SpeakerTask

    d = tmp_path_factory.mktemp("spk_model")
    args = SpeakerTask.get_parser().parse_args(["--output_dir", str(d)])
    conf = vars(args)
    conf.update(
        frontend="melspec_torch", frontend_conf={"n_mels": 40},
        encoder="ecapa_tdnn", encoder_conf={"model_scale": 2, "ndim": 32, "output_size": 48},
        pooling="chn_attn_stat", pooling_conf={},
        projector="xvector", projector_conf={"output_size": 16},
        loss="aamsoftmax", loss_conf={}, spk_num=3,
    )
    torch.manual_seed(0)
    model = SpeakerTask.build_model(argparse.Namespace(**conf))
    (d / "config.yaml").write_text(yaml.safe_dump(conf))
    torch.save(model.state_dict(), d / "valid.eer.best.pth")
    return d, model


def test_cosine_similarity():
    assert cosine_similarity([1, 0], [1, 0]) == pytest.approx(1.0)
    assert cosine_similarity([1, 0], [0, 2]) == pytest.approx(0.0)
    assert cosine_similarity([1, 1], [-1, -1]) == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="zero"):
        cosine_similarity([0, 0], [1, 0])


def test_espnet_speaker_model_loads_and_embeds(spk_model_dir):
    d, model = spk_model_dir
    emb = ESPnetSpeakerEmbedder(d)
    saved = model.state_dict()
    for k, v in emb.model.state_dict().items():
        assert torch.equal(v, saved[k]), k
    rng = np.random.default_rng(0)
    a = rng.standard_normal(16000).astype(np.float32) * 0.1
    b = rng.standard_normal(24000).astype(np.float32) * 0.1
    ea, eb = emb.embed(a), emb.embed(b)
    assert ea.shape == (16,) and np.all(np.isfinite(ea))
    assert cosine_similarity(ea, emb.embed(a)) == pytest.approx(1.0, abs=1e-5)
    assert -1.0 <= cosine_similarity(ea, eb) <= 1.0
    assert "ecapa_tdnn" in emb.describe()


def test_bad_speaker_model_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ESPnetSpeakerEmbedder(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="config.yaml and a .pth"):
        ESPnetSpeakerEmbedder(tmp_path)


@pytest.mark.skipif(not (SOUNDS / "auth-thankyou.wav").is_file(), reason="needs asterisk-core-sounds-en-wav")
def test_score_tts_with_speaker_similarity(tmp_path, spk_model_dir):
    from espnet2_speechlm.bin import score_tts

    d, _ = spk_model_dir
    data = tmp_path / "data" / "t"
    data.mkdir(parents=True)
    (data / "wav.scp").write_text(f"u1 {SOUNDS}/auth-thankyou.wav\n")
    (data / "text").write_text("u1 Thank you.\n")
    out = tmp_path / "o"
    argv = ["--data_dir", str(data), "--out_dir", str(out), "--beam_size", "1",
            "--spk_model_dir", str(d), "--spk_ref_scp", str(data / "wav.scp")]
    assert score_tts.main(argv) == 0
    rows = {r["metric"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    # Same audio as prompt and output: similarity 1 whatever the weights.
    assert rows["SPK-SIM"]["value"] == pytest.approx(1.0, abs=1e-5)
    assert rows["WER"]["value"] == 0.0
    assert "| tts | t | SPK-SIM | 1.0000 | 1 |" in (out / "RESULTS.md").read_text()
