"""The released OpusLM models (ESPnet): read, check, and write as this toolkit's model directory.

A release directory (``espnet/OpusLM_1.7B_Anneal``, ``espnet/OpusLM_7B_Anneal``)
holds ``model.pth`` (a state dict, bf16), ``config.yaml`` (the ESPnet training
arguments, with ``token_list`` and ``token_bias``) and ``decode_default.yaml``.
The body's Hugging Face ``config.json`` and tokenizer (SmolLM2-1.7B or
OLMo-2-1124-7B) come from ``base_llm`` (or lie next to ``model.pth``).

What the import does, and checks (each check names the file):

* the joint vocabulary is read from ``token_list`` and ``token_bias``: the ids
  of every block and special token are those of the list, never recomputed;
  the trailing ids after the text block are kept as a block of their own.  A
  list whose blocks do not hold what ``token_bias`` says (semantic names
  ``<ssl_codeN>`` exactly in the semantic block, codec names exactly in the
  codec block) is refused.
* the state dict is loaded with ``weights_only=True`` and memory-mapped; a
  ``{"model": ...}`` or ``{"module": ...}`` wrapper is accepted.  Keys are the
  body's own names under ``corelm.decoders.model.``, ``corelm.emb.weight``,
  ``corelm.lm_head.weight`` (untied) and ``corelm.head_emb.weight`` (row k is
  added to the final hidden state to predict stream k).  ``criterion.*`` (the
  loss module's copies) is dropped and listed; any other unexpected key, a
  missing key, or a shape that does not fit the config is refused.
* the text block is compared with the base LLM's tokenizer, token name by
  token name (the release does not say which SmolLM tokenizer the 1.7B used).
* findings the release leaves open are reported, not assumed: the ``<pad>``
  row of the embedding (summed into every input, as ESPnet does), the unused
  rows of ``head_emb``, the ``criterion.*`` tensors and their sizes.

The written directory is ``MultiStreamLM.from_pretrained``'s (``config.json``,
``speechlm.yaml`` with ``convention: espnet_opuslm``, ``vocab.json``, the
weights as ``model.safetensors`` or shards with an index), plus
``decode.yaml`` (the release's decoding defaults), ``text_tokenizer/``,
optionally ``speech_tokenizer/``, and ``opuslm_import.json`` (what was found).
Peak memory stays near one tensor: the source is memory-mapped and written
tensor by tensor (``shards``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from .. import config as cfgmod
from ..model.config import LossWeights, ModelConfig
from ..vocab import NUM_SPECIAL, PAD, SOS_EOS, Block, JointVocab

CONVENTION = "espnet_opuslm"
NUM_STREAMS = 9
DEFAULT_SHARD_BYTES = 5 * 10**9
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                   "tokenizer.model", "added_tokens.json", "chat_template.jinja")

# the toolkit's name of a special token -> its name in the released token_list
SPECIAL_NAMES = {
    "<pad>": "<pad>",
    "<unk>": "<unk>",
    "<sos/eos>": "<sos/eos>",
    "<codec_ssl_start/end>": "<codec_ssl_start/end>",
    "<text_bpe_start/end>": "<text_bpe_start/end>",
    "<spk_start/end>": "<spk_start/end>",
    "<textlm_task>": "<textlm_task>",
    "<asr_task>": "<codec_ssl_asr_task>",
    "<tts_task>": "<codec_ssl_tts_task>",
    "<plain_tts_task>": "<codec_ssl_plain_tts_task>",
    "<audiolm_task>": "<codec_ssl_audiolm_task>",
}
# token_bias key -> block of the joint vocabulary
BLOCK_OF_KEY = {"ssl": "semantic", "codec": "acoustic", "text_bpe": "text"}
SEMANTIC_NAME = re.compile(r"<ssl_code\d+>")
ACOUSTIC_NAME = re.compile(r"<codec[^>]*\d>")
BODY_PREFIX = "corelm.decoders.model."
# the body types the released models use, by the tag in config.yaml
BODY_TYPES = {"smollm": ("llama",), "olmo": ("olmo2", "olmo")}


class ReleaseError(ValueError):
    """A released file that does not hold what it should (the message names it)."""


def _log(msg: str) -> None:
    print(f"[import_opuslm] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ config.yaml
def _find(node, name: str, path: str = ""):
    """(value, dotted path) of the first key ``name`` in nested mappings, shallowest first."""
    if not isinstance(node, dict):
        return None, None
    if name in node:
        return node[name], f"{path}{name}"
    for k, v in node.items():
        if isinstance(v, dict):
            val, where = _find(v, name, f"{path}{k}.")
            if where is not None:
                return val, where
    return None, None


def _load_yaml(path: Path) -> dict:
    if not path.exists():
        raise FileNotFoundError(f"{path} not found")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the config embeds a 60k-entry token list
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.load(f, Loader=loader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise ReleaseError(f"{path}:{' line ' + str(mark.line + 1) if mark else ''} invalid YAML: {getattr(e, 'problem', e)}") from None
    if not isinstance(data, dict):
        raise ReleaseError(f"{path}: expected a mapping of training arguments")
    return data


def _block_ranges(token_bias, n: int, where: str) -> list[tuple[str, int, int]]:
    """token_bias (name -> [start, end] or name -> start) -> sorted (name, start, end)."""
    if not isinstance(token_bias, dict) or not token_bias:
        raise ReleaseError(f"{where}: token_bias must map each block to its ids, got {token_bias!r}")
    starts = {}
    for k, v in token_bias.items():
        if isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, int) for x in v):
            starts[k] = (int(v[0]), int(v[1]))
        elif isinstance(v, int):
            starts[k] = (v, None)
        else:
            raise ReleaseError(f"{where}: token_bias.{k} = {v!r}: expected [start, end] or a start id")
    order = sorted(starts.items(), key=lambda kv: kv[1][0])
    out = []
    for i, (k, (s, e)) in enumerate(order):
        if e is None:
            e = order[i + 1][1][0] if i + 1 < len(order) else n
        out.append((k, s, e))
    prev = NUM_SPECIAL
    for k, s, e in out:
        if not (prev <= s < e <= n):
            raise ReleaseError(f"{where}: token_bias.{k} = [{s}, {e}) does not fit a token_list of {n} ids "
                               f"after the {NUM_SPECIAL} specials and the previous block (ends {prev})")
        prev = e
    return out


@dataclass
class ReleaseConfig:
    """What config.yaml and decode_default.yaml say, checked."""

    path: Path
    token_list: list
    vocab: JointVocab
    hf_model_tag: str
    share_emb: bool
    n_ctx: int
    speaker_prompt_length: int
    loss_weights: LossWeights
    decode: dict
    notes: list = field(default_factory=list)


def read_release_config(model_dir: str | Path) -> ReleaseConfig:
    model_dir = Path(model_dir)
    path = model_dir / "config.yaml"
    conf = _load_yaml(path)
    notes: list[str] = []
    token_list = conf.get("token_list")
    if not isinstance(token_list, list) or not token_list or not all(isinstance(t, str) for t in token_list):
        raise ReleaseError(f"{path}: no token_list (a list of token names) in the training arguments")
    n = len(token_list)
    corelm = conf.get("corelm")
    if corelm is not None and corelm != "ar_delay":
        raise ReleaseError(f"{path}: corelm is {corelm!r}; only the delay-interleaved OpusLM (ar_delay) is supported")
    for key in ("codec_token_per_frame", "codec_token_in_use"):
        v, where = _find(conf, key)
        if v is not None and int(v) != NUM_STREAMS:
            raise ReleaseError(f"{path}: {where} = {v}; the released OpusLM models use {NUM_STREAMS} tokens per frame")
        if v is None:
            notes.append(f"config.yaml has no {key}; assuming {NUM_STREAMS}")

    tb, where_tb = _find(conf, "token_bias")
    blocks = _block_ranges(tb, n, f"{path}: {where_tb or 'token_bias'}")
    kinds = {BLOCK_OF_KEY.get(k, k): (s, e) for k, s, e in blocks}
    for need in ("semantic", "acoustic", "text"):
        if need not in kinds:
            raise ReleaseError(f"{path}: token_bias has no block for {need} ({[k for k, _, _ in blocks]}; expected keys "
                               f"{sorted(k for k, v in BLOCK_OF_KEY.items())})")
    # the blocks must hold what token_bias says: names of each kind exactly in their block
    for kind, pattern in (("semantic", SEMANTIC_NAME), ("acoustic", ACOUSTIC_NAME)):
        s, e = kinds[kind]
        outside = [i for i, t in enumerate(token_list) if pattern.fullmatch(t) and not s <= i < e]
        inside_bad = [i for i in range(s, e) if not pattern.fullmatch(token_list[i])]
        if outside or inside_bad:
            bad = (inside_bad or outside)[0]
            raise ReleaseError(
                f"{path}: token_list does not match token_bias: the {kind} block is [{s}, {e}), but token_list[{bad}] = "
                f"{token_list[bad]!r} ({len(inside_bad)} names in the block are not {kind} tokens, {len(outside)} {kind} "
                f"tokens lie outside it)")
    s, e = kinds["text"]
    odd = [i for i in range(s, e) if SEMANTIC_NAME.fullmatch(token_list[i]) or ACOUSTIC_NAME.fullmatch(token_list[i])]
    if odd:
        raise ReleaseError(f"{path}: token_list does not match token_bias: token_list[{odd[0]}] = {token_list[odd[0]]!r} "
                           f"lies in the text block [{s}, {e})")
    codebooks = NUM_STREAMS - 1
    a0, a1 = kinds["acoustic"]
    if (a1 - a0) % codebooks:
        raise ReleaseError(f"{path}: the codec block has {a1 - a0} ids, not a multiple of {codebooks} codebooks")

    specials: dict[str, int] = {}
    index = {t: i for i, t in enumerate(token_list[:NUM_SPECIAL])}
    for ours, theirs in SPECIAL_NAMES.items():
        if theirs not in index:
            raise ReleaseError(f"{path}: special token {theirs!r} is not among the first {NUM_SPECIAL} entries of token_list")
        specials[ours] = index[theirs]
    if specials["<pad>"] != PAD or specials["<sos/eos>"] != SOS_EOS:
        raise ReleaseError(f"{path}: <pad> is id {specials['<pad>']} and <sos/eos> id {specials['<sos/eos>']}; "
                           f"this toolkit needs them at {PAD} and {SOS_EOS}")
    counts: dict[str, int] = {}
    for t in token_list[:NUM_SPECIAL]:
        counts[t] = counts.get(t, 0) + 1
    for t, i in index.items():  # every other special under its released name (unique names only)
        if counts[t] == 1 and t not in specials:
            specials[t] = i

    vb = [Block("semantic", *_size(kinds["semantic"])), Block("acoustic", *_size(kinds["acoustic"]), codebooks),
          Block("text", *_size(kinds["text"]))]
    for name, (bs, be) in kinds.items():
        if name not in ("semantic", "acoustic", "text"):
            vb.append(Block(name, bs, be - bs))
    last = max(b.end for b in vb)
    if last < n:  # ids after every listed block (the release's trailing 70): kept, never renumbered
        vb.append(Block("tail", last, n - last))
        notes.append(f"token_list ids [{last}, {n}) lie after every token_bias block: kept as block 'tail'")
    covered = sorted((b.start, b.end) for b in vb)
    for (s0, e0), (s1, _) in zip(covered, covered[1:]):
        if e0 != s1:
            raise ReleaseError(f"{path}: ids [{e0}, {s1}) of token_list belong to no token_bias block")
    tag, _ = _find(conf, "hf_model_tag")
    vocab = JointVocab(tuple(sorted(vb, key=lambda b: b.start)), NUM_STREAMS, specials, f"hf:{tag or 'unknown'}",
                       semantic0_is_pad=True)
    vocab._validate(path)

    share, _ = _find(conf, "share_emb")
    n_ctx, _ = _find(conf, "n_ctx")
    spk, spk_where = _find(conf, "speaker_prompt_length")
    if spk is None:
        notes.append("config.yaml has no speaker_prompt_length; using the release's 500 frames")
    mw, _ = _find(conf, "modality_weights")
    mw = mw if isinstance(mw, dict) else {}
    lw = LossWeights(text=float(mw.get("text_bpe", 1.0)), semantic=float(mw.get("ssl", 0.5)),
                     acoustic=float(mw.get("codec", 0.0625)))
    if "special" in mw:
        lw.special = float(mw["special"])
    decode_path = model_dir / "decode_default.yaml"
    if decode_path.exists():
        decode = _load_yaml(decode_path)
    else:
        decode = {}
        notes.append(f"{decode_path} not found: decoding defaults are the release's documented ones")
    return ReleaseConfig(path, token_list, vocab, str(tag or ""), bool(share) if share is not None else False,
                         int(n_ctx) if n_ctx else 0, int(spk) if spk is not None else 500, lw, decode, notes)


def _size(r: tuple[int, int]) -> tuple[int, int]:
    return r[0], r[1] - r[0]


# ------------------------------------------------------------- decoding defaults
def release_decode_defaults(decode: dict, speaker_prompt_length: int, notes: list | None = None):
    """The release's decoding as :class:`~..infer.api.DecodeDefaults`: speech by
    top-k 30 at temperature 0.8 on every stream, at least 3 steps; text greedy,
    at least 1; at most 2048 steps; a 500-frame speaker prompt.  Values that
    ``decode_default.yaml`` gives (``top_k``, ``temperature`` or
    ``sampling_temperature``, ``maxlen``, ``minlen``) replace those of speech."""
    from ..infer.api import DecodeConfig, DecodeDefaults
    from ..infer.config import GenerationConfig, SamplingConfig

    notes = notes if notes is not None else []
    found = {}
    for key in ("top_k", "temperature", "sampling_temperature", "maxlen", "minlen"):
        v, where = _find(decode, key)
        if where is not None and isinstance(v, (int, float)):
            found[key] = v
            notes.append(f"decode_default.yaml: {where} = {v}")
    top_k = int(found.get("top_k", 30))
    temp = float(found.get("temperature", found.get("sampling_temperature", 0.8)))
    maxlen = int(found.get("maxlen", 2048))
    speech_min = int(found.get("minlen", 3))
    topk = SamplingConfig(temperature=temp, top_k=top_k)
    greedy = SamplingConfig(greedy=True)

    def speech(min_len):
        return DecodeConfig(GenerationConfig(semantic=topk, acoustic=topk, min_len=min_len, max_len=maxlen),
                            speaker_prompt_frames=speaker_prompt_length)

    def text():
        return DecodeConfig(GenerationConfig(text=greedy, min_len=1, max_len=maxlen), speaker_prompt_frames=speaker_prompt_length)

    return DecodeDefaults(asr=text(), tts=speech(speech_min), textlm=text(), audiolm=speech(speech_min))


# ------------------------------------------------------------------ HF body
def _body_dir(model_dir: Path, base_llm) -> Path:
    if base_llm:
        d = Path(base_llm)
        if not (d / "config.json").exists():
            raise FileNotFoundError(f"--base_llm {d}: no config.json (the body's Hugging Face config and tokenizer files)")
        return d
    cj = model_dir / "config.json"
    if cj.exists() and "model_type" in json.loads(cj.read_text()):
        return model_dir
    raise FileNotFoundError(
        f"{model_dir}: the body's Hugging Face config is not next to model.pth; give --base_llm DIR with the "
        "config.json and tokenizer files of the body (SmolLM2-1.7B for OpusLM 1.7B, OLMo-2-1124-7B for 7B)")


def body_config(rc: ReleaseConfig, body_dir: Path, notes: list):
    """The body's HF config, adapted to the release: joint vocabulary size, the
    release's context, its (un)tied head.  Everything else is the body's own."""
    from transformers import AutoConfig

    hf = AutoConfig.from_pretrained(body_dir, local_files_only=True)
    tag = rc.hf_model_tag.lower()
    for key, types in BODY_TYPES.items():
        if key in tag and hf.model_type not in types:
            raise ReleaseError(f"{body_dir / 'config.json'}: model_type {hf.model_type!r}, but {rc.path} was trained on "
                               f"{rc.hf_model_tag} (a {' / '.join(types)} body)")
    hf.vocab_size = rc.vocab.size
    hf.tie_word_embeddings = rc.share_emb
    if rc.n_ctx:
        hf.max_position_embeddings = rc.n_ctx
    hf.bos_token_id = hf.eos_token_id = SOS_EOS  # ids of the joint vocabulary now
    hf.pad_token_id = PAD
    scaling = getattr(hf, "rope_scaling", None)
    if isinstance(scaling, dict) and scaling.get("rope_type", "default") == "default":
        scaling = None  # transformers 5 lists plain RoPE here too
    notes.append(f"body {hf.model_type} from {body_dir}: hidden {hf.hidden_size}, {hf.num_hidden_layers} layers, "
                 f"rms_norm_eps {getattr(hf, 'rms_norm_eps', None)}, rope theta "
                 f"{getattr(hf, 'rope_theta', None) or (getattr(hf, 'rope_parameters', None) or {}).get('rope_theta')}, "
                 f"rope scaling {scaling if scaling else 'none'}, context {hf.max_position_embeddings}")
    return hf


def _meta_body(hf):
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        lm = AutoModelForCausalLM.from_config(hf)
    return lm


# ---------------------------------------------------------------- model.pth
def load_state_dict(path: Path, notes: list) -> dict:
    """The state dict of ``model.pth``, memory-mapped, never unpickling objects."""
    import pickle

    if not path.exists():
        raise FileNotFoundError(f"{path} not found")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as e:
        if "mmap" not in str(e):
            raise ReleaseError(f"{path}: cannot be read as a torch checkpoint ({e})") from None
        notes.append(f"{path}: an old (non-zip) torch file, read without memory mapping")
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ReleaseError(f"{path}: refused by the weights-only loader (it holds more than tensors): {e}") from None
    if isinstance(sd, dict) and not any(isinstance(v, torch.Tensor) for v in sd.values()):
        for wrap in ("model", "module"):
            if isinstance(sd.get(wrap), dict):
                notes.append(f"{path}: state dict wrapped as {{'{wrap}': ...}}")
                sd = sd[wrap]
                break
    if not isinstance(sd, dict) or not sd or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items()):
        raise ReleaseError(f"{path}: not a state dict (a mapping of names to tensors)")
    return sd


def map_state_dict(sd: dict, rc: ReleaseConfig, hf, where: Path, notes: list) -> list[tuple[str, torch.Tensor]]:
    """Check the released tensors against the config and name them as
    ``MultiStreamLM`` does.  Every problem is listed in one error."""
    lm = _meta_body(hf)
    body = lm.get_decoder() if callable(getattr(lm, "get_decoder", None)) else lm.model
    body_shapes = {k: tuple(v.shape) for k, v in body.state_dict().items() if k != "embed_tokens.weight"}
    V, D = rc.vocab.size, hf.hidden_size
    expected = {BODY_PREFIX + k: s for k, s in body_shapes.items()}
    expected["corelm.emb.weight"] = (V, D)
    if not rc.share_emb:
        expected["corelm.lm_head.weight"] = (V, D)
    head_emb = "corelm.head_emb.weight"
    criterion = sorted(k for k in sd if k.startswith("criterion."))
    ignored = sorted(k for k in sd if k.endswith("rotary_emb.inv_freq"))  # recomputed by the body
    unexpected = sorted(k for k in sd if k not in expected and k != head_emb and k not in criterion and k not in ignored
                        and not (rc.share_emb and k == "corelm.lm_head.weight"))
    missing = sorted(k for k in list(expected) + [head_emb] if k not in sd)
    wrong = [f"{k} {tuple(sd[k].shape)} (expected {s})" for k, s in expected.items() if k in sd and tuple(sd[k].shape) != s]
    if head_emb in sd:
        he = sd[head_emb]
        if he.dim() != 2 or he.shape[0] < NUM_STREAMS or he.shape[1] != D:
            wrong.append(f"{head_emb} {tuple(he.shape)} (expected [>= {NUM_STREAMS}, {D}])")
    problems = []
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {unexpected[:8]}")
    if missing:
        problems.append(f"{len(missing)} missing key(s): {missing[:8]}")
    if wrong:
        problems.append(f"{len(wrong)} shape(s) that do not fit {rc.path.name} and the body config: {wrong[:6]}")
    if problems:
        raise ReleaseError(f"{where}: " + "; ".join(problems))

    # what the release leaves open, as found in this file
    total = sum(v.numel() for k, v in sd.items() if k not in criterion)
    if criterion:
        shapes = ", ".join(f"{k} {list(sd[k].shape)}" for k in criterion)
        notes.append(f"dropped {len(criterion)} criterion.* tensor(s) (the loss module's copies): {shapes}")
    if ignored:
        notes.append(f"ignored {len(ignored)} rotary inv_freq buffer(s) (recomputed by the body)")
    pad_norm = float(sd["corelm.emb.weight"][PAD].float().norm())
    notes.append(f"<pad> row of corelm.emb.weight: norm {pad_norm:.4g} ({'zero' if pad_norm == 0 else 'non-zero'}; "
                 "summed into every input as ESPnet does)")
    he = sd[head_emb]
    if he.shape[0] > NUM_STREAMS:
        extra = float(he[NUM_STREAMS:].float().norm())
        notes.append(f"{head_emb}: {he.shape[0]} rows, rows {NUM_STREAMS}..{he.shape[0] - 1} unused (norm {extra:.4g})")
    notes.append(f"{len(sd) - len(criterion) - len(ignored)} model tensors, {total / 1e6:.1f} M parameters, dtypes "
                 f"{sorted({str(v.dtype).replace('torch.', '') for v in sd.values()})}")

    out = [("lm.model." + k[len(BODY_PREFIX):], sd[k]) for k in sorted(expected) if k.startswith(BODY_PREFIX)]
    out.append(("lm.model.embed_tokens.weight", sd["corelm.emb.weight"]))
    if not rc.share_emb:
        out.append(("lm.lm_head.weight", sd["corelm.lm_head.weight"]))
    out.append(("lm.lm_head.stream_emb", he[:NUM_STREAMS]))
    return out


def model_config(rc: ReleaseConfig) -> ModelConfig:
    cfg = ModelConfig(num_streams=NUM_STREAMS, loss_weights=rc.loss_weights, head="shared", convention=CONVENTION)
    cfg.vocab_fingerprint = rc.vocab.fingerprint()
    return cfg


# ---------------------------------------------------------- text tokenizer
def check_text_tokenizer(tok_dir: Path, rc: ReleaseConfig, notes: list, strict: bool = True):
    """The body's tokenizer must be the one the text block was built from: its
    size fits the block and its token names are the list's, id for id."""
    from ..tokenizers.text import HFTextTokenizer

    tok = HFTextTokenizer(tok_dir, strict=False)
    block = rc.vocab.block("text")
    n = tok.vocab_size
    if n > block.size:
        raise ReleaseError(f"{tok_dir}: the tokenizer has {n} tokens, the text block of {rc.path} only {block.size}")
    pieces = tok.tok.convert_ids_to_tokens(list(range(n)))
    listed = rc.token_list[block.start : block.start + n]
    same = sum(a == b for a, b in zip(pieces, listed))
    first_bad = next((i for i, (a, b) in enumerate(zip(pieces, listed)) if a != b), None)
    notes.append(f"text tokenizer {tok_dir}: {n} tokens; {same} of {n} names equal token_list[{block.start} + id]"
                 + (f" (first difference at id {first_bad}: {pieces[first_bad]!r} vs {listed[first_bad]!r})" if first_bad is not None else ""))
    if strict and same < n:
        raise ReleaseError(
            f"{tok_dir}: this tokenizer is not the one the release's text block was built from: {n - same} of {n} token "
            f"names differ from {rc.path} (first at id {first_bad}: {pieces[first_bad]!r} vs {listed[first_bad]!r}); "
            "give the base LLM's own tokenizer files")
    return tok


# ---------------------------------------------------------------- import
@dataclass
class Release:
    """A release read and checked, ready to be written or loaded."""

    model_dir: Path
    config: ReleaseConfig
    hf: object
    body_dir: Path
    tensors: list
    notes: list


def read_release(model_dir: str | Path, base_llm=None, check_tokenizer: bool = True, log=_log) -> Release:
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"released model directory not found: {model_dir}")
    rc = read_release_config(model_dir)
    notes = list(rc.notes)
    v = rc.vocab
    notes.append("vocabulary from token_list: " + ", ".join(f"{b.name} [{b.start}, {b.end})" for b in v.blocks)
                 + f", {v.size} ids; specials " + ", ".join(f"{k}={v.specials[k]}" for k in SPECIAL_NAMES))
    body_dir = _body_dir(model_dir, base_llm)
    hf = body_config(rc, body_dir, notes)
    check_text_tokenizer(body_dir, rc, notes, strict=check_tokenizer)
    sd = load_state_dict(model_dir / "model.pth", notes)
    tensors = map_state_dict(sd, rc, hf, model_dir / "model.pth", notes)
    for n in notes:
        log(n)
    return Release(model_dir, rc, hf, body_dir, tensors, notes)


def _check_speech_tokenizer(tok_dir: Path, vocab: JointVocab, config_file: Path) -> None:
    from ..tokenizers.speech import check_fits_vocab

    check_fits_vocab(tok_dir, vocab, config_file)  # the vocabulary as the release's config.yaml lists it


def import_opuslm(model_dir: str | Path, out: str | Path, base_llm=None, speech_tokenizer=None,
                  max_shard_bytes: int = DEFAULT_SHARD_BYTES, check_tokenizer: bool = True, device: str = "cpu", log=_log) -> Path:
    """Write the toolkit's model directory for a released model (see the module doc).

    ``speech_tokenizer``: a tokenizer directory (``tokenizer.json``) or the
    downloaded released tokenizer files (``tokenizers.opuslm``); its sizes must
    fit the vocabulary.  Written to ``out.tmp`` and renamed when complete."""
    t0 = time.time()
    out = Path(out)
    rel = read_release(model_dir, base_llm, check_tokenizer, log)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        if speech_tokenizer is not None:
            st = Path(speech_tokenizer)
            if (st / "tokenizer.json").exists():
                _check_speech_tokenizer(st, rel.config.vocab, rel.model_dir / "config.yaml")
                from ..tokenizers.speech import SpeechTokenizer

                SpeechTokenizer.load(st, device=device).save(tmp / "speech_tokenizer")
            else:
                from ..tokenizers.opuslm import build_release_tokenizer

                build_release_tokenizer(st, tmp / "speech_tokenizer", device=device, log=log)
                _check_speech_tokenizer(tmp / "speech_tokenizer", rel.config.vocab, rel.model_dir / "config.yaml")
            log(f"speech tokenizer: {tmp.name}/speech_tokenizer from {st}")
        rel.hf.save_pretrained(tmp)
        cfgmod.save(model_config(rel.config), tmp / "speechlm.yaml")
        rel.config.vocab.save(tmp / "vocab.json")
        cfgmod.save(release_decode_defaults(rel.config.decode, rel.config.speaker_prompt_length, rel.notes), tmp / "decode.yaml")
        (tmp / "text_tokenizer").mkdir()
        for name in TOKENIZER_FILES:
            if (rel.body_dir / name).exists():
                shutil.copy(rel.body_dir / name, tmp / "text_tokenizer" / name)
        from .shards import write_sharded

        files = write_sharded(tmp, rel.tensors, max_shard_bytes, source_file=rel.model_dir / "model.pth", log=log)
        report = {"source": str(rel.model_dir.resolve()), "body": str(rel.body_dir.resolve()), "convention": CONVENTION,
                  "weights": [f.name for f in files], "findings": rel.notes}
        (tmp / "opuslm_import.json").write_text(json.dumps(report, indent=2) + "\n")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    log(f"wrote {out} in {time.time() - t0:.1f} s")
    return out


def is_release_dir(path: str | Path) -> bool:
    p = Path(path)
    return (p / "model.pth").exists() and (p / "config.yaml").exists() and not (p / "speechlm.yaml").exists()


def load_release_model(model_dir: str | Path, base_llm=None, dtype: torch.dtype = torch.float32, device="cpu", log=_log):
    """A released model straight from its files (no directory written):
    ``(MultiStreamLM, DecodeDefaults, text tokenizer directory)``."""
    from transformers import AutoModelForCausalLM

    from ..model.speechlm import MultiStreamLM, _skip_random_init

    rel = read_release(model_dir, base_llm, True, log)
    with _skip_random_init() if not rel.config.share_emb else _nullcontext():
        lm = AutoModelForCausalLM.from_config(rel.hf, attn_implementation="sdpa", dtype=dtype)
    model = MultiStreamLM(lm, rel.config.vocab, model_config(rel.config))
    keys = set(model.state_dict())
    sd = dict(rel.tensors)
    bad = [k for k in sd if k not in keys]
    if bad:  # a mapping error of this module, not of the release
        raise RuntimeError(f"released tensors map to names the model does not have: {bad[:5]}")
    model.load_state_dict(sd, strict=False)
    loaded = set(sd)
    groups: dict[int, list[str]] = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        if n in keys:
            groups.setdefault(id(p), []).append(n)
    missing = [min(g) for g in groups.values() if not loaded & set(g)]
    if missing:
        raise RuntimeError(f"{model_dir}: no released tensor for {missing[:5]}")
    defaults = release_decode_defaults(rel.config.decode, rel.config.speaker_prompt_length)
    return model.to(device=device, dtype=dtype), defaults, rel.body_dir


def _nullcontext():
    import contextlib

    return contextlib.nullcontext()
