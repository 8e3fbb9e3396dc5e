"""speechlm.sh stages run alone on small hand-made inputs: what a rerun may and may not do.

* a stage 7 that failed before its first checkpoint does not block the next
  run with other settings (a run that has checkpoints still does:
  test_recipe_mini);
* the BPE of stage 3 has byte fallback by default;
* stage 3 refuses to fit a tokenizer again, with other options, under a model
  trained on its ids;
* the template's paper-scale config without a text LLM stops stage 7 saying
  what to pass, before the training directory is touched.
"""

import pytest

from espnet2_speechlm.tokenizers.testing import have_espeak, make_espeak_data_dir
from recipe_helpers import ROOT, copy_recipe, sh

pytestmark = pytest.mark.skipif(not have_espeak(), reason="needs espeak-ng (Debian)")
TOK_ARGS = "--semantic mfcc --semantic_k 8 --acoustic mel_rvq --codebook_size 8 --epochs 2 --griffin_lim_iters 2"
TRAIN_YAML = """seed: 0
data: {batch_bins: 800, num_workers: 0, pool_size: 16}
model:
  init: random
  hf_config: {model_type: llama, hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2,
              num_key_value_heads: 2, intermediate_size: 64, max_position_embeddings: 512}
optim: {lr: LR}
schedule: {name: warmup_cosine, warmup_steps: 1, total_steps: 2}
engine: {name: single}
checkpoint: {every: 1, keep: 1}
log: {every: 1, tensorboard: false, plot: false, progress_bar: false}
"""


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    """A recipe directory with stage 2's output (dump/raw/train) made by hand from espeak speech."""
    d = copy_recipe(ROOT / "egs2" / "mini_espeak" / "speechlm1", tmp_path_factory.mktemp("guards") / "speechlm1")
    make_espeak_data_dir(d / "dump" / "raw" / "train", n=6, seed=5)
    return d


def stage(d, n, *args, check=True):
    return sh(d, "./speechlm.sh", "--stage", str(n), "--stop_stage", str(n), *args, check=check)


def test_a_failed_start_of_training_does_not_block_the_next_run(tmp_path):
    d = copy_recipe(ROOT / "egs2" / "mini_espeak" / "speechlm1", tmp_path / "r")
    for lr in ("1.0e-3", "2.0e-3"):
        (d / "conf" / f"lr{lr}.yaml").write_text(TRAIN_YAML.replace("LR", lr))
    # no spliced data yet: the trainer stops after making exp/speechlm/checkpoints
    r = stage(d, 7, "--train_config", "conf/lr1.0e-3.yaml", "--expdir", "exp", check=False)
    assert r.returncode != 0 and "dump/splice/train_asr" in r.stderr, r.stderr[-2000:]
    assert (d / "exp/speechlm/checkpoints").is_dir() and not any((d / "exp/speechlm/checkpoints").iterdir())
    # the user fixes the config and runs again: not refused as "a run begun with other settings"
    r = stage(d, 7, "--train_config", "conf/lr2.0e-3.yaml", "--expdir", "exp", check=False)
    assert "holds a training run begun with other settings" not in r.stderr, r.stderr[-2000:]
    assert r.returncode != 0 and "dump/splice/train_asr" in r.stderr  # the trainer ran, and met the same missing data


def test_stage_3_fits_a_bpe_with_byte_fallback_by_default(recipe):
    from espnet2_speechlm.tokenizers.text import load_text_tokenizer

    d = recipe
    stok = d / "given_speech_tokenizer"
    sh(d, "-c", f". ./path.sh && python -m espnet2_speechlm.bin.fit_speech_tokenizer --data_dir dump/raw/train "
                        f"--out_dir {stok} {TOK_ARGS}")
    stage(d, 3, "--speech_tokenizer", str(stok), "--expdir", "exp_bpe")
    tok = load_text_tokenizer(d / "exp_bpe/text_tokenizer/bpe.model")
    text = "quixotic façade, 2024 ÆØÅ"  # characters the espeak sentences never have
    assert tok.decode(tok.encode(text)) == text


def test_stage_3_refuses_to_refit_a_tokenizer_under_a_trained_model(recipe):
    from espnet2_speechlm.model.build import random_body
    from espnet2_speechlm.vocab import JointVocab

    d = recipe
    args = ["--expdir", "exp_refit", "--bpe_vocab_size", "400"]
    stage(d, 3, "--fit_speech_tokenizer_args", TOK_ARGS, *args)
    fitted = d / "exp_refit/speech_tokenizer/tokenizer.json"
    before = fitted.read_bytes()
    # other options but no model yet: fitted again, as asked
    other = TOK_ARGS.replace("--semantic_k 8", "--semantic_k 6")
    stage(d, 3, "--fit_speech_tokenizer_args", other, *args)
    assert fitted.read_bytes() != before
    stage(d, 3, "--fit_speech_tokenizer_args", TOK_ARGS, *args)
    before = fitted.read_bytes()
    # a model trained on the tokenizer's ids (here: a packed model of its vocabulary)
    vocab = JointVocab.build({"semantic": 8, "acoustic": 8 * 8, "text": 400}, num_codebooks=8)
    body = dict(model_type="llama", hidden_size=16, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                intermediate_size=32, max_position_embeddings=64)
    random_body(body, vocab).save_pretrained(d / "exp_refit/packed")
    # the user forgets --fit_speech_tokenizer_args: the default options would fit another tokenizer
    r = stage(d, 3, *args, check=False)
    assert r.returncode != 0, r.stderr[-2000:]
    assert f"exp_refit/speech_tokenizer/tokenizer.json was fitted with other options (--fit_speech_tokenizer_args '{TOK_ARGS}')" in r.stderr
    assert "models trained on its ids exist: exp_refit/packed" in r.stderr, r.stderr[-2000:]
    assert fitted.read_bytes() == before
    # the options it was fitted with: nothing to do
    r = stage(d, 3, "--fit_speech_tokenizer_args", TOK_ARGS, *args)
    assert "speech tokenizer: already fitted" in r.stderr and fitted.read_bytes() == before
    # the BPE is guarded the same way
    r = stage(d, 3, "--fit_speech_tokenizer_args", TOK_ARGS, *args[:2], "--bpe_vocab_size", "420", check=False)
    assert r.returncode != 0 and "exp_refit/text_tokenizer/bpe.model was fitted with other options" in r.stderr


def test_the_template_config_without_a_text_llm_says_what_to_pass(tmp_path):
    new = tmp_path / "my_corpus" / "speechlm1"
    sh(ROOT, str(ROOT / "egs2/TEMPLATE/speechlm1/setup.sh"), str(new))
    r = stage(new, 7, "--train_config", "conf/train_speechlm.yaml", check=False)
    assert r.returncode != 0
    err = r.stderr
    assert "conf/train_speechlm.yaml starts the speech LM from a text LLM (model.init: llm)" in err, err[-2000:]
    assert "model.llm_dir exp/text_llm holds no config.json" in err
    assert "--base_llm DIR" in err and "--text_llm_config CONF --lm_text TEXT" in err and "model.init: random" in err
    assert not (new / "exp" / "speechlm").exists()  # nothing to block the next run
    # a --base_llm that is not a model directory is named the same way
    r = stage(new, 7, "--train_config", "conf/train_speechlm.yaml", "--base_llm", str(tmp_path / "SmolLM2"), check=False)
    assert r.returncode != 0 and f"model.llm_dir {tmp_path / 'SmolLM2'} holds no config.json" in r.stderr
