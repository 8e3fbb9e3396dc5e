"""Small replicas of the released OpusLM files, for tests, benchmarks and the recipe's CI run.

``write_replica`` writes, in exactly the released formats but at tiny sizes:

* ``model.pth``: a bf16 state dict with the released key names (the body's
  own names under ``corelm.decoders.model.``, ``corelm.emb.weight``, an
  untied ``corelm.lm_head.weight``, ``corelm.head_emb.weight`` with 12 rows,
  and ``criterion.lm_head.weight`` sharing the head's storage), optionally
  wrapped as ``{"model": ...}``; the ``<pad>`` row is not zero;
* ``config.yaml``: ESPnet-style training arguments with ``token_list`` in the
  released block layout (256 specials at their released ids, ``<ssl_codeN>``
  units, codec codes, the text tokenizer's pieces padded with unused names to
  the body's vocabulary, 70 trailing ids) and ``token_bias``;
* ``decode_default.yaml``; and a base-LLM directory (the body's Hugging Face
  ``config.json`` and tokenizer files, no weights).

Needs ``tokenizers`` and ``transformers`` (to build the tokenizer and body).
"""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

RELEASED_SPECIALS = {
    0: "<pad>", 1: "<unk>", 2: "<blank>", 3: "<space>", 4: "<continuous_placeholder>", 5: "<sos/eos>",
    6: "<local_sos/eos>", 7: "<unknown_symbol>", 8: "<system_prompt>", 9: "<user_input>", 10: "<assistant_output>",
    11: "<eou>", 32: "<ssl_start/end>", 33: "<codec_start/end>", 34: "<codec_ssl_start/end>",
    35: "<text_bpe_start/end>", 36: "<g2p_start/end>", 37: "<spk_start/end>", 64: "<textlm_task>",
    80: "<codec_ssl_asr_task>", 81: "<codec_ssl_tts_task>", 82: "<codec_ssl_plain_tts_task>",
    83: "<codec_ssl_audiolm_task>", 88: "<text_dialogue_task>", 89: "<audio_dialogue_task>",
}
TAIL = 70
BODIES = {
    # SmolLM2-1.7B's kind of body (Llama, tied in its own release), and OLMo-2-7B's (QK-norm, untied)
    "llama": dict(model_type="llama", hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=128, rope_theta=130000.0, rms_norm_eps=1e-5, max_position_embeddings=8192,
                  tie_word_embeddings=True),
    "olmo2": dict(model_type="olmo2", hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                  intermediate_size=128, rope_theta=500000.0, rms_norm_eps=1e-6, max_position_embeddings=4096,
                  tie_word_embeddings=False),
}
TAGS = {"llama": "HuggingFaceTB/SmolLM2-1.7B", "olmo2": "allenai/OLMo-2-1124-7B"}
SENTENCES = [
    "please leave a message after the tone", "the number you have dialed is not in service",
    "your call is important to us", "press one for sales and two for support", "goodbye and thank you for calling",
    "the office is closed today", "hello world this is a test of the speech model",
]


def write_tokenizer(out: Path, texts=SENTENCES, vocab_size: int = 300) -> Path:
    """A byte-level BPE tokenizer in Hugging Face format (like SmolLM2's and OLMo-2's)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(list(texts) * 5, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"], show_progress=False,
                                                                   initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    fast.save_pretrained(out)
    return out


def replica_token_list(text_pieces: list[str], text_block: int, semantic: int = 20, codebook_size: int = 16,
                       codebooks: int = 8, tail: int = TAIL, tail_in_bias: bool = False):
    """(token_list, token_bias) in the released layout at small sizes."""
    tl = [RELEASED_SPECIALS.get(i, f"<unused_token_{i}>") for i in range(256)]
    bias = {"ssl": [len(tl), len(tl) + semantic]}
    tl += [f"<ssl_code{k + 1}>" for k in range(semantic)]
    bias["codec"] = [len(tl), len(tl) + codebooks * codebook_size]
    tl += [f"<codec_layer{q}_code{c}>" for q in range(codebooks) for c in range(codebook_size)]
    bias["text_bpe"] = [len(tl), len(tl) + text_block]
    tl += list(text_pieces) + [f"<unused_text_{i}>" for i in range(len(text_pieces), text_block)]
    if tail_in_bias:
        bias["g2p"] = [len(tl), len(tl) + tail]
    tl += [f"<phone_{i}>" for i in range(tail)]
    return tl, bias


def write_replica(root: Path, body: str = "llama", semantic: int = 20, codebook_size: int = 16, wrap: str | None = None,
                  tail_in_bias: bool = False, seed: int = 0, n_ctx: int = 16384) -> tuple[Path, Path]:
    """Write ``root/release`` (model.pth, config.yaml, decode_default.yaml) and
    ``root/base_llm`` (the body's config.json and tokenizer).  Returns both."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    root = Path(root)
    rel, base = root / "release", root / "base_llm"
    rel.mkdir(parents=True, exist_ok=True)
    write_tokenizer(base)
    tok = AutoTokenizer.from_pretrained(base)
    n_text = len(tok)
    text_block = -(-n_text // 64) * 64  # the body's vocabulary, padded as released bodies pad theirs
    conf = AutoConfig.for_model(**{**BODIES[body], "vocab_size": text_block})
    conf.save_pretrained(base)
    tl, bias = replica_token_list(tok.convert_ids_to_tokens(list(range(n_text))), text_block, semantic, codebook_size,
                                  tail_in_bias=tail_in_bias)
    V, D = len(tl), conf.hidden_size
    torch.manual_seed(seed)
    lm = AutoModelForCausalLM.from_config(conf)
    sd = {}
    for k, v in lm.model.state_dict().items():
        if k == "embed_tokens.weight":
            continue
        if k.endswith("norm.weight"):  # trained norms are not all ones: make their effect visible
            v = 1.0 + 0.1 * torch.randn_like(v)
        sd["corelm.decoders.model." + k] = v.to(torch.bfloat16).clone()
    sd["corelm.emb.weight"] = (0.5 * torch.randn(V, D)).to(torch.bfloat16)
    sd["corelm.lm_head.weight"] = (0.5 * torch.randn(V, D)).to(torch.bfloat16)
    sd["corelm.head_emb.weight"] = (0.5 * torch.randn(12, D)).to(torch.bfloat16)
    sd["criterion.lm_head.weight"] = sd["corelm.lm_head.weight"]  # the loss module's alias of the head
    torch.save({wrap: sd} if wrap else sd, rel / "model.pth")
    config = {
        "token_list": tl,
        "token_bias": bias,
        "corelm": "ar_delay",
        "corelm_conf": {"share_emb": False},
        "transformer": "huggingface",
        "transformer_conf": {"hf_model_tag": TAGS[body], "n_ctx": n_ctx},
        "codec_token_per_frame": 9,
        "codec_token_in_use": 9,
        "speaker_prompt_length": 500,
        "subword_model": TAGS[body],
        "modality_weights": {"ssl": 0.5, "codec": 0.0625, "text_bpe": 1.0},
    }
    (rel / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (rel / "decode_default.yaml").write_text(yaml.safe_dump({"top_k": 30, "temperature": 0.8, "maxlen": 2048, "minlen": 3}))
    return rel, base
