"""SpeechLM API + decode stage on real (tiny) tokenizers and a model trained in the test.

The model memorises one ASR example; decoding it through the API and the
decode command must give its transcript back, which only works when the
prompts built at inference match the sequences built for training.
"""

import subprocess
import sys

import kaldiio
import numpy as np
import pytest
import soundfile as sf
import torch

from espnet2_speechlm import config as cfgmod
from espnet2_speechlm.data.collate import collate
from espnet2_speechlm.infer.api import DecodeConfig, SpeechLM, pack
from espnet2_speechlm.infer.config import GenerationConfig
from espnet2_speechlm.model.build import random_body
from espnet2_speechlm.tasks import build_sequence
from espnet2_speechlm.tokenizers.audio import load_item, read_data_dir
from espnet2_speechlm.tokenizers.testing import have_espeak, make_espeak_data_dir
from espnet2_speechlm.vocab import JointVocab

pytestmark = pytest.mark.skipif(not have_espeak(), reason="espeak-ng not installed")
PY = sys.executable


def run(*args):
    r = subprocess.run([PY, "-m", *args], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("api")
    data = make_espeak_data_dir(root / "data", n=6, seed=3)
    run("espnet2_speechlm.bin.fit_speech_tokenizer", "--data_dir", str(data), "--out_dir", str(root / "stok"),
        "--semantic_k", "16", "--codebook_size", "16", "--epochs", "3", "--griffin_lim_iters", "4")
    run("espnet2_speechlm.bin.fit_text_tokenizer", "--text", str(data / "text"), "--out_prefix", str(root / "bpe"),
        "--vocab_size", "40")
    run("espnet2_speechlm.bin.make_vocab", "--speech_tokenizer", str(root / "stok"), "--text_tokenizer",
        str(root / "bpe.model"), "--out", str(root / "vocab.json"))
    vocab = JointVocab.load(root / "vocab.json")
    from espnet2_speechlm.tokenizers.speech import SpeechTokenizer
    from espnet2_speechlm.tokenizers.text import load_text_tokenizer

    stok, ttok = SpeechTokenizer.load(root / "stok"), load_text_tokenizer(root / "bpe.model")
    items = read_data_dir(data)
    texts = dict(line.split(" ", 1) for line in (data / "text").read_text().splitlines())
    utt = items[0].utt
    speech = stok.encode([load_item(items[0])])[0].astype(np.int64)
    text_ids = np.array(ttok.encode(texts[utt]))
    cfg = dict(model_type="llama", hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
               intermediate_size=128, max_position_embeddings=1024)
    model = random_body(cfg, vocab, seed=0)
    seqs = [build_sequence(vocab, "asr", {"speech": speech, "text": text_ids}),
            build_sequence(vocab, "tts", {"text": text_ids, "speech": speech})]
    b = collate(seqs)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(150):
        loss_sum, frames, st = model(b["steps"], b["loss_mask"], b["attention_mask"])
        (loss_sum / frames).backward()
        opt.step()
        opt.zero_grad()
    assert st["acc_stream0"] > 0.95, st
    model.save_pretrained(root / "model")
    out = pack(root / "model", root / "pack", root / "bpe.model", root / "stok")
    return {"root": root, "pack": out, "data": data, "utt": utt, "text": texts[utt], "items": items, "speech": speech}


def test_api_round_trip(packed):
    lm = SpeechLM.from_pretrained(packed["pack"], device="cpu")
    wav_path = packed["items"][0].spec  # 22.05 kHz: resampled, not rejected
    assert sf.info(wav_path).samplerate != 16000
    assert lm.asr(wav_path) == packed["text"]
    assert lm.asr_batch([wav_path, load_item(packed["items"][0])]) == [packed["text"]] * 2
    wav = lm.tts(packed["text"])
    assert wav.dtype == np.float32 and wav.ndim == 1 and len(wav) > 1600
    cont = lm.continue_text(packed["text"].split()[0])
    assert isinstance(cont, str)
    sp = lm.continue_speech(load_item(packed["items"][1]), DecodeConfig(GenerationConfig(min_len=5, max_len=10)))
    assert sp.ndim == 1 and len(sp) > 0


def test_decode_stage_writes_kaldi_outputs(packed):
    root = packed["root"]
    tok_dir = root / "tokens"
    run("espnet2_speechlm.bin.dump_tokens", "--data_dir", str(packed["data"]), "--tokenizer_dir", str(root / "stok"),
        "--out_dir", str(tok_dir), "--nj", "1")
    out = root / "dec_asr"
    run("espnet2_speechlm.bin.decode", "--model_dir", str(packed["pack"]), "--task", "asr", "--data_dir", str(packed["data"]),
        "--token_scp", str(tok_dir / "tokens.scp"), "--out_dir", str(out), "--nj", "2")
    hyps = dict(line.split(" ", 1) if " " in line else (line, "") for line in (out / "text").read_text().splitlines())
    assert len(hyps) == 6 and hyps[packed["utt"]] == packed["text"]
    # running it again finds it complete and does nothing
    r = run("espnet2_speechlm.bin.decode", "--model_dir", str(packed["pack"]), "--task", "asr", "--data_dir", str(packed["data"]),
            "--token_scp", str(tok_dir / "tokens.scp"), "--out_dir", str(out), "--nj", "2")
    assert "already complete" in r.stderr
    # a model trained again into the same directory is decoded again (then the weights are put back)
    from safetensors.torch import load_file, save_file

    weights = packed["pack"] / "model.safetensors"
    original = weights.read_bytes()
    tensors = load_file(weights)
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 1e-3
    save_file(tensors, weights, metadata={"format": "pt"})
    try:
        r = run("espnet2_speechlm.bin.decode", "--model_dir", str(packed["pack"]), "--task", "asr", "--data_dir", str(packed["data"]),
                "--token_scp", str(tok_dir / "tokens.scp"), "--out_dir", str(out), "--nj", "2")
        assert "already complete" not in r.stderr and "2 to run" in r.stderr, r.stderr
    finally:
        weights.write_bytes(original)
    cfg = root / "tts.yaml"
    cfgmod.save(DecodeConfig(GenerationConfig(max_len=40, max_len_ratio=0.0)), cfg)
    out = root / "dec_tts"
    run("espnet2_speechlm.bin.decode", "--model_dir", str(packed["pack"]), "--task", "tts", "--data_dir", str(packed["data"]),
        "--token_scp", str(tok_dir / "tokens.scp"), "--out_dir", str(out), "--config", str(cfg), "--max_utts", "3",
        "--speaker_prompt", "same_speaker")
    lines = (out / "wav.scp").read_text().splitlines()
    assert len(lines) == 3
    for line in lines:
        utt, path = line.split(" ", 1)
        wav, sr = sf.read(path)
        assert sr == 16000 and len(wav) > 0
    toks = kaldiio.load_scp(str(out / "tokens.scp"))
    assert set(toks) == {line.split()[0] for line in lines}
    assert all(np.asarray(v).size % 9 == 0 for v in toks.values())


def test_bad_input(packed, tmp_path):
    import shutil

    lm = SpeechLM.from_pretrained(packed["pack"], device="cpu")
    with pytest.raises(ValueError, match="empty text"):
        lm.tts("   ")
    bad = tmp_path / "cfg.yaml"
    bad.write_text("generation: {max_len: 10}\ntop_k: 5\n")
    r = subprocess.run([PY, "-m", "espnet2_speechlm.bin.decode", "--model_dir", str(packed["pack"]), "--task", "tts",
                        "--data_dir", str(packed["data"]), "--out_dir", str(tmp_path / "o"), "--config", str(bad)],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "unknown key 'top_k'" in r.stderr
    broken = tmp_path / "broken"
    shutil.copytree(packed["pack"], broken)
    (broken / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        SpeechLM.from_pretrained(broken)


def test_tts_nbest_keeps_the_candidate_with_the_lowest_error(packed):
    """n-best TTS samples n candidates and keeps the one the caller's scorer
    rates lowest (bin/decode passes score.whisper.wer_scorer: the lowest WER)."""
    from espnet2_speechlm.infer.config import SamplingConfig

    lm = SpeechLM.from_pretrained(packed["pack"], device="cpu")
    s = SamplingConfig(temperature=1.0)
    cfg = DecodeConfig(GenerationConfig(semantic=s, acoustic=s, seed=1, min_len=20, max_len=40), nbest=3)
    with pytest.raises(ValueError, match="needs a scorer"):
        lm.tts_tokens([packed["text"]], cfg=cfg)
    chosen = {}
    for sign in (1.0, -1.0):  # the loudest, then the quietest candidate has the lowest "error"
        seen = []

        def scorer(wav, text):
            assert text == packed["text"]
            seen.append(float(np.abs(wav).sum()))
            return -sign * seen[-1]

        frames = lm.tts_tokens([packed["text"]], cfg=cfg, scorer=scorer)[0]
        assert len(seen) == 3 and len(set(seen)) == 3, seen  # three different candidates
        assert frames.shape[1] == 9 and 20 <= len(frames) <= 40
        chosen[sign] = float(np.abs(lm.decode_speech(frames)).sum())
        assert chosen[sign] == (max(seen) if sign > 0 else min(seen))
    assert chosen[1.0] != chosen[-1.0]  # the choice follows the scores, not the position
