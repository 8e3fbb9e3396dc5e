"""egs2/librispeech (the paper-scale recipe) runs end to end on a tiny stand-in.

Nothing is downloaded: a few espeak-ng utterances are laid out exactly as the
openslr LibriSpeech archives extract (``<part>/<spk>/<chapter>/*.flac`` and
``*.trans.txt``) and given to ``local/data.sh`` through ``--librispeech_dir``;
the base LLM is a tiny Hugging Face Llama (byte-level BPE tokenizer) saved to
a temp dir; the speech tokenizer is fitted with the offline back-ends instead
of XEUS / DAC.  The recipe's own configs are used for the chosen model size,
with only the sizes (batch, steps, lengths) switched by overrides, so the
DeepSpeed engine and its ZeRO JSON config run for real (one CPU process).
"""

import json
import re
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from espnet2_speechlm.tokenizers.testing import have_espeak
from recipe_helpers import ROOT, copy_recipe, sh

RECIPE = ROOT / "egs2" / "librispeech" / "speechlm1"
SIZES = ["smollm2_135m", "smollm2_360m", "smollm2_1.7b", "olmo2_7b"]
pytestmark = [pytest.mark.slow]
needs_espeak = pytest.mark.skipif(not have_espeak(), reason="needs espeak-ng (Debian)")

# (part, speaker id, espeak voice, utterances); chapters are speaker * 10
STAND_IN = [
    ("train-clean-100", 1001, "en-us", 8),
    ("train-clean-100", 1002, "en-gb", 8),
    ("train-clean-360", 1003, "en-us+f2", 6),
    ("train-other-500", 1004, "en-gb-scotland", 6),
    ("dev-clean", 2001, "en-us+m3", 3),
    ("dev-other", 2002, "en-gb+f4", 2),
    ("test-clean", 3001, "en-gb-x-rp", 3),
    ("test-other", 4001, "en-us+f5", 3),
]
TINY_ARGS = [
    "--nj", "1", "--inference_nj", "1",
    "--fit_speech_tokenizer_args",
    "--semantic mfcc --semantic_k 16 --acoustic mel_rvq --codebook_size 16 --epochs 2 --griffin_lim_iters 4",
    "--speaker_prompt_len", "50",
    "--decode_args", "--override generation.max_len=30 speaker_prompt_frames=50",
]
TRAIN_OVERRIDES = ("data.batch_bins=2048 data.pool_size=256 data.num_workers=1 engine.grad_accum=1 engine.threads=1 "
                   "checkpoint.every={n} log.every=1 log.progress_bar=false log.tensorboard=false log.plot=false")


def make_stand_in(root: Path) -> list[str]:
    """A LibriSpeech-layout corpus of espeak utterances; returns all the sentences."""
    from scipy.signal import resample_poly

    from espnet2_speechlm.tokenizers.testing import espeak_wav, sentences

    n = sum(c for *_, c in STAND_IN)
    texts = [" ".join(re.findall(r"[A-Z']+", s.upper())) for s in sentences(n, seed=3)]
    i = 0
    for part, spk, voice, count in STAND_IN:
        d = root / "LibriSpeech" / part / str(spk) / str(spk * 10)
        d.mkdir(parents=True)
        lines = []
        for k in range(count):
            utt = f"{spk}-{spk * 10}-{k:04d}"
            wav, sr = espeak_wav(texts[i].lower(), voice=voice)
            r = Fraction(16000, sr)  # LibriSpeech is 16 kHz FLAC
            wav = resample_poly(wav, r.numerator, r.denominator).astype(np.float32)
            sf.write(str(d / f"{utt}.flac"), np.clip(wav, -1, 1), 16000, format="FLAC")
            lines.append(f"{utt} {texts[i]}")
            i += 1
        (d / f"{spk}-{spk * 10}.trans.txt").write_text("\n".join(lines) + "\n")
    return texts


def make_tiny_llm(out: Path, texts: list[str], model_type: str = "llama") -> Path:
    """A tiny Hugging Face causal LM with a byte-level BPE tokenizer, saved like a released model."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts * 5, trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    fast.save_pretrained(out)
    conf = AutoConfig.for_model(model_type, vocab_size=len(fast), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                num_key_value_heads=2, intermediate_size=128, max_position_embeddings=2048,
                                tie_word_embeddings=True, eos_token_id=fast.eos_token_id, bos_token_id=fast.bos_token_id)
    AutoModelForCausalLM.from_config(conf).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory):
    if not have_espeak():
        pytest.skip("needs espeak-ng (Debian)")
    root = tmp_path_factory.mktemp("libri_stand_in")
    texts = make_stand_in(root / "corpus")
    return root, root / "corpus" / "LibriSpeech", texts


@pytest.fixture(scope="module")
def recipe(stand_in):
    root, libri, texts = stand_in
    llm = make_tiny_llm(root / "SmolLM2-tiny", texts)
    d = copy_recipe(RECIPE, root / "librispeech" / "speechlm1")
    r = sh(d, "./run.sh", "--model_size", "smollm2_135m", "--base_llm", str(llm), "--librispeech_dir", str(libri),
           *TINY_ARGS,
           "--train_args", TRAIN_OVERRIDES.format(n=4) + " schedule.warmup_steps=1 schedule.total_steps=4",
           "--anneal_args", TRAIN_OVERRIDES.format(n=2) + " schedule.total_steps=2")
    return d, llm, r


def train_config(run_dir: Path) -> dict:
    import yaml

    latest = sorted((run_dir / "checkpoints").glob("step_*"))[-1]
    return yaml.safe_load((latest / "train_config.yaml").read_text())


@needs_espeak
def test_all_stages_run_on_the_stand_in(recipe):
    d, llm, r = recipe
    assert "Successfully finished" in r.stderr
    for stage in range(1, 12):
        assert f"Stage {stage}:" in r.stderr, stage
    assert "(no download)" in r.stderr
    # local/data.sh's layout: the union of the train parts, and every eval part
    for s, n in [("train_960", 28), ("dev_clean", 3), ("dev_other", 2), ("test_clean", 3), ("test_other", 3)]:
        assert len((d / "data" / s / "text").read_text().splitlines()) == n, s
    assert (d / "data/test_other/wav.scp").read_text().split()[1].endswith(".flac")
    exp = d / "exp" / "smollm2_135m"
    # the size's own configs ran: DeepSpeed ZeRO-1 with its JSON, the paper's optimiser, from the base LLM
    for run, init in (("speechlm", "llm"), ("speechlm_anneal", "pretrained")):
        c = train_config(exp / run)
        assert c["engine"]["name"] == "deepspeed" and c["engine"]["zero_stage"] == 1, run
        assert c["engine"]["deepspeed_config"] == "conf/deepspeed_zero1.json" and c["engine"]["precision"] == "bf16"
        assert c["optim"]["lr"] == 2e-4 and c["optim"]["weight_decay"] == 3e-7 and c["model"]["init"] == init
    assert train_config(exp / "speechlm")["model"]["llm_dir"] == str(llm)
    assert train_config(exp / "speechlm_anneal")["schedule"]["name"] == "linear_to_zero"
    # the vocabulary's text block is the base LLM's tokenizer (300 ids)
    v = json.loads((d / "dump/smollm2_135m/vocab.json").read_text())
    assert "300" in json.dumps(v) and v == json.loads((exp / "packed/vocab.json").read_text())
    table = (d / "RESULTS.md").read_text()
    for task, test_set in [("asr", "test_clean"), ("asr", "test_other"), ("tts", "test_clean"), ("tts", "test_other")]:
        assert re.search(rf"\| {task} \| {test_set} \| WER \(%\) \| [0-9.]+ \| 3 \| speechlm_anneal \|", table), table
    assert "perplexity_ratio_to_base" in table and "tts_real_audio" in table
    from espnet2_speechlm.infer.api import SpeechLM

    lm = SpeechLM.from_pretrained(exp / "packed", device="cpu")
    assert isinstance(lm.asr((d / "data/test_clean/wav.scp").read_text().split()[1]), str)


@needs_espeak
def test_olmo2_7b_configs_run_zero3(recipe, stand_in):
    """The 7B configs (ZeRO-3, lr 1e-4) train and anneal an OLMo-2 body on the same task sequences."""
    d, _, _ = recipe
    root, _, texts = stand_in
    olmo = make_tiny_llm(root / "OLMo2-tiny", texts, model_type="olmo2")  # same texts: the same tokenizer
    r = sh(d, "./run.sh", "--model_size", "olmo2_7b", "--base_llm", str(olmo), "--stage", "7", "--stop_stage", "8",
           "--dumpdir", "dump/smollm2_135m", "--speech_tokenizer", "exp/smollm2_135m/speech_tokenizer",
           "--train_args", TRAIN_OVERRIDES.format(n=2) + " schedule.warmup_steps=1 schedule.total_steps=2",
           "--anneal_args", TRAIN_OVERRIDES.format(n=1) + " schedule.total_steps=1")
    assert "Successfully finished" in r.stderr
    exp = d / "exp" / "olmo2_7b"
    for run in ("speechlm", "speechlm_anneal"):
        c = train_config(exp / run)
        assert c["engine"]["zero_stage"] == 3 and c["engine"]["deepspeed_config"] == "conf/deepspeed_zero3.json", run
        assert c["optim"]["lr"] == 1e-4
    model = sorted((exp / "speechlm_anneal/checkpoints").glob("step_*"))[-1] / "model"
    assert json.loads((model / "config.json").read_text())["model_type"] == "olmo2"


@pytest.mark.parametrize("size", SIZES)
def test_size_configs_have_the_paper_settings(size):
    from espnet2_speechlm.train.config import load

    c = load(RECIPE / "conf" / size / "train.yaml")
    a = load(RECIPE / "conf" / size / "anneal.yaml")
    lr = 1e-4 if size == "olmo2_7b" else 2e-4
    zero = 3 if size == "olmo2_7b" else 1
    for cfg in (c, a):
        assert cfg.optim.lr == lr and cfg.optim.betas == (0.9, 0.95) and cfg.optim.weight_decay == 3e-7
        assert cfg.optim.clip == 1.0 and cfg.engine.precision == "bf16" and cfg.data.batch_bins == 1048576
        assert cfg.engine.name == "deepspeed" and cfg.engine.zero_stage == zero
        ds = json.loads((RECIPE / cfg.engine.deepspeed_config).read_text())
        assert ds["zero_optimization"]["stage"] == zero
    assert c.schedule.name == "warmup_cosine" and c.schedule.warmup_steps == 2000 and c.schedule.min_lr_ratio == 0.3
    lw = c.model.speechlm.loss_weights
    assert (lw.text, lw.semantic, lw.acoustic, lw.special) == (1.0, 0.5, 0.0625, 1.0)
    assert a.schedule.name == "linear_to_zero" and a.schedule.warmup_steps == 0


def test_decode_configs_are_the_released_defaults():
    from espnet2_speechlm import config as cfgmod
    from espnet2_speechlm.infer.api import DecodeConfig

    asr = cfgmod.load(DecodeConfig, RECIPE / "conf" / "decode_asr.yaml")
    tts = cfgmod.load(DecodeConfig, RECIPE / "conf" / "decode_tts.yaml")
    assert asr.generation.text.greedy
    assert tts.generation.semantic.top_k == 30 and tts.generation.semantic.temperature == 0.8
    assert tts.generation.acoustic.top_k == 30 and tts.generation.acoustic.temperature == 0.8


def test_run_sh_refuses_unknown_size_and_missing_base_llm(tmp_path):
    d = copy_recipe(RECIPE, tmp_path / "r")
    r = sh(d, "./run.sh", "--model_size", "gpt5", "--base_llm", str(tmp_path), check=False)
    assert r.returncode != 0 and "unknown --model_size gpt5" in r.stderr
    r = sh(d, "./run.sh", "--model_size", "smollm2_135m", "--base_llm", str(tmp_path / "nope"), check=False)
    assert r.returncode != 0 and "--base_llm must be a local Hugging Face model directory" in r.stderr
    (tmp_path / "llm").mkdir()
    (tmp_path / "llm" / "config.json").write_text("{}")
    r = sh(d, "./run.sh", "--model_size", "olmo2_7b", "--base_llm", str(tmp_path / "llm"), "--xeus_model", "/nope/x.pth",
           check=False)
    assert r.returncode != 0 and "not found: give the released XEUS" in r.stderr


@needs_espeak
@pytest.mark.parametrize("breakage", ["no_text", "missing_flac", "extra_flac"])
def test_bad_transcripts_name_file_and_line(stand_in, tmp_path, breakage):
    import shutil

    _, libri, _ = stand_in
    bad = tmp_path / "LibriSpeech"
    shutil.copytree(libri, bad)
    chapter = bad / "test-clean" / "3001" / "30010"
    trans = chapter / "3001-30010.trans.txt"
    lines = trans.read_text().splitlines()
    if breakage == "no_text":
        lines[1] = lines[1].split(" ", 1)[0]
        want = [f"{trans}: line 2", "expected '<utterance id> <transcript>'"]
    elif breakage == "missing_flac":
        (chapter / "3001-30010-0002.flac").unlink()
        want = [f"{trans}: line 3", "not found"]
    else:
        shutil.copy(chapter / "3001-30010-0000.flac", chapter / "3001-30010-0009.flac")
        want = ["3001-30010-0009.flac: no transcript in"]
    trans.write_text("\n".join(lines) + "\n")
    d = copy_recipe(RECIPE, tmp_path / "r")
    r = sh(d, "local/data.sh", "--librispeech_dir", str(bad), check=False)
    assert r.returncode != 0
    for w in want:
        assert w in r.stderr, r.stderr
    assert not (d / "data" / "test_clean").exists()


def test_no_download_without_permission(tmp_path):
    d = copy_recipe(RECIPE, tmp_path / "r")
    r = sh(d, "local/data.sh", "--download", "false", check=False)
    assert r.returncode != 0 and "is missing and --download is false" in r.stderr


@needs_espeak
def test_download_path_against_a_local_mirror(stand_in, tmp_path):
    """local/data.sh's download, extraction and skip logic, served by a local HTTP mirror (never openslr)."""
    import functools
    import http.server
    import tarfile
    import threading

    _, libri, _ = stand_in
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for part in ("train-clean-100", "test-clean"):
        with tarfile.open(mirror / f"{part}.tar.gz", "w:gz") as t:
            t.add(libri / part, arcname=f"LibriSpeech/{part}")
    (mirror / "dev-clean.tar.gz").write_bytes((mirror / "test-clean.tar.gz").read_bytes()[:2000])  # cut short
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(mirror))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        d = copy_recipe(RECIPE, tmp_path / "r")
        opts = ["--url_base", url, "--train_parts", "train-clean-100", "--eval_parts", "test-clean"]
        r = sh(d, "local/data.sh", *opts)
        assert "downloading" in r.stderr and (d / "downloads/LibriSpeech/test-clean/.complete").exists()
        assert len((d / "data/train_960/text").read_text().splitlines()) == 16
        assert len((d / "data/test_clean/text").read_text().splitlines()) == 3
        r = sh(d, "local/data.sh", *opts)
        assert "downloading" not in r.stderr and "test-clean: already extracted" in r.stderr
        r = sh(d, "local/data.sh", "--url_base", url, "--train_parts", "train-clean-100", "--eval_parts", "dev-clean",
               check=False)
        assert r.returncode != 0 and "extracting downloads/dev-clean.tar.gz failed" in r.stderr, r.stderr[-2000:]
        assert not (d / "downloads/LibriSpeech/dev-clean/.complete").exists()
    finally:
        server.shutdown()
