"""Import of the released OpusLM models, on replicas saved exactly as the release is.

The replicas (release/testing.py) are tiny Llama and OLMo-2 bodies (2 layers,
D=64) under the released key names, bf16, with the ``criterion.lm_head.weight``
alias, a non-zero ``<pad>`` row, and a ``config.yaml`` whose ``token_list`` has
the released block layout.  After import, the first-step logits that the API
computes for ASR, TTS, TTS with a speaker prompt and text continuation must
equal a reference written here with plain torch operations straight from the
state dict and the token list (not with the toolkit's classes).
"""

import dataclasses
import json
import math
import shutil

import numpy as np
import pytest
import torch
import yaml

from espnet2_speechlm.release.opuslm import ReleaseError, import_opuslm
from espnet2_speechlm.release.testing import write_replica

torch.set_num_threads(1)


@pytest.fixture(scope="module", params=["llama", "olmo2"])
def replica(request, tmp_path_factory):
    body = request.param
    root = tmp_path_factory.mktemp(f"opuslm_{body}")
    # the OLMo-2 replica is wrapped as {"model": ...} and lists its trailing ids in token_bias
    rel, base = write_replica(root, body, wrap="model" if body == "olmo2" else None, tail_in_bias=body == "olmo2")
    out = root / "imported"
    # the Llama one is written as Hugging Face shards (every tensor over 20 kB in its own file)
    import_opuslm(rel, out, base_llm=base, max_shard_bytes=20_000 if body == "llama" else 10**9)
    return body, rel, base, out


# ----------------------------------------------------------------- the reference
def _rms(x, w, eps):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _rope(x, pos, theta):
    d = x.shape[-1]
    inv = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    ang = pos[:, None].double() * inv[None]
    cos, sin = torch.cat([ang.cos(), ang.cos()], -1).float(), torch.cat([ang.sin(), ang.sin()], -1).float()
    rot = torch.cat([-x[..., d // 2 :], x[..., : d // 2]], -1)
    return x * cos + rot * sin


def reference_logits(sd: dict, conf: dict, rows: np.ndarray) -> torch.Tensor:
    """Stream logits ``[9, V]`` after the last of the delayed ``rows [T, 9]``, from the state dict alone."""
    g = {k: v.float() for k, v in sd.items()}
    emb, head, head_emb = g["corelm.emb.weight"], g["corelm.lm_head.weight"], g["corelm.head_emb.weight"]
    x = emb[torch.as_tensor(rows)].sum(1)  # every stream's row, <pad>'s included
    T, D = x.shape
    H, KV = conf["num_attention_heads"], conf["num_key_value_heads"]
    theta = conf.get("rope_theta") or conf["rope_parameters"]["rope_theta"]  # transformers 4 / 5 config layouts
    hd, eps = D // H, conf["rms_norm_eps"]
    olmo = conf["model_type"] == "olmo2"
    pos = torch.arange(T)
    causal = torch.ones(T, T).tril().bool()
    for i in range(conf["num_hidden_layers"]):
        p = lambda n: g[f"corelm.decoders.model.layers.{i}.{n}"]  # noqa: E731
        a = x if olmo else _rms(x, p("input_layernorm.weight"), eps)
        q, k, v = a @ p("self_attn.q_proj.weight").T, a @ p("self_attn.k_proj.weight").T, a @ p("self_attn.v_proj.weight").T
        if olmo:  # OLMo-2 normalises the whole query and key projections
            q, k = _rms(q, p("self_attn.q_norm.weight"), eps), _rms(k, p("self_attn.k_norm.weight"), eps)
        q = _rope(q.view(T, H, hd).transpose(0, 1), pos, theta)
        k = _rope(k.view(T, KV, hd).transpose(0, 1), pos, theta).repeat_interleave(H // KV, 0)
        v = v.view(T, KV, hd).transpose(0, 1).repeat_interleave(H // KV, 0)
        att = (q @ k.transpose(1, 2) / math.sqrt(hd)).masked_fill(~causal, float("-inf")).softmax(-1)
        o = (att @ v).transpose(0, 1).reshape(T, D) @ p("self_attn.o_proj.weight").T
        x = x + (_rms(o, p("post_attention_layernorm.weight"), eps) if olmo else o)
        a = x if olmo else _rms(x, p("post_attention_layernorm.weight"), eps)
        m = (torch.nn.functional.silu(a @ p("mlp.gate_proj.weight").T) * (a @ p("mlp.up_proj.weight").T)) @ p("mlp.down_proj.weight").T
        x = x + (_rms(m, p("post_feedforward_layernorm.weight"), eps) if olmo else m)
    h = _rms(x, g["corelm.decoders.model.norm.weight"], eps)[-1]
    return torch.stack([(h + head_emb[k]) @ head.T for k in range(9)])


def released(rel):
    sd = torch.load(rel / "model.pth", map_location="cpu", weights_only=True)
    sd = sd.get("model", sd)
    conf = yaml.safe_load((rel / "config.yaml").read_text())
    return sd, conf


def ids_of(conf):
    tl, tb = conf["token_list"], conf["token_bias"]
    name = {t: i for i, t in enumerate(tl[:256])}
    return name, tb["ssl"][0], tb["codec"][0], (tb["codec"][1] - tb["codec"][0]) // 8, tb["text_bpe"][0]


def speech_rows(conf, local):
    """Local (unit, codes) frames -> the release's rows: unit 0 is written as <pad> (id 0)."""
    _, sem, codec, cb, _ = ids_of(conf)
    rows = np.zeros_like(local)
    rows[:, 0] = np.where(local[:, 0] == 0, 0, sem + local[:, 0])
    rows[:, 1:] = codec + cb * np.arange(8) + local[:, 1:]
    return rows


def special(conf, name):
    r = np.zeros((1, 9), dtype=np.int64)
    r[0, 0] = ids_of(conf)[0][name]
    return r


def delayed(frames):
    out = np.zeros_like(frames)
    for k in range(9):
        out[k:, k] = frames[: len(frames) - k, k]
    return out


def capture_first_step(lm):
    """Hook the model's output head: the logits of its first call (the last prompt position)."""
    got = []
    h = lm.model.head.register_forward_hook(lambda m, i, o: got.append((o[0].detach().clone(), o[1].detach().clone())) if not got else None)
    return got, h


def compare(lm, got, ref, row=0):
    v = lm.vocab
    l0, rest = got[0][0][row].float(), got[0][1][row].float()
    ac = v.block("acoustic")
    keep = torch.ones(v.size, dtype=torch.bool)
    keep[ac.start : ac.end] = False  # stream 0 never holds codes: the toolkit gives them -inf
    assert torch.isinf(l0[~keep]).all()
    scale = ref.abs().max().item()
    assert torch.allclose(l0[keep], ref[0][keep], atol=1e-4 * scale, rtol=1e-4), (l0[keep] - ref[0][keep]).abs().max()
    for k in range(1, 9):
        idx = lm.model.head.acoustic_index[k - 1]  # <pad> and codebook k - 1
        assert torch.allclose(rest[k - 1], ref[k][idx], atol=1e-4 * scale, rtol=1e-4), k


def test_first_step_logits_equal_the_reference(replica):
    from espnet2_speechlm.infer.api import DecodeConfig, SpeechLM
    from espnet2_speechlm.infer.generate import GenerationConfig, SamplingConfig

    body, rel, base, out = replica
    sd, conf = released(rel)
    hf = json.loads((base / "config.json").read_text())
    lm = SpeechLM.from_pretrained(out, device="cpu")
    assert lm.release and lm.model.cfg.convention == "espnet_opuslm"
    _, sem, _, cb, text = ids_of(conf)
    n_sem = conf["token_bias"]["ssl"][1] - sem
    rng = np.random.default_rng(0)
    speech = np.stack([rng.integers(0, n_sem, 23), *[rng.integers(0, cb, 23) for _ in range(8)]], 1)
    speech[[0, 5, 9], 0] = 0  # semantic unit 0: written as <pad>, as the release was trained
    assert lm.defaults.tts.speaker_prompt_frames == 500  # the release's, from config.yaml
    cfg = DecodeConfig(GenerationConfig(text=SamplingConfig(greedy=True), semantic=SamplingConfig(greedy=True),
                                        acoustic=SamplingConfig(greedy=True), min_len=1, max_len=10),
                       speaker_prompt_frames=lm.defaults.tts.speaker_prompt_frames)
    pads = np.zeros((8, 9), dtype=np.int64)

    # ASR: 5 | 80 | 34 | speech | 0 x 8 | 35
    got, h = capture_first_step(lm)
    lm.asr_tokens([speech], cfg)
    h.remove()
    frames = np.concatenate([special(conf, "<sos/eos>"), special(conf, "<codec_ssl_asr_task>"),
                             special(conf, "<codec_ssl_start/end>"), speech_rows(conf, speech), pads,
                             special(conf, "<text_bpe_start/end>")])
    compare(lm, got, reference_logits(sd, hf, delayed(frames)))

    # plain TTS: 5 | 82 | 35 | text | 0 x 8 | 34
    words = "please leave a message"
    ids = lm.text_tokenizer.tok.encode(words, add_special_tokens=False)
    text_rows = np.zeros((len(ids), 9), dtype=np.int64)
    text_rows[:, 0] = text + np.asarray(ids)
    got, h = capture_first_step(lm)
    lm.tts_tokens([words], None, cfg)
    h.remove()
    frames = np.concatenate([special(conf, "<sos/eos>"), special(conf, "<codec_ssl_plain_tts_task>"),
                             special(conf, "<text_bpe_start/end>"), text_rows, pads, special(conf, "<codec_ssl_start/end>")])
    compare(lm, got, reference_logits(sd, hf, delayed(frames)))

    # TTS with a speaker prompt of 23 frames: 5 | 81 | 35 | text | 0 x 8 | 37 | 23 speaker rows + 477 zero rows | 0 x 8 | 34
    got, h = capture_first_step(lm)
    lm.tts_tokens([words], [speech], cfg)
    h.remove()
    frames = np.concatenate([special(conf, "<sos/eos>"), special(conf, "<codec_ssl_tts_task>"),
                             special(conf, "<text_bpe_start/end>"), text_rows, pads, special(conf, "<spk_start/end>"),
                             speech_rows(conf, speech), np.zeros((500 - len(speech), 9), dtype=np.int64), pads,
                             special(conf, "<codec_ssl_start/end>")])
    compare(lm, got, reference_logits(sd, hf, delayed(frames)))

    # text continuation: the text rows alone (the release trained it without the 5 | 64 | 35 prefix)
    got, h = capture_first_step(lm)
    lm.continue_text_batch([words], cfg)
    h.remove()
    compare(lm, got, reference_logits(sd, hf, delayed(text_rows)))


def test_speaker_prompt_is_a_window_of_500_frames(replica):
    """A longer speaker utterance: a random 500-frame window of it (seeded), not its first 500 frames."""
    from espnet2_speechlm.infer.api import DecodeConfig, SpeechLM
    from espnet2_speechlm.infer.config import GenerationConfig
    from espnet2_speechlm.interleave import undelay

    _, rel, _, out = replica
    lm = SpeechLM.from_pretrained(out, device="cpu")
    rng = np.random.default_rng(1)
    n_sem = lm.vocab.block("semantic").size
    spk = np.stack([np.arange(700) % (n_sem - 1) + 1, *[rng.integers(0, 16, 700) for _ in range(8)]], 1)
    seen = []
    h = lm.model.embed.register_forward_hook(lambda m, i, o: seen.append(i[0].clone()) if not seen else None)
    lm.tts_tokens(["hello world"], [spk], DecodeConfig(GenerationConfig(min_len=1, max_len=10), speaker_prompt_frames=500))
    h.remove()
    frames = undelay(seen[0][0].numpy())
    marker = lm.vocab.special("<spk_start/end>")
    start = int(np.nonzero(frames[:, 0] == marker)[0][0]) + 1
    got = lm.vocab.audio_to_local(frames[start : start + 500])
    assert not (frames[start + 500] != 0).any()  # then the 8 zero rows
    offsets = [i for i in range(0, 201) if np.array_equal(spk[i : i + 500], got)]
    assert len(offsets) == 1 and offsets[0] > 0, offsets


def test_imported_directory(replica):
    from safetensors.torch import load_file

    from espnet2_speechlm.vocab import JointVocab

    body, rel, base, out = replica
    sd, conf = released(rel)
    v = JointVocab.load(out / "vocab.json")
    tb = conf["token_bias"]
    assert v.block("semantic").start == tb["ssl"][0] and v.block("acoustic").start == tb["codec"][0]
    assert v.block("text").start == tb["text_bpe"][0] and v.size == len(conf["token_list"])
    tail = v.blocks[-1]
    assert (tail.end - tail.start, tail.end) == (70, len(conf["token_list"]))  # the 70 trailing ids are kept
    assert tail.name == ("g2p" if body == "olmo2" else "tail")
    assert v.semantic0_is_pad and v.special("<asr_task>") == 80 and v.special("<plain_tts_task>") == 82
    # the same files give the same ids: the fingerprint is stable across imports
    again = out.parent / "again"
    import_opuslm(rel, again, base_llm=base)
    assert JointVocab.load(again / "vocab.json").fingerprint() == v.fingerprint()
    hf = json.loads((out / "config.json").read_text())
    assert hf["vocab_size"] == v.size and hf["tie_word_embeddings"] is False and hf["max_position_embeddings"] == 16384
    assert yaml.safe_load((out / "speechlm.yaml").read_text())["convention"] == "espnet_opuslm"
    dec = yaml.safe_load((out / "decode.yaml").read_text())
    assert dec["tts"]["generation"]["semantic"] == {"greedy": False, "temperature": 0.8, "top_k": 30, "top_p": 1.0}
    tts = dec["tts"]["generation"]
    assert (tts["min_len"], tts["max_len"], dec["tts"]["speaker_prompt_frames"]) == (3, 2048, 500)
    assert dec["asr"]["generation"]["text"]["greedy"] and dec["asr"]["generation"]["min_len"] == 1
    report = json.loads((out / "opuslm_import.json").read_text())
    assert any("criterion.lm_head.weight" in f for f in report["findings"])
    assert any("<pad> row" in f and "non-zero" in f for f in report["findings"])
    # the weights, bit for bit, under the toolkit's names
    if body == "llama":
        index = json.loads((out / "model.safetensors.index.json").read_text())
        shards = sorted(set(index["weight_map"].values()))
        assert len(shards) > 2 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
        assert not (out / "model.safetensors").exists()
    else:
        shards = ["model.safetensors"]
    got = {}
    for f in shards:
        got.update(load_file(str(out / f)))
    assert torch.equal(got["lm.model.embed_tokens.weight"], sd["corelm.emb.weight"])
    assert torch.equal(got["lm.lm_head.weight"], sd["corelm.lm_head.weight"])
    assert torch.equal(got["lm.lm_head.stream_emb"], sd["corelm.head_emb.weight"][:9])
    assert got["lm.model.layers.1.mlp.down_proj.weight"].dtype == torch.bfloat16
    assert not any(k.startswith("criterion") for k in got) and len(got) == len(sd) - 1 - 1 + 1  # -criterion -head_emb +stream_emb


def test_loads_straight_from_the_released_files(replica):
    """SpeechLM.from_pretrained on the release directory itself: the same model as the imported one."""
    from espnet2_speechlm.infer.api import SpeechLM

    body, rel, base, out = replica
    a = SpeechLM.from_pretrained(out, device="cpu")
    b = SpeechLM.from_pretrained(rel, device="cpu", base_llm=base)
    assert b.release and b.vocab.fingerprint() == a.vocab.fingerprint()
    x = torch.randint(0, a.vocab.size, (1, 11, 9))
    assert torch.equal(a.model.hidden(x)[0], b.model.hidden(x)[0])
    assert b.defaults.tts.speaker_prompt_frames == 500
    short = dataclasses.replace(a.defaults.textlm, generation=dataclasses.replace(a.defaults.textlm.generation, max_len=12))
    assert b.continue_text("please leave", short) == a.continue_text("please leave", short)


def test_embedding_sums_the_pad_row_only_for_the_release(replica, small_vocab, tiny_llama_cfg):
    from espnet2_speechlm.infer.api import SpeechLM
    from espnet2_speechlm.model.build import random_body

    _, _, _, out = replica
    m = SpeechLM.from_pretrained(out, device="cpu").model
    ids = torch.zeros(1, 1, 9, dtype=torch.long)
    ids[0, 0, 0] = 300
    w = m.embed.weight
    assert torch.allclose(m.embed(ids)[0, 0], w[300] + 8 * w[0])
    own = random_body(tiny_llama_cfg, small_vocab)  # the toolkit's own models leave <pad> out
    with torch.no_grad():
        own.embed.weight[0] = 1.0
    ids[0, 0, 0] = 300
    assert torch.allclose(own.embed(ids)[0, 0], own.embed.weight[300])


# ------------------------------------------------------------------ refusals
def _copy(rel, base, tmp_path):
    r, b = tmp_path / "release", tmp_path / "base_llm"
    shutil.copytree(rel, r)
    shutil.copytree(base, b)
    return r, b


def _edit_state_dict(rel, fn):
    sd = torch.load(rel / "model.pth", map_location="cpu", weights_only=True)
    wrapped = "model" in sd and isinstance(sd["model"], dict)
    inner = sd["model"] if wrapped else sd
    fn(inner)
    torch.save({"model": inner} if wrapped else inner, rel / "model.pth")


def _refused(rel, base, tmp_path, match, **kw):
    out = tmp_path / "out"
    with pytest.raises((ReleaseError, ValueError), match=match):
        import_opuslm(rel, out, base_llm=base, **kw)
    assert not out.exists() and not out.with_name("out.tmp").exists()  # nothing half-written


def test_refuses_unexpected_missing_and_misshapen_tensors(replica, tmp_path):
    _, rel, base, _ = replica
    r, b = _copy(rel, base, tmp_path)
    _edit_state_dict(r, lambda sd: sd.__setitem__("corelm.aux_head.weight", torch.zeros(3, 64, dtype=torch.bfloat16)))
    _refused(r, b, tmp_path, r"model\.pth: 1 unexpected key\(s\): \['corelm\.aux_head\.weight'\]")
    r, b = _copy(rel, base, tmp_path / "2")
    _edit_state_dict(r, lambda sd: sd.update({"criterion.aux_lm_head.weight": torch.zeros(128, 64, dtype=torch.bfloat16)}))
    import_opuslm(r, tmp_path / "2" / "ok", base_llm=b)  # criterion.* is the loss module's: dropped, listed
    rep = json.loads((tmp_path / "2" / "ok" / "opuslm_import.json").read_text())
    assert any("criterion.aux_lm_head.weight [128, 64]" in f for f in rep["findings"])
    r, b = _copy(rel, base, tmp_path / "3")
    _edit_state_dict(r, lambda sd: sd.pop("corelm.decoders.model.layers.1.mlp.up_proj.weight"))
    _refused(r, b, tmp_path / "3", r"missing key\(s\): \['corelm\.decoders\.model\.layers\.1\.mlp\.up_proj\.weight'\]")
    r, b = _copy(rel, base, tmp_path / "4")
    _edit_state_dict(r, lambda sd: sd.__setitem__("corelm.emb.weight", sd["corelm.emb.weight"][:-1].clone()))
    _refused(r, b, tmp_path / "4", r"corelm\.emb\.weight \((\d+), 64\) \(expected \((\d+), 64\)\)")


def test_refuses_objects_in_model_pth(replica, tmp_path):
    _, rel, base, _ = replica
    r, b = _copy(rel, base, tmp_path)
    torch.save({"model": {"w": torch.zeros(2)}, "opt": np.random.default_rng(0)}, r / "model.pth")
    _refused(r, b, tmp_path, r"model\.pth: refused by the weights-only loader")


def test_refuses_a_token_list_that_does_not_match_token_bias(replica, tmp_path):
    _, rel, base, _ = replica
    r, b = _copy(rel, base, tmp_path)
    conf = yaml.safe_load((r / "config.yaml").read_text())
    conf["token_bias"]["codec"][0] += 1  # one id off: the first codec id would be the last semantic unit
    conf["token_bias"]["ssl"][1] += 1
    (r / "config.yaml").write_text(yaml.safe_dump(conf, sort_keys=False))
    _refused(r, b, tmp_path, r"config\.yaml: token_list does not match token_bias: the semantic block is \[256, 277\)")
    conf["token_bias"] = {"ssl": [256, 276], "text_bpe": [276, 500]}
    (r / "config.yaml").write_text(yaml.safe_dump(conf, sort_keys=False))
    _refused(r, b, tmp_path, r"config\.yaml: token_bias has no block for acoustic")


def test_refuses_a_text_tokenizer_or_body_that_is_not_the_release_s(replica, tmp_path):
    from espnet2_speechlm.release.testing import write_tokenizer

    body, rel, base, _ = replica
    r, b = _copy(rel, base, tmp_path)
    write_tokenizer(b, texts=["completely different words here"] * 3)
    _refused(r, b, tmp_path, r"this tokenizer is not the one the release's text block was built from")
    r, b = _copy(rel, base, tmp_path / "2")
    cj = json.loads((b / "config.json").read_text())
    cj["model_type"] = "olmo2" if body == "llama" else "llama"
    (b / "config.json").write_text(json.dumps(cj))
    _refused(r, b, tmp_path / "2", r"config\.json: model_type '(olmo2|llama)', but .*config\.yaml was trained on")


@pytest.mark.parametrize("replica", ["llama"], indirect=True)
def test_cli_and_missing_body(replica, tmp_path):
    import subprocess
    import sys

    _, rel, base, _ = replica
    r = subprocess.run([sys.executable, "-m", "espnet2_speechlm.bin.import_opuslm", "--model_dir", str(rel), "--out",
                        str(tmp_path / "o")], capture_output=True, text=True)
    assert r.returncode == 1 and "give --base_llm DIR" in r.stderr and not (tmp_path / "o").exists()
    r = subprocess.run([sys.executable, "-m", "espnet2_speechlm.bin.import_opuslm", "--model_dir", str(rel), "--out",
                        str(tmp_path / "o"), "--base_llm", str(base)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "<pad> row of corelm.emb.weight" in r.stderr and (tmp_path / "o" / "vocab.json").exists()
