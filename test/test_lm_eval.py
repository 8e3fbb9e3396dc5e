"""lm-evaluation-harness runs the speech LM on a local multiple-choice task
(the MMLU protocol), offline, through the real lm_eval command line."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

lm_eval = pytest.importorskip("lm_eval")


def test_lm_eval_local_multiple_choice_task(tmp_path):
    import sentencepiece as spm

    from espnet2_speechlm.infer.api import SpeechLM, pack
    from espnet2_speechlm.model.build import random_body
    from espnet2_speechlm.eval.text_ability import MCItem, multiple_choice_accuracy
    from espnet2_speechlm.tokenizers.text import load_text_tokenizer
    from espnet2_speechlm.vocab import JointVocab

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"the capital of country {i} is city {i * 7 % 11}" for i in range(200)) + "\n")
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / "bpe"), vocab_size=60, model_type="bpe",
                                   bos_id=-1, eos_id=-1, unk_id=0, num_threads=1, minloglevel=2)
    tok = load_text_tokenizer(tmp_path / "bpe.model")
    vocab = JointVocab.build({"semantic": 8, "acoustic": 8 * 4, "text": tok.vocab_size})
    torch.manual_seed(0)
    model = random_body(dict(model_type="llama", hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, intermediate_size=64, max_position_embeddings=256), vocab)
    model.save_pretrained(tmp_path / "model")
    pack(tmp_path / "model", tmp_path / "packed", tmp_path / "bpe.model")

    items = [{"question": f"the capital of country {i} is", "choices": [f" city {j}" for j in (1, 2, 3, 4)], "answer": i % 4}
             for i in range(6)]
    (tmp_path / "mc.jsonl").write_text("".join(json.dumps(x) + "\n" for x in items))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "tiny_mc.yaml").write_text(f"""task: tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {tmp_path / 'mc.jsonl'}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
""")
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "hfcache")}
    r = subprocess.run([sys.executable, "-m", "espnet2_speechlm.bin.lm_eval", "--model", "espnet2_speechlm",
                        "--model_args", f"pretrained={tmp_path / 'packed'}", "--tasks", "tiny_mc", "--include_path", str(tasks),
                        "--output_path", str(tmp_path / "out"), "--log_samples"], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    res = [json.loads(p.read_text()) for p in (tmp_path / "out").rglob("results_*.json")]
    acc = res[0]["results"]["tiny_mc"]["acc,none"]
    # the harness's accuracy equals our own log-likelihood multiple choice on the same items
    lm = SpeechLM.from_pretrained(tmp_path / "packed")
    ours = multiple_choice_accuracy(lm.model, tok, [MCItem(x["question"], x["choices"], x["answer"]) for x in items])
    assert acc == pytest.approx(ours["accuracy"])
    samples = [json.loads(line) for p in (tmp_path / "out").rglob("samples_tiny_mc*.jsonl") for line in p.read_text().splitlines()]
    assert len(samples) == 6
    assert [int(np.argmax([float(x[0][0]) for x in s["resps"]])) for s in sorted(samples, key=lambda s: s["doc_id"])] == ours["predictions"]
