"""The multi-stream speech-text LM around a Hugging Face decoder-only body.

One step of the LM sees one delayed frame: the N stream tokens are embedded
with the body's (resized) input embedding and summed, the body runs once per
step, and the head turns the last hidden state into N predictions.  Any
``AutoModelForCausalLM`` whose decoder accepts ``inputs_embeds`` works
(Llama/SmolLM2, OLMo-2, Qwen2, ...).

Saved layout (``save_pretrained`` / ``from_pretrained``)::

    config.json         the body's Hugging Face config (vocab_size = joint size)
    speechlm.yaml       ModelConfig (loss weights, head, vocabulary fingerprint)
    vocab.json          the joint vocabulary (read back, never recomputed)
    model.safetensors   all weights (or Hugging Face shards: model-0000k-of-0000n.safetensors
                        and model.safetensors.index.json, as an imported 7B model is written)
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from .. import config as cfgmod
from ..interleave import loss_frames
from ..vocab import PAD, JointVocab, VocabError
from .config import ModelConfig
from .guided_attention import AttentionCapture, guided_attention_sum
from .heads import MultiStreamEmbedding, SharedStreamHead
from .loss import alignment_pairs, category_table, ctc_loss_sum, ctc_segments, multistream_loss, weight_per_category


class ContextLengthError(ValueError):
    pass


CONVENTIONS = ("toolkit", "espnet_opuslm")


def _decoder_of(lm: nn.Module) -> nn.Module:
    get = getattr(lm, "get_decoder", None)
    dec = get() if callable(get) else None
    if dec is None or dec is lm:
        dec = getattr(lm, "model", None)
    if dec is None:
        raise TypeError(f"{type(lm).__name__}: cannot find the decoder body (no get_decoder() / .model)")
    return dec


def _loss_positions(h: torch.Tensor, tgt: torch.Tensor, mask: torch.Tensor):
    """Keep the steps with at least one target in the loss: ``h [B, S, D]``,
    ``tgt`` and ``mask [B, S, N]`` -> ``[1, M, D]``, ``[1, M, N]``, ``[1, M, N]``
    (unchanged when every step is kept).  The loss is the same, because it
    weights every other step by zero."""
    keep = mask.any(-1)
    if bool(keep.all()):
        return h, tgt, mask
    return h[keep].unsqueeze(0), tgt[keep].unsqueeze(0), mask[keep].unsqueeze(0)


INDEX_FILE = "model.safetensors.index.json"


def weight_files(model_dir: Path) -> list[Path]:
    """The weight files of a model directory: ``model.safetensors``, or the shards
    that ``model.safetensors.index.json`` names (Hugging Face's sharded layout)."""
    import json

    single, index = model_dir / "model.safetensors", model_dir / INDEX_FILE
    if single.exists():
        return [single]
    if not index.exists():
        raise FileNotFoundError(f"{model_dir}: missing model.safetensors (or {INDEX_FILE} and its shards)")
    try:
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (json.JSONDecodeError, KeyError, AttributeError) as e:
        raise ValueError(f"{index}: not a safetensors index ({e!r})") from None
    missing = [n for n in names if not (model_dir / n).exists()]
    if missing:
        raise FileNotFoundError(f"{index} names shards that are not there: {missing}")
    return [model_dir / n for n in names]


def _skip_random_init():
    """Model construction without the random initialisation (minutes for a 7B body
    on CPU).  Only for untied bodies: tying happens in the same pass."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # pragma: no cover - older transformers
        return contextlib.nullcontext()
    return no_init_weights()


def _load_shards(model: nn.Module, files: list[Path], device) -> tuple[list[str], list[str]]:
    """Load shard after shard (one shard in memory at a time).  A tensor with
    several names in the model (the body's own name and ``body.*``, a tied head)
    counts as loaded under any of them."""
    from safetensors.torch import load_file

    loaded, unexpected = set(), []
    for f in files:
        sd = load_file(str(f), device=str(device))
        _, unexp = model.load_state_dict(sd, strict=False)
        unexpected += unexp
        loaded |= set(sd) - set(unexp)
        del sd
    groups: dict[int, list[str]] = {}
    keys = set(model.state_dict().keys())
    for n, t in list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers(remove_duplicate=False)):
        if n in keys:
            groups.setdefault(id(t), []).append(n)
    missing = sorted(min(names) for names in groups.values() if not loaded & set(names))
    return missing, unexpected


class MultiStreamLM(nn.Module):
    def __init__(self, lm: nn.Module, vocab: JointVocab, cfg: ModelConfig):
        """Wrap ``lm`` (a causal LM whose embedding and head already have
        ``vocab.size`` rows).  Replaces its embedding and head modules by the
        multi-stream ones, keeping the weights (and their tying)."""
        super().__init__()
        if cfg.num_streams != vocab.num_streams:
            raise VocabError(f"model config has num_streams={cfg.num_streams}, the vocabulary {vocab.num_streams}")
        self.vocab = vocab
        self.cfg = cfg
        self.lm = lm
        old_emb = lm.get_input_embeddings()
        old_head = lm.get_output_embeddings()
        V, D = old_emb.weight.shape
        if V != vocab.size:
            raise VocabError(f"vocabulary has {vocab.size} ids but the body's embedding has {V} rows")
        if cfg.convention not in CONVENTIONS:
            raise ValueError(f"unknown model convention {cfg.convention!r}; known: {list(CONVENTIONS)}")
        # ESPnet summed (and trained) the <pad> row like any other; this toolkit leaves it out
        pad_idx = None if cfg.convention == "espnet_opuslm" else PAD
        emb = MultiStreamEmbedding(V, D, padding_idx=pad_idx, _weight=old_emb.weight.data, _freeze=False)
        emb.weight = old_emb.weight  # same Parameter: keeps any tying
        lm.set_input_embeddings(emb)
        if cfg.head != "shared":  # the one head the released checkpoints use; another would plug in here
            raise ValueError(f"unknown head {cfg.head!r}; known: ['shared']")
        head = SharedStreamHead(D, V, vocab.num_streams, bias=getattr(old_head, "bias", None) is not None)
        head.weight = old_head.weight
        if head.bias is not None:
            head.bias = old_head.bias
        lm.set_output_embeddings(head)
        self.body = _decoder_of(lm)
        if vocab.num_streams > 1 and cfg.restrict_acoustic_logits:
            rows = []
            for n in range(1, vocab.num_streams):
                s, e = vocab.acoustic_stream_range(n)
                rows.append(torch.cat([torch.tensor([PAD]), torch.arange(s, e)]))
            head.set_acoustic_index(torch.stack(rows))
        if vocab.num_streams > 1 and cfg.restrict_stream0_logits:
            ac = vocab.block("acoustic")  # every codebook, one contiguous block
            head.set_stream0_index(torch.cat([torch.arange(ac.start), torch.arange(ac.end, V)]))
        if cfg.ctc_weight > 0:
            tb = vocab.block("text")
            head.set_ctc_index(torch.cat([torch.tensor([PAD]), torch.arange(tb.start, tb.end)]))
            n_layers = len(getattr(self.body, "layers", ()))
            if cfg.ctc_layer and not (0 < cfg.ctc_layer <= n_layers and hasattr(self.body, "norm")):
                raise ValueError(f"ctc_layer {cfg.ctc_layer}: the body has {n_layers} layers (and needs a final .norm)")
        self.register_buffer("categories", category_table(vocab), persistent=False)
        self.register_buffer("cat_weights", weight_per_category(cfg.loss_weights), persistent=False)
        if cfg.gradient_checkpointing:
            lm.gradient_checkpointing_enable()
        self._guided = None
        ga = cfg.guided_attention
        if ga.weight > 0:
            layers = getattr(self.body, "layers", None)
            if layers is None:
                raise ValueError(f"guided attention needs a body with .layers; {type(self.body).__name__} has none")
            heads = lm.config.num_attention_heads
            if not ga.heads or any(not 0 <= h < heads for h in ga.heads):
                raise ValueError(f"guided attention: heads {ga.heads} must be a non-empty list of heads 0..{heads - 1}")
            self._guided = AttentionCapture(layers, ga.layers)

    # ----------------------------------------------------------- properties
    @property
    def embed(self) -> MultiStreamEmbedding:
        return self.lm.get_input_embeddings()

    @property
    def head(self) -> SharedStreamHead:
        return self.lm.get_output_embeddings()

    @property
    def num_streams(self) -> int:
        return self.vocab.num_streams

    @property
    def max_steps(self) -> int | None:
        return getattr(self.lm.config, "max_position_embeddings", None)

    def check_length(self, num_steps: int, what: str = "sequence") -> None:
        ctx = self.max_steps
        if ctx is not None and num_steps > ctx:
            raise ContextLengthError(
                f"{what} of {num_steps} steps (frames + {self.num_streams - 1} delay steps) is longer than the "
                f"model's context of {ctx} (max_position_embeddings of the body)"
            )

    # --------------------------------------------------------------- forward
    def hidden(self, steps, attention_mask=None, position_ids=None, past_key_values=None, use_cache=False):
        """``steps [B, S, N]`` delayed global ids -> (last hidden [B, S, D], cache)."""
        if steps.dim() != 3 or steps.shape[-1] != self.num_streams:
            raise ValueError(f"expected steps of shape [B, S, {self.num_streams}], got {tuple(steps.shape)}")
        past = past_key_values.get_seq_length() if past_key_values is not None else 0
        self.check_length(past + steps.shape[1])
        x = self.embed(steps)
        out = self.body(
            inputs_embeds=x,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            use_cache=use_cache,
        )
        return out.last_hidden_state, (out.past_key_values if use_cache else None)

    def forward(self, steps: torch.Tensor, loss_mask: torch.Tensor, attention_mask: torch.Tensor | None = None, position_ids=None):
        """Training forward on delayed steps.

        steps         [B, S, N] delayed global ids (``interleave.delay`` of the frames)
        loss_mask     [B, S, N] bool, delayed the same way: target tokens in the loss
        attention_mask [B, S] 1 for real steps (right padding), optional
        Returns ``(loss_sum, num_frames, stats)``: the weighted CE sum (plus
        the auxiliary losses), the real frames it covers
        (:func:`~espnet2_speechlm.interleave.loss_frames`), and per-modality
        losses and per-stream accuracies.  The caller divides, once: a trainer
        by the frames of its whole global batch, so that every frame weighs the
        same whatever micro-batch or rank it is in.
        """
        inp, tgt = steps[:, :-1], steps[:, 1:]
        mask = loss_mask[:, 1:]
        am = attention_mask[:, :-1] if attention_mask is not None else None
        if attention_mask is not None:
            mask = mask & attention_mask[:, 1:].bool().unsqueeze(-1)
        pid = position_ids[:, :-1] if position_ids is not None else None
        pairs = self._guided_pairs(steps[:, :-1, 0], loss_mask[:, :-1, 0], attention_mask) if self._guided is not None else None
        if pairs:
            self._guided.active = True
        ctc_layer = self.cfg.ctc_layer if self.cfg.ctc_weight > 0 else 0
        captured = []
        hook = (self.body.layers[ctc_layer - 1].register_forward_hook(lambda m, i, o: captured.append(o[0] if isinstance(o, tuple) else o))
                if ctc_layer else None)
        try:
            h, _ = self.hidden(inp, am, pid)
        finally:
            if self._guided is not None:
                self._guided.active = False
            if hook is not None:
                hook.remove()
        h_ctc = self.body.norm(captured[-1]) if ctc_layer else h
        s0_local = self.head.stream0_local if self.head.stream0_local.numel() else None
        ctc = self._ctc_inputs(h_ctc, steps[:, :-1, 0], loss_mask[:, :-1, 0], attention_mask) if self.cfg.ctc_weight > 0 else None
        # The head and the loss run only where some target is in the loss.  Prompts (an ASR
        # example's speech, a TTS speaker prompt) and padding are most steps of an ASR/TTS
        # batch, and their 9-stream logits would be multiplied by zero.
        h, tgt, mask = _loss_positions(h, tgt, mask)
        if ctc is not None:
            logits0, rest, ctc_logits = self.head(h, local0=s0_local is not None, ctc_hidden=ctc[0])
        else:
            logits0, rest = self.head(h, local0=s0_local is not None)
        num_frames = loss_frames(steps, loss_mask, attention_mask, PAD)
        loss_sum, stats = multistream_loss(
            logits0, rest, tgt, mask, self.categories, self.cat_weights, self.head.acoustic_index,
            stream0_local=s0_local,
        )
        if ctc is not None and ctc[2]:
            _, lengths, targets = ctc
            ctc_sum = ctc_loss_sum(torch.log_softmax(ctc_logits.float(), dim=-1), lengths, targets)
            loss_sum = loss_sum + self.cfg.ctc_weight * ctc_sum
            stats["loss_ctc"] = (ctc_sum.detach() / sum(len(t) for t in targets)).item()
        if pairs:
            ga = self.cfg.guided_attention
            ga_sum, ga_count = guided_attention_sum(self._guided, ga.heads, pairs, ga.sigma)
            self._guided.clear()
            loss_sum = loss_sum + ga.weight * ga_sum
            stats["loss_guided"] = (ga_sum.detach() / (ga_count * len(ga.heads) * len(self._guided.layer_ids))).item()
        return loss_sum, num_frames, stats

    def _host_rows(self, ids0, mask0, attention_mask):
        """Stream 0's ids and loss mask, the category table and each row's
        length on the host, where the auxiliary losses find their pairs: one
        copy of the batch, not one per row."""
        B, S = ids0.shape
        lens = attention_mask[:, :-1].sum(1).tolist() if attention_mask is not None else [S] * B
        return ids0.cpu(), mask0.cpu(), self.categories.cpu(), [int(n) for n in lens]

    def _guided_pairs(self, ids0, mask0, attention_mask):
        """Per row, the (conditioning, target) runs of :func:`alignment_pairs`
        (only when some row has one and the model is training)."""
        if not self.training:
            return None
        ids_h, mask_h, cats_h, lens = self._host_rows(ids0, mask0, attention_mask)
        pairs = [alignment_pairs(ids_h[b], mask_h[b], cats_h, lens[b]) for b in range(len(lens))]
        return pairs if any(pairs) else None

    def _ctc_inputs(self, h, ids0, mask0, attention_mask):
        """The auxiliary CTC loss's inputs: hidden states of the prompt speech
        frames ``[T, P, D]`` (one column per (speech, text) pair of
        :func:`ctc_segments`, zero-padded; ``[0, 0, D]`` when the batch has
        none), their lengths, and the text targets (local ids, blank = 0)."""
        ids_h, mask_h, cats_h, lens = self._host_rows(ids0, mask0, attention_mask)
        text_start = self.vocab.block("text").start
        rows, frames, targets = [], [], []
        for b in range(len(lens)):
            for f, t in ctc_segments(ids_h[b], mask_h[b], cats_h, lens[b]):
                rows.append(np.full(len(f), b))
                frames.append(f)
                # a text target's id is the input at its own position
                targets.append(ids_h[b, torch.from_numpy(t)] - text_start + 1)
        lengths = [len(f) for f in frames]
        x = h.new_zeros(max(lengths, default=0), len(frames), h.shape[-1])
        if frames:
            # every pair's frames in one gather: x[t, pair] = h[row, frame]
            col = np.concatenate([np.full(n, i) for i, n in enumerate(lengths)])
            step = np.concatenate([np.arange(n) for n in lengths])
            src_b, src_t = (torch.from_numpy(np.concatenate(a)).to(h.device) for a in (rows, frames))
            x[torch.from_numpy(step).to(h.device), torch.from_numpy(col).to(h.device)] = h[src_b, src_t]
        return x, lengths, targets

    # ------------------------------------------------------------ save/load
    def save_pretrained(self, out_dir: str | os.PathLike, safe_serialization: bool = True) -> Path:
        """Write the model directory atomically (to ``out_dir.tmp``, then rename)."""
        from safetensors.torch import save_model

        out_dir = Path(out_dir)
        tmp = out_dir.with_name(out_dir.name + ".tmp")
        if tmp.exists():
            import shutil

            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        self.save_configs(tmp)
        save_model(self, str(tmp / "model.safetensors"))
        if out_dir.exists():
            import shutil

            old = out_dir.with_name(out_dir.name + ".old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out_dir)
        return out_dir

    def save_configs(self, directory: Path) -> None:
        """The files beside the weights: the body's ``config.json``,
        ``speechlm.yaml`` (with the vocabulary's fingerprint) and ``vocab.json``."""
        self.lm.config.save_pretrained(directory)
        cfgmod.save(dataclasses.replace(self.cfg, vocab_fingerprint=self.vocab.fingerprint()), Path(directory) / "speechlm.yaml")
        self.vocab.save(Path(directory) / "vocab.json")

    @classmethod
    def from_pretrained(cls, model_dir: str | os.PathLike, dtype: torch.dtype = torch.float32, device="cpu", vocab: JointVocab | None = None):
        """Load a directory written by :meth:`save_pretrained`.

        ``vocab``: the vocabulary the caller's data was built with; a
        checkpoint made for another vocabulary is refused with the difference.
        """
        from safetensors.torch import load_model
        from transformers import AutoConfig, AutoModelForCausalLM

        model_dir = Path(model_dir)
        for name in ("config.json", "speechlm.yaml", "vocab.json"):
            if not (model_dir / name).exists():
                raise FileNotFoundError(f"{model_dir}: missing {name} (not a model directory written by save_pretrained?)")
        files = weight_files(model_dir)
        saved_vocab = JointVocab.load(model_dir / "vocab.json")
        cfg = cfgmod.load(ModelConfig, model_dir / "speechlm.yaml")
        if cfg.vocab_fingerprint and cfg.vocab_fingerprint != saved_vocab.fingerprint():
            raise VocabError(
                f"{model_dir / 'vocab.json'} does not match the checkpoint: fingerprint {saved_vocab.fingerprint()}, "
                f"the model was trained with {cfg.vocab_fingerprint}"
            )
        if vocab is not None:
            vocab.check_matches(saved_vocab, f"checkpoint {model_dir}", sides=("data", "checkpoint"))
        hf_cfg = AutoConfig.from_pretrained(model_dir)
        if hf_cfg.vocab_size != saved_vocab.size:
            raise VocabError(f"{model_dir}: config.json has vocab_size {hf_cfg.vocab_size}, vocab.json {saved_vocab.size} ids")
        skip_init = _skip_random_init() if not getattr(hf_cfg, "tie_word_embeddings", True) else contextlib.nullcontext()
        with skip_init:  # every weight is loaded below (a missing one is an error), so a random init is wasted time
            lm = AutoModelForCausalLM.from_config(hf_cfg, attn_implementation=cfg.attn_implementation, dtype=dtype)
        model = cls(lm, saved_vocab, cfg)
        if len(files) == 1:
            missing, unexpected = load_model(model, str(files[0]), strict=False, device=str(device))
        else:
            missing, unexpected = _load_shards(model, files, device)
        if missing or unexpected:
            where = files[0] if len(files) == 1 else model_dir / INDEX_FILE
            raise RuntimeError(f"{where}: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")
        return model.to(device=device, dtype=dtype)

    # ----------------------------------------------------------- utilities
    def num_parameters(self) -> int:
        # ZeRO-3 leaves each rank an empty placeholder and records the full size as ds_numel
        return sum(getattr(p, "ds_numel", p.numel()) for p in {id(p): p for p in self.parameters()}.values())
