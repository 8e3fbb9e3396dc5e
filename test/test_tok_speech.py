"""Offline speech tokenizers: k-means, 50 Hz features, the mel RVQ codec, the combined tokenizer."""

import json

import numpy as np
import pytest
import torch

from espnet2_speechlm.tokenizers import kmeans as km
from espnet2_speechlm.tokenizers.audio import FRAME_RATE, SAMPLE_RATE, AudioItem, load_item
from espnet2_speechlm.tokenizers.features import SpectralFeatures, frame_count
from espnet2_speechlm.tokenizers.melcodec import MelCodecConfig, MelRVQCodec
from espnet2_speechlm.tokenizers.semantic import SemanticTokenizer
from espnet2_speechlm.tokenizers.speech import FrameMismatchError, SpeechTokenizer, align_streams, read_config
from espnet2_speechlm.tokenizers.testing import have_espeak, make_espeak_data_dir

torch.set_num_threads(1)
pytestmark = pytest.mark.skipif(not have_espeak(), reason="espeak-ng not installed")


@pytest.fixture(scope="module")
def wavs(tmp_path_factory):
    d = make_espeak_data_dir(tmp_path_factory.mktemp("espeak"), n=12, seed=1)
    from espnet2_speechlm.tokenizers.audio import read_data_dir

    return [load_item(it) for it in read_data_dir(d)]


@pytest.fixture(scope="module")
def codec(wavs):
    return MelRVQCodec.fit(wavs, MelCodecConfig(codebook_size=64, griffin_lim_iters=16), epochs=8)


def test_kmeans_recovers_clusters():
    g = torch.Generator().manual_seed(0)
    true = torch.randn(8, 5, generator=g) * 10
    lab = torch.randint(8, (4000,), generator=g)
    x = true[lab] + 0.1 * torch.randn(4000, 5, generator=g)
    for bs in (500, 10**6):  # mini-batch and full-batch Lloyd
        c = km.fit_kmeans(x, 8, epochs=10, batch_size=bs, seed=0)
        idx, d = km.assign(x, c)
        assert float(d.mean()) < 0.2, bs  # noise variance is 5 * 0.01
        # each true cluster maps to exactly one centre
        assert len({int(idx[lab == k].mode().values) for k in range(8)}) == 8
    # deterministic for a seed
    assert torch.equal(km.fit_kmeans(x, 8, epochs=3, seed=3), km.fit_kmeans(x, 8, epochs=3, seed=3))


def test_kmeans_errors_and_io(tmp_path):
    with pytest.raises(ValueError, match="at least as many frames"):
        km.fit_kmeans(np.zeros((3, 2), np.float32), 4)
    c = torch.randn(4, 3)
    km.save_centers(tmp_path / "k.npy", c)
    assert torch.equal(km.load_centers(tmp_path / "k.npy"), c)
    with pytest.raises(FileNotFoundError):
        km.load_centers(tmp_path / "nope.npy")


def test_residual_kmeans_error_decreases():
    x = torch.randn(3000, 6, generator=torch.Generator().manual_seed(1))
    books = km.fit_residual_kmeans(x, 3, 16, epochs=5)
    errs = []
    for n in range(1, 4):
        codes = km.rvq_encode(x, books[:n])
        errs.append(float(((km.rvq_decode(codes, books[:n]) - x) ** 2).mean()))
    assert errs[0] > errs[1] > errs[2]


@pytest.mark.parametrize("kind", ["mfcc", "fbank"])
def test_features_50hz(kind):
    f = SpectralFeatures({"kind": kind})
    lens = [1, 319, 320, 321, 8000, 16000, 16001, 47999]
    out = f([np.random.default_rng(0).standard_normal(n).astype(np.float32) * 0.1 for n in lens])
    for n, o in zip(lens, out):
        assert o.shape == (frame_count(n), f.dim)
        assert abs(o.shape[0] - n / 320) <= 1  # 50 per second within one frame
        assert torch.isfinite(o).all()


def test_features_independent_of_batch():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(5000).astype(np.float32), rng.standard_normal(20000).astype(np.float32)
    f = SpectralFeatures()
    alone = f([a])[0]
    together = f([b, a])[1]
    assert torch.allclose(alone, together, atol=1e-5)


def test_mel_codec_roundtrip(codec, wavs, tmp_path):
    w = wavs[0]
    codes = codec.encode([w])[0]
    assert codes.shape == (frame_count(len(w)), 8) and codes.min() >= 0 and codes.max() < 64
    y = codec.decode(codes)
    assert y.shape == (codes.shape[0] * 320,) and np.isfinite(y).all()
    # the decoded audio has (nearly) the log-mel spectrum the codes describe, far closer than a silent or noise signal
    ref = codec.logmel([w])[0]
    err_rt = float(((codec.logmel([y[: len(w)]])[0] - ref) ** 2).mean())
    err_noise = float(((codec.logmel([np.random.default_rng(0).standard_normal(len(w)).astype(np.float32) * 0.05])[0] - ref) ** 2).mean())
    assert err_rt < 0.3 * err_noise
    # deterministic decode; save/load gives identical codes
    assert np.array_equal(y, codec.decode(codes))
    codec.save(tmp_path / "c")
    c2 = MelRVQCodec.load(tmp_path / "c")
    assert np.array_equal(c2.encode([w])[0], codes)
    with pytest.raises(ValueError, match=r"\[T, 8\]"):
        codec.decode(codes[:, :3])


def test_align_streams():
    sem = np.arange(10)
    ac = np.ones((11, 8), np.int64)
    out = align_streams("u1", sem, ac)
    assert out.shape == (10, 9) and out.dtype == np.int32 and (out[:, 0] == sem).all()
    assert align_streams("u1", sem[:9], ac[:10]).shape == (9, 9)
    with pytest.raises(FrameMismatchError, match="'u9'.*3 frames.*11"):
        align_streams("u9", sem[:3], ac)


def test_what_a_tokenizer_records_wins_over_the_toolkit_rates():
    assert SAMPLE_RATE // FRAME_RATE == 320  # the hop every back-end frames with
    recorded = SpeechTokenizer(None, None, {"sample_rate": 24000, "frame_rate": 75})
    assert (recorded.sample_rate, recorded.frame_rate) == (24000, 75)
    silent = SpeechTokenizer(None, None, {})
    assert (silent.sample_rate, silent.frame_rate) == (SAMPLE_RATE, FRAME_RATE)


def test_speech_tokenizer_save_load(codec, wavs, tmp_path):
    sem = SemanticTokenizer.fit(SpectralFeatures({"kind": "mfcc"}), wavs, 32, epochs=5)
    tok = SpeechTokenizer(sem, codec)
    frames = tok.encode(wavs[:3], ["a", "b", "c"])
    for w, f in zip(wavs, frames):
        assert f.shape == (frame_count(len(w)), 9) and f.dtype == np.int32
        assert f[:, 0].max() < 32 and f[:, 1:].max() < 64
    tok.save(tmp_path / "tok")
    cfg = read_config(tmp_path / "tok")
    assert (cfg["semantic_vocab_size"], cfg["num_codebooks"], cfg["codebook_size"]) == (32, 8, 64)
    tok2 = SpeechTokenizer.load(tmp_path / "tok")
    assert (cfg["sample_rate"], cfg["frame_rate"]) == (SAMPLE_RATE, FRAME_RATE) == (tok2.sample_rate, tok2.frame_rate)
    for a, b in zip(frames, tok2.encode(wavs[:3])):
        assert np.array_equal(a, b)
    assert tok2.decode(frames[0]).shape == (frames[0].shape[0] * 320,)
    assert tok2.decode(frames[0].reshape(-1)).shape == (frames[0].shape[0] * 320,)
    bad = json.loads((tmp_path / "tok" / "tokenizer.json").read_text())
    del bad["num_codebooks"]
    (tmp_path / "tok" / "tokenizer.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="missing key 'num_codebooks'"):
        read_config(tmp_path / "tok")
