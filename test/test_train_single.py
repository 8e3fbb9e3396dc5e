"""The trainer on one process: exact resume after a kill or a signal, annealing, reporting, bad input."""

import json
import os
import signal
import subprocess
import time

import pytest
import torch
from train_helpers import PY, REPO, TINY_BODY, final_weights, history, make_data_dirs, run_train, train_yaml

from espnet2_speechlm.config import ConfigError
from espnet2_speechlm.data.loader import DataError
from espnet2_speechlm.train import config as tc
from espnet2_speechlm.train.trainer import NonFiniteLoss, train
from espnet2_speechlm.vocab import VocabError

TOTAL = 30
OVER = {"schedule.total_steps": TOTAL, "checkpoint.every": 3, "checkpoint.keep": 2, "checkpoint.average_last": 2}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    return root, make_data_dirs(root, tasks=("asr", "tts"), n_utt=24)


@pytest.fixture(scope="module")
def reference(data):
    """One uninterrupted run, with validation, TensorBoard and the loss plot on."""
    root, dirs = data
    exp = root / "ref"
    cfg = train_yaml(root / "ref.yaml", exp, dirs, **OVER, **{"data.valid": [str(dirs["asr"])], "log.tensorboard": True, "log.plot": True})
    r = run_train(cfg)
    assert r.returncode == 0, r.stderr[-3000:]
    return exp, cfg, r


def _popen(cfg):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.Popen([PY, "-m", "espnet2_speechlm.bin.train", "--config", str(cfg)], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_checkpoint(exp, proc, timeout=120):
    t0 = time.time()
    while not (exp / "checkpoints" / "latest").exists():
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.time() - t0 < timeout
        time.sleep(0.005)


def _assert_same_run(exp, ref):
    a = [(r["step"], r["loss"], r["lr"], r["grad_norm"]) for r in history(ref)]
    b = [(r["step"], r["loss"], r["lr"], r["grad_norm"]) for r in history(exp)]
    assert [s for s, *_ in b] == list(range(1, TOTAL + 1))
    assert a == b  # bitwise: fp32 on CPU
    wa, wb = final_weights(ref), final_weights(exp)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_reference_run_reports(reference):
    exp, _, r = reference
    h = history(exp)
    assert len(h) == TOTAL and h[-1]["loss"] < h[0]["loss"]
    for key in ("loss_text", "loss_semantic", "loss_acoustic", "acc_stream0", "acc_stream8", "lr", "grad_norm", "frames_per_s", "tokens_per_s", "padding_fraction", "memory_mb"):
        assert key in h[-1], key
    v = history(exp, "valid")
    assert [x["step"] for x in v] == list(range(3, TOTAL + 1, 3)) and all(x["set"] == "splice_asr" for x in v)
    assert "| loss_text" in r.stderr and "valid splice_asr" in r.stderr
    assert (exp / "loss.png").stat().st_size > 1000
    assert list((exp / "log" / "tensorboard").glob("events.out.tfevents.*"))
    ck = sorted(p.name for p in (exp / "checkpoints").iterdir())
    assert ck == ["latest", f"step_{TOTAL - 3:08d}", f"step_{TOTAL:08d}"]  # the last 2 kept, no temporaries
    from espnet2_speechlm.model import MultiStreamLM

    m = MultiStreamLM.from_pretrained(exp / "checkpoints" / f"step_{TOTAL:08d}" / "model")
    assert (exp / "checkpoints" / f"step_{TOTAL:08d}" / "model" / "train_config.yaml").exists()
    w = final_weights(exp)
    assert torch.equal(m.state_dict()["lm.lm_head.weight"], w["lm.lm_head.weight"])
    # averaged last 2 checkpoints
    from safetensors.torch import load_file

    avg = load_file(str(exp / "model_avg" / "model.safetensors"))
    prev = load_file(str(exp / "checkpoints" / f"step_{TOTAL - 3:08d}" / "model" / "model.safetensors"))
    torch.testing.assert_close(avg["lm.lm_head.weight"], (w["lm.lm_head.weight"] + prev["lm.lm_head.weight"]) / 2)
    from espnet2_speechlm.bin.average_checkpoints import main as average_main

    assert average_main(["--exp", str(exp), "--last", "2", "--out", str(exp / "avg_cli")]) == 0
    cli = load_file(str(exp / "avg_cli" / "model.safetensors"))
    assert all(torch.equal(cli[k], avg[k]) for k in avg)
    MultiStreamLM.from_pretrained(exp / "avg_cli")


def test_kill9_and_resume_equals_uninterrupted(data, reference):
    root, dirs = data
    exp = root / "kill9"
    cfg = train_yaml(root / "kill9.yaml", exp, dirs, **OVER, **{"data.valid": [str(dirs["asr"])]})
    p = _popen(cfg)
    _wait_for_checkpoint(exp, p)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert p.returncode == -signal.SIGKILL
    st = json.loads((exp / "checkpoints" / (exp / "checkpoints" / "latest").read_text().strip() / "trainer_state.json").read_text())
    assert st["step"] < TOTAL
    r = run_train(cfg)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"resuming from {exp}/checkpoints/step_{st['step']:08d}" in r.stderr
    _assert_same_run(exp, reference[0])


def test_sigterm_writes_a_checkpoint_and_resume_equals_uninterrupted(data, reference):
    root, dirs = data
    exp = root / "term"
    cfg = train_yaml(root / "term.yaml", exp, dirs, **OVER, **{"data.valid": [str(dirs["asr"])]})
    p = _popen(cfg)
    _wait_for_checkpoint(exp, p)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 0, err[-3000:]
    assert "stopped at step" in err and "(signal 15)" in err
    latest = (exp / "checkpoints" / "latest").read_text().strip()
    st = json.loads((exp / "checkpoints" / latest / "trainer_state.json").read_text())
    assert 3 <= st["step"] < TOTAL and latest == f"step_{st['step']:08d}"
    r = run_train(cfg)
    assert r.returncode == 0, r.stderr[-3000:]
    _assert_same_run(exp, reference[0])


def test_stop_after_validates_a_scheduled_checkpoint_only(data, reference):
    """stop_after on a checkpoint step (every 3) validates there as an uninterrupted run
    would; stopping between checkpoint steps saves an extra checkpoint without validating."""
    root, dirs = data
    exp = root / "stop"
    cfg = train_yaml(root / "stop.yaml", exp, dirs, **OVER, **{"data.valid": [str(dirs["asr"])]})
    for n, last in ((4, 4), (2, 6)):
        r = run_train(cfg, f"stop_after={n}")
        assert r.returncode == 0 and f"stopped at step {last}" in r.stderr, r.stderr[-3000:]
    assert [v["step"] for v in history(exp, "valid")] == [3, 6]
    ref = {v["step"]: v["loss"] for v in history(reference[0], "valid")}
    assert history(exp, "valid")[-1]["loss"] == ref[6]


def test_annealing_starts_from_checkpoint_and_ends_at_lr_zero(data, reference):
    root, dirs = data
    src = reference[0] / "checkpoints" / f"step_{TOTAL:08d}"
    # weights come from the checkpoint: with a zero learning rate they stay exactly the same
    exp0 = root / "anneal0"
    cfg = train_yaml(root / "anneal0.yaml", exp0, {"asr": dirs["asr"]}, **{
        "init_from.checkpoint": str(reference[0] / "checkpoints"), "schedule.name": "linear_to_zero", "schedule.total_steps": 1, "schedule.warmup_steps": 0, "optim.lr": 0.0,
    })
    cfg_ = tc.load(cfg)
    train(cfg_)
    w0, ws = final_weights(exp0), final_weights(reference[0])
    assert all(torch.equal(w0[k], ws[k]) for k in ws)
    # a new mixture, lr decayed linearly to 0 over K steps
    exp = root / "anneal"
    K, peak = 4, 1e-3
    cfg = train_yaml(root / "anneal.yaml", exp, {"asr": dirs["asr"]}, **{
        "init_from.checkpoint": str(src), "init_from.load_optimizer": True, "schedule.name": "linear_to_zero",
        "schedule.total_steps": K, "schedule.warmup_steps": 0, "optim.lr": peak, "checkpoint.every": 100,
    })
    cfg_ = tc.load(cfg)
    cfg_.data.train[0].ratio = 0.5
    out = train(cfg_)
    lrs = [r["lr"] for r in history(exp)]
    assert lrs == pytest.approx([peak * (K - i) / K for i in range(K)])
    assert out["final_lr"] == 0.0
    st = json.loads((exp / "checkpoints" / f"step_{K:08d}" / "trainer_state.json").read_text())
    assert st["next_lr"] == 0.0
    assert all(g["lr"] == 0.0 for g in out["engine"].optimizer.param_groups)


def _cfg(root, dirs, name, **over):
    return tc.load(train_yaml(root / f"{name}.yaml", root / name, dirs, **over))


def test_bad_input_gives_clear_errors(data, tmp_path):
    root, dirs = data
    with pytest.raises(DataError, match="data list is empty"):
        train(_cfg(root, {}, "empty"))
    body = dict(TINY_BODY, max_position_embeddings=40)
    with pytest.raises(DataError, match=r"splice_asr/examples.jsonl:\d+: example 'spk.*longer than the model's context of 40"):
        train(_cfg(root, dirs, "ctx", **{"model.hf_config": body}))
    with pytest.raises(FileNotFoundError, match=f"checkpoint not found: {tmp_path}/nope"):
        train(_cfg(root, dirs, "missing", **{"init_from.checkpoint": str(tmp_path / "nope")}))
    # a checkpoint made for another vocabulary
    from espnet2_speechlm.model.build import random_body
    from espnet2_speechlm.vocab import JointVocab

    other = JointVocab.build({"semantic": 50, "acoustic": 8 * 16, "text": 120}, num_codebooks=8)
    random_body(dict(TINY_BODY), other).save_pretrained(tmp_path / "other")
    with pytest.raises(VocabError, match=r"vocabulary does not match the checkpoint .*text: \(434, 100\) vs \(434, 120\)"):
        train(_cfg(root, dirs, "othervocab", **{"init_from.checkpoint": str(tmp_path / "other")}))
    with pytest.raises(Exception, match=f"{tmp_path}/nodev: not a data directory"):
        train(_cfg(root, dirs, "nodev", **{"data.valid": [str(tmp_path / "nodev")]}))
    with pytest.raises(ConfigError, match="unknown key 'lrr'"):
        _cfg(root, dirs, "typo", **{"optim.lrr": 1.0})
    r = run_train(train_yaml(root / "typo2.yaml", root / "typo2", dirs), "engine.zero_stag=3")
    assert r.returncode == 2 and "unknown key 'zero_stag'" in r.stderr


def test_nan_loss_is_reported_and_skipped_or_stops(data):
    root, dirs = data
    over = {"model.speechlm": {"loss_weights": {"text": float("nan")}}, "schedule.total_steps": 2, "checkpoint.every": 100}
    with pytest.raises(NonFiniteLoss, match=r"non-finite loss at step 1 .*batch ids \['splice_"):
        train(_cfg(root, {"asr": dirs["asr"]}, "nanstop", **over))
    out = train(_cfg(root, {"asr": dirs["asr"]}, "nanskip", nan_policy="skip", **over))
    st = json.loads((root / "nanskip" / "checkpoints" / f"step_{2:08d}" / "trainer_state.json").read_text())
    assert out["step"] == 2 and st["counters"]["steps_skipped"] == 2
    init = _cfg(root, {"asr": dirs["asr"]}, "x")
    from espnet2_speechlm.model.build import random_body

    fresh = random_body(dict(TINY_BODY), out["model"].vocab, seed=init.seed)
    w = final_weights(root / "nanskip")
    assert torch.equal(w["lm.lm_head.weight"], fresh.state_dict()["lm.lm_head.weight"])  # no update was applied


def test_example_configs_load():
    from train_helpers import REPO

    conf = REPO / "egs2" / "TEMPLATE" / "speechlm1" / "conf"
    tr = tc.load(conf / "train_speechlm.yaml")
    an = tc.load(conf / "anneal_speechlm.yaml", ["engine.zero_stage=3"])
    assert tr.schedule.name == "warmup_cosine" and tr.optim.betas == (0.9, 0.95) and len(tr.data.train) == 4
    assert an.schedule.name == "linear_to_zero" and an.init_from.checkpoint and an.engine.zero_stage == 3
    for f in ("deepspeed_zero2.json", "deepspeed_zero3.json"):
        assert json.loads((conf / f).read_text())["zero_optimization"]["stage"] in (2, 3)
    with pytest.raises(ConfigError, match=r"data.train\[1\]: unknown key 'ratoi'"):
        tc.load(conf / "train_speechlm.yaml", ["data.train=[{dir: a}, {dir: b, ratoi: 1}]"])


def test_engine_options_activation_checkpointing_bf16_packing(data):
    root, dirs = data
    over = {"schedule.total_steps": 3, "checkpoint.every": 100, "checkpoint.export": False}
    base = train(_cfg(root, dirs, "opt_base", **over))
    assert base["step"] == 3
    ref = [r["loss"] for r in history(root / "opt_base")]
    train(_cfg(root, dirs, "opt_ckpt", **over, **{"engine.activation_checkpointing": True}))
    assert [r["loss"] for r in history(root / "opt_ckpt")] == pytest.approx(ref, rel=1e-6)
    train(_cfg(root, dirs, "opt_bf16", **over, **{"engine.precision": "bf16"}))
    assert [r["loss"] for r in history(root / "opt_bf16")] == pytest.approx(ref, rel=5e-2)
    train(_cfg(root, dirs, "opt_pack", **over, **{"data.packing": True, "data.pack_len": 400}))
    h = history(root / "opt_pack")
    assert len(h) == 3 and all(r["loss"] == r["loss"] and r["padding_fraction"] < 0.2 for r in h)
    # the auxiliary CTC loss of the ASR examples is logged and added to the loss
    train(_cfg(root, dirs, "opt_ctc", **over, **{"model.speechlm.ctc_weight": 0.5}))
    h = history(root / "opt_ctc")
    assert all(r["loss_ctc"] > 0 for r in h) and "loss_ctc" not in history(root / "opt_base")[0]
    assert h[0]["loss"] > ref[0]


def test_train_and_save_pretrained_leave_their_configs_as_they_were(data, tmp_path):
    """Packing without pack_len, activation checkpointing and the model's own
    config used to be written into the caller's objects."""
    import copy

    root, dirs = data
    cfg = _cfg(root, dirs, "nomut", **{"schedule.total_steps": 1, "checkpoint.every": 1, "data.packing": True,
                                       "engine.activation_checkpointing": True})
    before = copy.deepcopy(cfg)
    out = train(cfg)
    assert cfg == before and cfg.data.pack_len == 0 and not cfg.model.speechlm.gradient_checkpointing
    model = out["model"]
    assert model.lm.is_activation_checkpointing  # applied by the engine, not recorded in the model's config
    model.cfg.vocab_fingerprint = ""
    mc = copy.deepcopy(model.cfg)
    model.save_pretrained(tmp_path / "m")
    assert model.cfg == mc
    from espnet2_speechlm import config as cfgmod

    saved = cfgmod.load(type(mc), tmp_path / "m" / "speechlm.yaml")
    assert saved.vocab_fingerprint == model.vocab.fingerprint() and not saved.gradient_checkpointing


def test_init_from_text_llm_and_pretrained(data, reference, tmp_path):
    """model.init=llm goes through from_text_llm (a saved Hugging Face body), init=pretrained through from_pretrained."""
    from transformers import AutoConfig, AutoModelForCausalLM

    root, dirs = data
    body = dict(TINY_BODY)
    conf = AutoConfig.for_model(body.pop("model_type"), vocab_size=100, **body)
    AutoModelForCausalLM.from_config(conf).save_pretrained(tmp_path / "llm")
    over = {"schedule.total_steps": 1, "checkpoint.every": 100}
    out = train(_cfg(root, dirs, "init_llm", **over, **{"model.init": "llm", "model.llm_dir": str(tmp_path / "llm")}))
    assert out["step"] == 1 and history(root / "init_llm")[0]["loss"] > 0
    src = reference[0] / "checkpoints" / f"step_{TOTAL:08d}" / "model"
    train(_cfg(root, dirs, "init_pre", **over, **{"model.init": "pretrained", "model.pretrained_dir": str(src), "optim.lr": 0.0}))
    w, ws = final_weights(root / "init_pre"), final_weights(reference[0])
    assert all(torch.equal(w[k], ws[k]) for k in ws)
    conf = AutoConfig.for_model("llama", vocab_size=90, **body)
    AutoModelForCausalLM.from_config(conf).save_pretrained(tmp_path / "llm90")
    with pytest.raises(VocabError, match="text LLM"):
        train(_cfg(root, dirs, "init_llm90", **over, **{"model.init": "llm", "model.llm_dir": str(tmp_path / "llm90")}))


def test_body_lr_scale_scales_only_the_pretrained_layers(data):
    """optim.body_lr_scale: the decoder layers take lr x scale, the embedding and head
    (the rows new to the model) full lr.  Adam's first step is linear in lr, so the
    layers' first update at scale 0.25 is exactly a quarter of that at scale 1."""
    from espnet2_speechlm.model.build import random_body

    root, dirs = data
    over = {"schedule.total_steps": 1, "checkpoint.every": 1, "checkpoint.export": False}
    deltas = {}
    for scale in (1.0, 0.25):
        cfg = _cfg(root, dirs, f"blr{scale}", **over, **{"optim.body_lr_scale": scale})
        out = train(cfg)
        w0 = random_body(dict(TINY_BODY), out["model"].vocab, seed=cfg.seed).state_dict()
        m = out["model"]
        w1 = {k: v.detach() for k, v in m.state_dict().items()}
        deltas[scale] = {k: w1[k] - w0[k] for k in w1}
        # the state dict names each tensor under every alias (lm.model.* and body.*)
        outer_ptrs = {p.data_ptr() for mod in (m.embed, m.head) for p in mod.parameters()}
        outer = {k for k, v in w1.items() if v.data_ptr() in outer_ptrs}
    d1, dq = deltas[1.0], deltas[0.25]
    assert {"lm.lm_head.stream_emb", "body.embed_tokens.weight"} <= outer and "lm.model.layers.0.self_attn.q_proj.weight" in d1
    for k in d1:
        if d1[k].abs().max() == 0:
            continue
        want = d1[k] if k in outer else 0.25 * d1[k]
        assert torch.allclose(dq[k], want, rtol=1e-4, atol=1e-6), k  # atol: fp32 rounding of w + delta
    with pytest.raises(ConfigError, match=r"blr0.yaml: optim.body_lr_scale must be > 0, got 0.0"):
        _cfg(root, dirs, "blr0", **over, **{"optim.body_lr_scale": 0.0})
