"""The released OpusLM speech tokenizers, on replicas in the released formats.

A tiny XEUS-class model (an ESPnet SSL model with the wav2vec CNN front-end,
an E-Branchformer encoder and mask settings, saved as ``xeus_checkpoint_new.pth``
+ ``config.yaml``), a k-means pickle written by joblib from scikit-learn
(``km_opus_lm.mdl``) and a tiny ESPnet DAC (``360epoch.pth`` + ``config.yaml``),
laid out as the released repositories are.  The tokenizer directory built from
them must give the released id layout (unit 0 written as ``<pad>`` included)
and refuse what does not fit: a pickle of anything else, a tokenizer whose
sizes differ from the model's vocabulary (at import, pack, API load and decode).
"""

import argparse
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from espnet_configs import dac_config as espnet_dac_config
from espnet_configs import ssl_config

espnet2 = pytest.importorskip("espnet2")
torch.set_num_threads(1)

# XEUS carries mask settings: ESPnet's encode() masks with them even in eval mode
XEUS_CONFIG = ssl_config("e_branchformer", mask={"mask_prob": 0.5, "mask_length": 2})


def dac_config(bins: int) -> dict:
    return espnet_dac_config(n_q=12, bins=bins, bandwidth=6.0)


def speechlike(seconds, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(16000 * seconds)) / 16000
    f = 150 + 100 * np.sin(2 * np.pi * (0.5 + seed) * t)
    return (0.3 * np.sin(2 * np.pi * np.cumsum(f) / 16000) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


def write_released_tokenizers(root, semantic=20, bins=16, seed=0):
    """root/xeus/model/{xeus_checkpoint_new.pth, config.yaml, km_opus_lm.mdl} and
    root/dac/exp/codec_train_dac_large_v1.4_raw_fs16000/{360epoch.pth, config.yaml}."""
    import joblib
    from sklearn.cluster import MiniBatchKMeans

    from espnet2.tasks.gan_codec import GANCodecTask
    from espnet2.tasks.ssl import SSLTask

    torch.manual_seed(seed)
    xd = root / "xeus" / "model"
    xd.mkdir(parents=True)
    ssl = SSLTask.build_model(argparse.Namespace(**XEUS_CONFIG)).eval()
    (xd / "config.yaml").write_text(yaml.safe_dump(XEUS_CONFIG))
    torch.save(ssl.state_dict(), xd / "xeus_checkpoint_new.pth")
    with torch.no_grad():  # centres fitted on the replica's own final-normed features, as the release's were
        wavs = [speechlike(1.5, s) for s in range(4)]
        feats = torch.cat([ssl.inference_encode(torch.as_tensor(w)[None], torch.tensor([len(w)]))[0][0] for w in wavs])
    km = MiniBatchKMeans(n_clusters=semantic, random_state=0, n_init=3, batch_size=256).fit(feats.numpy())
    joblib.dump(km, xd / "km_opus_lm.mdl")
    cd = root / "dac" / "exp" / "codec_train_dac_large_v1.4_raw_fs16000"
    cd.mkdir(parents=True)
    conf = dac_config(bins)
    codec = GANCodecTask.build_model(argparse.Namespace(**conf))
    (cd / "config.yaml").write_text(yaml.safe_dump(conf))
    torch.save(codec.state_dict(), cd / "360epoch.pth")
    return root, km, ssl


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    root = tmp_path_factory.mktemp("released_tokenizers")
    write_released_tokenizers(root)
    return root


@pytest.fixture(scope="module")
def tok_dir(released, tmp_path_factory):
    from espnet2_speechlm.tokenizers.opuslm import build_release_tokenizer

    return build_release_tokenizer(released, tmp_path_factory.mktemp("tok") / "speech_tokenizer")


def test_features_are_the_final_normed_output_with_masking_off(released, tok_dir):
    from espnet2_speechlm.tokenizers.speech import SpeechTokenizer, read_config

    cfg = read_config(tok_dir)
    f = cfg["semantic"]["features"]
    assert (f["layer"], f["use_final_output"], f["pad_to_codec"]) == (3, True, False)
    assert (cfg["semantic_vocab_size"], cfg["num_codebooks"], cfg["codebook_size"]) == (20, 8, 16)
    tok = SpeechTokenizer.load(tok_dir)
    ssl = tok.semantic.features.model
    wav = speechlike(1.3, 7)
    ours = tok.semantic.features([wav])[0]
    t = (len(wav) - 400) // 320 + 1
    assert len(ours) == t  # ESPnet's framing: the audio as it is, one frame per 320 samples of 400
    with torch.no_grad():
        x, n = torch.as_tensor(wav)[None], torch.tensor([len(wav)])
        masked = ssl.encode(x, n)["encoder_output"][-1][0]  # ESPnet's encode masks, although the model is in eval mode
        ssl.util_attributes = [a for a in ssl.util_attributes if a != "mask"]
        unmasked = ssl.encode(x, n)["encoder_output"][-1][0]  # index 18 of 19 for XEUS: the final-normed output
    assert torch.allclose(ours, unmasked[:t], atol=1e-4)
    assert not torch.allclose(ours, masked[:t], atol=1e-2)


def test_released_id_layout_and_unit_zero(released, tok_dir):
    from espnet2_speechlm.tokenizers.sklearn_kmeans import read_kmeans_centers
    from espnet2_speechlm.tokenizers.speech import SpeechTokenizer
    from espnet2_speechlm.vocab import JointVocab

    tok = SpeechTokenizer.load(tok_dir)
    wavs = [speechlike(1.5, s) for s in range(4)]
    frames = tok.encode(wavs)
    # units: nearest released centre in squared distance, float32
    centers = torch.from_numpy(read_kmeans_centers(released / "xeus/model/km_opus_lm.mdl"))
    feats = tok.semantic.features(wavs)
    codes = tok.acoustic.encode(wavs)
    for w, fr, ft, c in zip(wavs, frames, feats, codes):
        want = ((ft[:, None, :] - centers[None]) ** 2).sum(-1).argmin(1).numpy()
        # both streams cut to the shorter: the SSL one, 1 or 2 frames fewer than the codec's ceil(n / 320)
        assert len(fr) == len(ft) == (len(w) - 400) // 320 + 1 and 1 <= len(c) - len(fr) <= 2
        assert np.array_equal(fr[:, 0], want) and np.array_equal(fr[:, 1:], c[: len(fr)])
        assert fr.shape[1] == 9 and fr[:, 1:].max() < 16
    allf = np.concatenate(frames)
    assert (allf[:, 0] == 0).any(), "the replica should produce unit 0 somewhere"
    # the released vocabulary: unit k -> 256 + k, except unit 0 -> <pad>; code c of codebook q -> 276 + 16 q + c
    from espnet2_speechlm.release.testing import replica_token_list

    tl, tb = replica_token_list(["a", "b"], 64, semantic=20, codebook_size=16)
    v = JointVocab.build({"semantic": 20, "acoustic": 8 * 16, "text": 64}, num_codebooks=8)
    import dataclasses

    v = dataclasses.replace(v, semantic0_is_pad=True)
    g = v.audio_to_global(allf)
    sem0 = allf[:, 0] == 0
    assert (g[sem0, 0] == 0).all() and (g[~sem0, 0] == 256 + allf[~sem0, 0]).all()
    assert (g[:, 1:] == tb["codec"][0] + 16 * np.arange(8) + allf[:, 1:]).all()
    assert [tl[i] for i in g[~sem0, 0][:3]] == [f"<ssl_code{k + 1}>" for k in allf[~sem0, 0][:3]]
    assert np.array_equal(v.audio_to_local(g), allf)


def test_fit_speech_tokenizer_with_released_centres(released, tmp_path):
    """--semantic espnet_ssl --kmeans_model FILE: nothing fitted, no data needed; a pickle of anything else refused."""
    import joblib
    from sklearn.decomposition import PCA

    def run(km, out):
        return subprocess.run([sys.executable, "-m", "espnet2_speechlm.bin.fit_speech_tokenizer", "--out_dir", str(out),
                               "--semantic", "espnet_ssl", "--ssl_config", str(released / "xeus/model/config.yaml"),
                               "--ssl_model", str(released / "xeus/model/xeus_checkpoint_new.pth"), "--ssl_layer", "3",
                               "--ssl_use_final_output", "--ssl_espnet_framing", "--kmeans_model", str(km), "--acoustic", "espnet_codec",
                               "--codec_config", str(released / "dac/exp/codec_train_dac_large_v1.4_raw_fs16000/config.yaml"),
                               "--codec_model", str(released / "dac/exp/codec_train_dac_large_v1.4_raw_fs16000/360epoch.pth")],
                              capture_output=True, text=True)

    r = run(released / "xeus/model/km_opus_lm.mdl", tmp_path / "tok")
    assert r.returncode == 0, r.stderr[-2000:]
    cfg = json.loads((tmp_path / "tok/tokenizer.json").read_text())
    assert cfg["semantic_vocab_size"] == 20 and cfg["semantic"]["features"]["use_final_output"] is True
    assert cfg["semantic"]["features"]["pad_to_codec"] is False
    joblib.dump(PCA(2).fit(np.random.default_rng(0).standard_normal((50, 32))), tmp_path / "pca.mdl")
    r = run(tmp_path / "pca.mdl", tmp_path / "tok2")
    assert r.returncode != 0 and "pca.mdl: the pickle names sklearn.decomposition._pca.PCA" in r.stderr
    assert not (tmp_path / "tok2").exists()


def test_tokenizer_that_does_not_fit_is_refused_everywhere(released, tok_dir, tmp_path):
    """Sizes that differ from the imported vocabulary: refused at import, pack, API load and decode."""
    from espnet2_speechlm.infer.api import SpeechLM, pack
    from espnet2_speechlm.release.opuslm import import_opuslm
    from espnet2_speechlm.release.testing import write_replica

    rel, base = write_replica(tmp_path / "rep", "llama", semantic=20, codebook_size=16)
    # the released files themselves, found by name under one directory, fit: imported with the model
    out = import_opuslm(rel, tmp_path / "imported", base_llm=base, speech_tokenizer=released)
    assert json.loads((out / "speech_tokenizer/tokenizer.json").read_text())["semantic_vocab_size"] == 20
    lm = SpeechLM.from_pretrained(out, device="cpu")
    assert lm.speech_tokenizer is not None and len(lm.asr(speechlike(0.6, 3), _short(lm.defaults.asr))) >= 0

    bad = tmp_path / "bad"
    shutil.copytree(tok_dir, bad)
    cfg = json.loads((bad / "tokenizer.json").read_text())
    cfg["codebook_size"] = 32
    (bad / "tokenizer.json").write_text(json.dumps(cfg))
    msg = r"tokenizer.json: 20 semantic units, 8 x 32 acoustic codes, but .* was built for 20 semantic units, 8 x 16 acoustic codes"
    with pytest.raises(ValueError, match=msg):  # import
        import_opuslm(rel, tmp_path / "imp2", base_llm=base, speech_tokenizer=bad)
    assert not (tmp_path / "imp2").exists() and not (tmp_path / "imp2.tmp").exists()
    with pytest.raises(ValueError, match=msg):  # pack
        pack(out, tmp_path / "packed", speech_tokenizer=bad)
    assert not (tmp_path / "packed").exists()
    r = subprocess.run([sys.executable, "-m", "espnet2_speechlm.bin.pack", "--checkpoint", str(out), "--out",
                        str(tmp_path / "packed"), "--speech_tokenizer", str(bad)], capture_output=True, text=True)
    assert r.returncode == 1 and "8 x 32 acoustic codes" in r.stderr
    with pytest.raises(ValueError, match=msg):  # API load
        SpeechLM.from_pretrained(out, device="cpu", speech_tokenizer=bad)
    shutil.rmtree(out / "speech_tokenizer")
    shutil.copytree(bad, out / "speech_tokenizer")
    with pytest.raises(ValueError, match=msg):
        SpeechLM.from_pretrained(out, device="cpu")
    data = tmp_path / "data"  # decode
    data.mkdir()
    (data / "text").write_text("u1 please leave a message\n")
    r = subprocess.run([sys.executable, "-m", "espnet2_speechlm.bin.decode", "--model_dir", str(out), "--task", "tts",
                        "--data_dir", str(data), "--out_dir", str(tmp_path / "dec")], capture_output=True, text=True)
    assert r.returncode != 0 and "8 x 32 acoustic codes" in r.stderr, r.stderr[-3000:]


def _short(cfg):
    import dataclasses

    return dataclasses.replace(cfg, generation=dataclasses.replace(cfg.generation, max_len=12))
