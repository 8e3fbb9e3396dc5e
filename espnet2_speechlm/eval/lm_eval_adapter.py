"""The speech LM as a model of EleutherAI's lm-evaluation-harness.

    python -m espnet2_speechlm.bin.lm_eval --model espnet2_speechlm \\
        --model_args pretrained=exp/packed,batch_size=8 --tasks mmlu --num_fewshot 5

Text is scored as a textlm sequence (``<sos/eos> <textlm_task>
<text_bpe_start/end> ids...``, see eval/text_ability.py).  Context and
continuation are tokenised separately and concatenated, so the continuation's
tokens are exactly the ones scored.  As in the perplexity scorer, the very
first token of a sequence is never scored (it has no text context), which
matters only for an empty context.
"""

from __future__ import annotations

import numpy as np
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from .text_ability import speechlm_logprobs


@register_model("espnet2_speechlm")
class SpeechLMHarness(LM):
    def __init__(self, pretrained: str, device: str = "cpu", batch_size: int | str = 8, max_gen_toks: int = 64, **kwargs):
        super().__init__()
        import torch

        from ..infer.api import SpeechLM

        # the harness passes its own --device (default cuda); fall back to the CPU when there is none
        if str(device).startswith("cuda") and not torch.cuda.is_available():
            device = "cpu"
        self.lm = SpeechLM.from_pretrained(pretrained, device=device)
        if self.lm.text_tokenizer is None:
            raise ValueError(f"{pretrained}: the model directory has no text tokenizer")
        self.tok = self.lm.text_tokenizer
        self.bs = int(batch_size) if str(batch_size).isdigit() else 8
        self.max_gen_toks = int(max_gen_toks)

    def _enc(self, text: str) -> list[int]:
        return list(self.tok.encode(text)) if text else []

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        pairs = [(self._enc(r.args[0]), self._enc(r.args[1])) for r in requests]
        seqs = [c + k for c, k in pairs]
        greedy: list = []
        lps = speechlm_logprobs(self.lm.model, seqs, self.bs, greedy)
        out = []
        for (c, k), lp, g in zip(pairs, lps, greedy):
            first = max(len(c) - 1, 0)  # index in lp of the first continuation token
            out.append((float(lp[first:].sum()), bool(np.all(g[first:]))))
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        seqs = [self._enc(r.args[0]) for r in requests]
        return [float(lp.sum()) for lp in speechlm_logprobs(self.lm.model, seqs, self.bs)]

    def generate_until(self, requests, disable_tqdm: bool = False):
        from ..infer.api import DecodeConfig
        from ..infer.config import GenerationConfig, SamplingConfig

        out = []
        for r in requests:
            ctx, kw = r.args
            kw = dict(kw or {})
            until = kw.get("until") or []
            if isinstance(until, str):
                until = [until]
            cfg = DecodeConfig(GenerationConfig(text=SamplingConfig(greedy=True), max_len=int(kw.get("max_gen_toks", self.max_gen_toks))))
            text = self.lm.continue_text(ctx, cfg) if ctx.strip() else ""
            for u in until:
                if u and u in text:
                    text = text[: text.index(u)]
            out.append(text)
        return out
