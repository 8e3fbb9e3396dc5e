"""Speech rows initialised from the speech tokenizer's code vectors (tokenizers.speech.code_vectors
read by the trainer, model/speech_init.py projects them)."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from espnet2_speechlm.model.speech_init import init_speech_rows
from espnet2_speechlm.tokenizers.speech import code_vectors
from espnet2_speechlm.tokenizers.testing import have_espeak, make_espeak_data_dir
from espnet2_speechlm.vocab import JointVocab

pytestmark = pytest.mark.skipif(not have_espeak(), reason="espeak-ng is not installed")


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    root = tmp_path_factory.mktemp("sinit")
    data = make_espeak_data_dir(root / "data", n=6, seed=5)
    subprocess.run([sys.executable, "-m", "espnet2_speechlm.bin.fit_speech_tokenizer", "--data_dir", str(data),
                    "--out_dir", str(root / "stok"), "--semantic_k", "16", "--codebook_size", "16", "--epochs", "3",
                    "--griffin_lim_iters", "4"], check=True, capture_output=True)
    return root / "stok"


def _vocab_and_weight(text=30, width=32, seed=0):
    v = JointVocab.build({"semantic": 16, "acoustic": 8 * 16, "text": text}, num_codebooks=8)
    g = torch.Generator().manual_seed(seed)
    w = 0.3 + 0.05 * torch.randn(v.size, width, generator=g)  # text rows with a mean and a spread
    return v, w


def test_rows_are_one_linear_image_of_the_code_vectors(tokenizer):
    vecs = code_vectors(tokenizer)
    books = vecs["acoustic"]
    assert vecs["semantic"].shape == (16, 60) and books.shape == (8, 16, 80)
    v, w = _vocab_and_weight()
    before = w.clone()
    assert init_speech_rows(w, v, vecs, seed=1) == ["semantic", "acoustic"]
    t, ac = v.block("text"), v.block("acoustic")
    assert torch.equal(w[t.start : t.end], before[t.start : t.end])  # text rows untouched
    rows = w[ac.start : ac.end].reshape(8, 16, -1).double()
    # one linear map for every codebook (128 code vectors in 80 dims: a joint least-squares fit is
    # exact only then), so a frame's summed acoustic rows are the image of its summed code vectors,
    # its decoded log-mel frame
    x = torch.from_numpy(books).double().reshape(128, -1)
    assert torch.linalg.matrix_rank(x) == 80
    fit = torch.linalg.lstsq(x, rows.reshape(128, -1)).solution
    torch.testing.assert_close(x @ fit, rows.reshape(128, -1), atol=1e-5, rtol=1e-4)
    assert rows[0].std() > 2 * rows[7].std()  # later codebooks hold smaller residuals
    # semantic rows: centred on the text rows' mean with about their spread; distinct centres, distinct rows
    s = v.block("semantic")
    sem = w[s.start : s.end]
    text_std = before[t.start : t.end].std(0).mean()
    assert sem.std(0).mean() == pytest.approx(float(text_std), rel=0.35)
    torch.testing.assert_close(sem.mean(0), before[t.start : t.end].mean(0), atol=3 * float(text_std), rtol=0)
    assert torch.cdist(sem, sem).add(torch.eye(16)).min() > 0
    # nearby centres get nearby rows: row distances follow centre distances
    c = vecs["semantic"]
    c = (c - c.mean(0)) / (c.std(0) + 1e-6)
    dc = torch.cdist(torch.from_numpy(c), torch.from_numpy(c))[np.triu_indices(16, 1)]
    dr = torch.cdist(sem.double(), sem.double())[np.triu_indices(16, 1)]
    assert np.corrcoef(dc.numpy(), dr.numpy())[0, 1] > 0.8
    # the same seed gives the same rows
    _, w2 = _vocab_and_weight()
    init_speech_rows(w2, v, code_vectors(tokenizer), seed=1)
    assert torch.equal(w, w2)


def test_mismatched_vocabulary_is_named(tokenizer):
    v = JointVocab.build({"semantic": 20, "acoustic": 8 * 16, "text": 30}, num_codebooks=8)
    with pytest.raises(ValueError, match=f"{tokenizer}: 16 semantic centres.*has 20"):
        init_speech_rows(torch.zeros(v.size, 8), v, code_vectors(tokenizer), source=str(tokenizer))


def test_tokenizer_without_stored_vectors_leaves_rows_alone(tokenizer, tmp_path):
    cfg = json.loads((tokenizer / "tokenizer.json").read_text())
    cfg["semantic"] = {"type": "espnet_ssl", "vocab_size": 16}
    cfg["acoustic"] = {"type": "espnet_codec", "num_codebooks": 8, "codebook_size": 16}
    (tmp_path / "tokenizer.json").write_text(json.dumps(cfg))
    v, w = _vocab_and_weight()
    before = w.clone()
    assert code_vectors(tmp_path) == {}
    assert init_speech_rows(w, v, code_vectors(tmp_path)) == []
    assert torch.equal(w, before)


def test_trainer_builds_a_model_with_speech_rows_from_the_tokenizer(tokenizer, tmp_path, tiny_llama_cfg):
    from transformers import LlamaConfig, LlamaForCausalLM

    from espnet2_speechlm.train.config import TrainConfig
    from espnet2_speechlm.train.trainer import build_model

    cfg = dict(tiny_llama_cfg)
    cfg.pop("model_type")
    LlamaForCausalLM(LlamaConfig(**{**cfg, "vocab_size": 30})).save_pretrained(tmp_path / "llm")
    v = JointVocab.build({"semantic": 16, "acoustic": 8 * 16, "text": 30}, num_codebooks=8, text_tokenizer=str(tmp_path / "llm"))
    tc = TrainConfig()
    tc.model.init, tc.model.llm_dir = "llm", str(tmp_path / "llm")
    plain = build_model(tc, v).embed.weight.detach().clone()
    tc.model.speech_tokenizer_dir = str(tokenizer)
    informed = build_model(tc, v).embed.weight.detach()
    t, s = v.block("text"), v.block("semantic")
    assert torch.equal(plain[t.start : t.end], informed[t.start : t.end])
    assert not torch.allclose(plain[s.start : s.end], informed[s.start : s.end])
