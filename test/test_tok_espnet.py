"""ESPnet back-ends loaded the way released models are: config.yaml + state dict, through the ESPnet task.

Small randomly initialised models of the same classes (an ``ESPnetSSLModel``
of ``espnet2.tasks.ssl`` with the wav2vec CNN front-end as XEUS has, and a
DAC of ``espnet2.gan_codec``) are built, saved as ESPnet saves them, and
loaded back through the toolkit's loading code.
"""

import numpy as np
import pytest
import torch
import yaml
from espnet_configs import dac_config, ssl_config

espnet2 = pytest.importorskip("espnet2")
torch.set_num_threads(1)

SSL_CONFIG = ssl_config("transformer")
CODEC_CONFIG = dac_config(n_q=8, bins=1024, bandwidth=4.0)


def save_espnet_model(task, config: dict, d):
    """What ESPnet's trainer leaves behind: the args as config.yaml and a state dict file."""
    import argparse

    model = task.build_model(argparse.Namespace(**config))
    (d / "config.yaml").write_text(yaml.safe_dump(config))
    torch.save(model.state_dict(), d / "model.pth")
    return model


@pytest.fixture(scope="module")
def ssl_dir(tmp_path_factory):
    from espnet2.tasks.ssl import SSLTask

    d = tmp_path_factory.mktemp("ssl")
    torch.manual_seed(0)
    save_espnet_model(SSLTask, SSL_CONFIG, d)
    return d


@pytest.fixture(scope="module")
def codec_dir(tmp_path_factory):
    from espnet2.tasks.gan_codec import GANCodecTask

    d = tmp_path_factory.mktemp("codec")
    torch.manual_seed(0)
    save_espnet_model(GANCodecTask, CODEC_CONFIG, d)
    return d


def speechlike(seconds, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(16000 * seconds)) / 16000
    return (0.3 * np.sin(2 * np.pi * 200 * t * (1 + 0.2 * np.sin(3 * t))) + 0.02 * rng.standard_normal(t.size)).astype(np.float32)


def test_ssl_features_layers_and_rate(ssl_dir):
    from espnet2_speechlm.tokenizers.semantic import ESPnetSSLFeatures, SemanticTokenizer

    f2 = ESPnetSSLFeatures(ssl_dir / "config.yaml", ssl_dir / "model.pth", layer=2)
    f3 = ESPnetSSLFeatures(ssl_dir / "config.yaml", ssl_dir / "model.pth", layer=3)
    wavs = [speechlike(1.0), speechlike(2.37, 1)]
    a, b = f2(wavs), f3(wavs)
    for w, x in zip(wavs, a):
        assert x.shape[1] == 32 and abs(x.shape[0] - len(w) / 320) <= 1
    # padded to the codec's framing: exactly ceil(n / 320) frames for any length
    from espnet2_speechlm.tokenizers.features import frame_count

    odd = [speechlike(n / 16000, 5) for n in (16001, 16319, 16320, 5000, 801)]
    assert [len(x) for x in f2(odd)] == [frame_count(len(w)) for w in odd]
    assert not torch.allclose(a[0], b[0])  # the layer choice matters
    # loaded weights are the saved ones (not a fresh random init): two loads agree
    again = ESPnetSSLFeatures(ssl_dir / "config.yaml", ssl_dir / "model.pth", layer=2)(wavs)[0]
    assert torch.allclose(a[0], again, atol=1e-5)
    fresh = ESPnetSSLFeatures(ssl_dir / "config.yaml", ssl_dir / "model.pth", layer=2)
    torch.nn.init.normal_(next(fresh.model.parameters()))
    assert not torch.allclose(fresh(wavs)[0], a[0], atol=1e-3)
    # padding in a batch changes an utterance's features only slightly (the front-end normalises over the padded input)
    alone = f2(wavs[:1])[0]
    assert alone.shape == a[0].shape and float((alone - a[0]).abs().mean()) < 0.05
    with pytest.raises(ValueError, match="layer 9"):
        ESPnetSSLFeatures(ssl_dir / "config.yaml", ssl_dir / "model.pth", layer=9)(wavs[:1])
    sem = SemanticTokenizer.fit(f2, wavs * 4, 8, epochs=3)
    units = sem.encode(wavs)
    assert [len(u) for u in units] == [len(x) for x in a] and max(u.max() for u in units) < 8


def test_espnet_codec_encode_decode(codec_dir):
    from espnet2_speechlm.tokenizers.espnet_codec import ESPnetCodec
    from espnet2_speechlm.tokenizers.speech import align_streams

    codec = ESPnetCodec(codec_dir / "config.yaml", codec_dir / "model.pth", num_codebooks=8)
    assert (codec.hop, codec.codebook_size) == (320, 1024)
    wavs = [speechlike(1.0), speechlike(1.51, 2)]
    codes = codec.encode(wavs)
    for w, c in zip(wavs, codes):
        assert c.shape[1] == 8 and abs(c.shape[0] - len(w) / 320) <= 1
        assert c.min() >= 0 and c.max() < 1024
    # batch padding does not change an utterance's frame count
    assert codec.encode(wavs[1:])[0].shape == codes[1].shape
    y = codec.decode(codes[0])
    assert y.ndim == 1 and abs(len(y) - codes[0].shape[0] * 320) <= 320 and np.isfinite(y).all()
    # streams from the MFCC path and the codec line up within one frame
    from espnet2_speechlm.tokenizers.features import SpectralFeatures

    sem = SpectralFeatures()(wavs[1:])[0]
    assert align_streams("x", np.zeros(len(sem)), codes[1]).shape[1] == 9
    with pytest.raises(ValueError, match="has 8 codebooks, 16 asked for"):
        ESPnetCodec(codec_dir / "config.yaml", codec_dir / "model.pth", num_codebooks=16)


def test_speech_tokenizer_with_espnet_backends(ssl_dir, codec_dir, tmp_path):
    """tokenizer.json of the OpusLM-style setup (SSL k-means + ESPnet codec) loads back to the same tokenizer."""
    from espnet2_speechlm.tokenizers.espnet_codec import ESPnetCodec
    from espnet2_speechlm.tokenizers.semantic import ESPnetSSLFeatures, SemanticTokenizer
    from espnet2_speechlm.tokenizers.speech import SpeechTokenizer, read_config

    wavs = [speechlike(1.3), speechlike(0.9, 3)]
    sem = SemanticTokenizer.fit(ESPnetSSLFeatures(ssl_dir / "config.yaml", ssl_dir / "model.pth", layer=3), wavs * 4, 8, epochs=2)
    tok = SpeechTokenizer(sem, ESPnetCodec(codec_dir / "config.yaml", codec_dir / "model.pth"))
    frames = tok.encode(wavs, ["a", "b"])
    tok.save(tmp_path)
    cfg = read_config(tmp_path)
    assert (cfg["semantic_vocab_size"], cfg["num_codebooks"], cfg["codebook_size"]) == (8, 8, 1024)
    assert cfg["semantic"]["features"]["layer"] == 3 and cfg["acoustic"]["type"] == "espnet_codec"
    tok2 = SpeechTokenizer.load(tmp_path)
    for x, y in zip(frames, tok2.encode(wavs)):
        assert x.shape[1] == 9 and np.array_equal(x, y)
    assert np.isfinite(tok2.decode(frames[0])).all()


HUBERT_CONFIG = {
    "token_list": [str(i) for i in range(10)],
    "num_classes": 10,
    "input_size": 1, "frontend": None, "frontend_conf": {},
    "specaug": None, "specaug_conf": {}, "normalize": None, "normalize_conf": {},
    "preencoder": None, "preencoder_conf": {},
    "encoder": "torchaudio_hubert",
    "encoder_conf": {
        "extractor_conv_layer_config": [[8, 10, 5], [8, 3, 2], [8, 3, 2], [8, 3, 2], [8, 3, 2], [8, 2, 2], [8, 2, 2]],
        "encoder_embed_dim": 32, "encoder_pos_conv_kernel": 16, "encoder_pos_conv_groups": 4, "encoder_num_layers": 3,
        "encoder_num_heads": 2, "encoder_ff_interm_features": 64, "final_dim": 16, "encoder_layer_drop": 0.0,
    },
    "model": "torchaudio", "model_conf": {},
    "init": None,
}


def test_hubert_features(tmp_path):
    from espnet2.tasks.hubert import HubertTask

    from espnet2_speechlm.tokenizers.semantic import ESPnetSSLFeatures

    torch.manual_seed(0)
    save_espnet_model(HubertTask, HUBERT_CONFIG, tmp_path)
    wavs = [speechlike(1.0), speechlike(1.7, 4)]
    f1 = ESPnetSSLFeatures(tmp_path / "config.yaml", tmp_path / "model.pth", layer=1, task="hubert")(wavs)
    f3 = ESPnetSSLFeatures(tmp_path / "config.yaml", tmp_path / "model.pth", layer=3, task="hubert")(wavs)
    for w, a, b in zip(wavs, f1, f3):
        assert a.shape[1] == 32 and a.shape[0] == -(-len(w) // 320) and a.shape == b.shape
    assert not torch.allclose(f1[0], f3[0])


def test_espnet_tasks_import_without_starting_downloads():
    """g2p_en, imported by every espnet2.tasks module, calls nltk.download at import time."""
    import subprocess
    import sys

    code = ("from espnet2_speechlm.tokenizers.espnet_tasks import espnet_task\n"
            "import nltk\n"
            "def fake_download(*a, **k):  # what g2p_en would call, if it got through\n"
            "    print('DOWNLOAD', a)\n"
            "nltk.download = fake_download\n"
            "print(espnet_task('espnet2.tasks.gan_codec', 'GANCodecTask').__name__)\n"
            "print(nltk.download.__name__)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "DOWNLOAD" not in r.stdout and "[nltk_data]" not in r.stderr, (r.stdout, r.stderr[-2000:])
    assert r.stdout.split()[-2:] == ["GANCodecTask", "fake_download"]  # and nltk.download is given back
