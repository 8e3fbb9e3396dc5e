"""Text perplexity of a speech LM on held-out text (and of its base text LLM).

    python -m espnet2_speechlm.bin.score_ppl --model_dir exp/speechlm/pack --text dump/raw/test/text \\
        --out_dir exp/speechlm/ppl_test [--hf_llm_dir exp/text_llm]

Every line's tokens after the first are scored (see eval/text_ability.py),
so the speech LM's and the text LLM's perplexities compare directly; with
``--hf_llm_dir`` both rows are written, plus their ratio.  Writes
RESULTS.md / results.json into ``--out_dir``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def read_lines(path: Path) -> list[str]:
    """A Kaldi text file (``utt words``) or, with ``--plain``, one text per line."""
    from ..tokenizers.audio import read_table

    return [v for _, v, _ in read_table(path, min_fields=1) if v.strip()]


def main(argv=None) -> int:
    import torch

    from ..infer.api import SpeechLM
    from ..score.results import make_row, write_results
    from ..eval.text_ability import hf_logprobs, perplexity, speech_logprobs, speechlm_logprobs

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_dir", required=True, help="packed speech LM directory")
    p.add_argument("--text", help="Kaldi text file of held-out text")
    p.add_argument("--token_scp", help="dumped speech tokens of held-out speech: also score speech continuation")
    p.add_argument("--out_dir", required=True)
    p.add_argument("--hf_llm_dir", help="also score this Hugging Face text LLM (the initialisation)")
    p.add_argument("--max_lines", type=int, default=0)
    p.add_argument("--test_set", default="-")
    p.add_argument("--model", default="-")
    p.add_argument("--batch_size", type=int, default=16)
    a = p.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    if not a.text and not a.token_scp:
        p.error("give --text and/or --token_scp")
    lm = SpeechLM.from_pretrained(a.model_dir)
    rows, msgs = [], []
    if a.token_scp:
        from ..tokenizers.token_io import TokenReader

        toks = TokenReader(a.token_scp, lm.vocab.num_streams)
        utts = sorted(toks)[: a.max_lines or None]
        frames = [toks[u] for u in utts if len(toks[u]) >= 2]
        sppl, sn = perplexity(speech_logprobs(lm.model, frames))
        rows.append(make_row("audiolm", a.test_set, "semantic_perplexity", sppl, len(frames), a.model, "-", frames=sn))
        msgs.append(f"speech continuation: semantic-token perplexity {sppl:.3f} over {sn} frames")
    if not a.text:
        write_results(a.out_dir, rows, title=f"Perplexity: {a.test_set}")
        print("[score_ppl] " + "; ".join(msgs), file=sys.stderr)
        return 0
    lines = read_lines(Path(a.text))
    if a.max_lines:
        lines = lines[: a.max_lines]
    if not lines:
        print(f"ERROR: {a.text}: no text lines", file=sys.stderr)
        return 1
    ids = [list(lm.text_tokenizer.encode(t)) for t in lines]
    ids = [x for x in ids if len(x) >= 2]
    ppl, n = perplexity(speechlm_logprobs(lm.model, ids, a.batch_size))
    rows.append(make_row("textlm", a.test_set, "perplexity", ppl, len(ids), a.model, "-", tokens=n))
    msg = "; ".join(msgs + [f"text perplexity {ppl:.3f} over {n} tokens of {len(ids)} lines"])
    if a.hf_llm_dir:
        from transformers import AutoModelForCausalLM

        base = AutoModelForCausalLM.from_pretrained(a.hf_llm_dir, dtype=torch.float32).eval()
        bppl, _ = perplexity(hf_logprobs(base, ids, a.batch_size))
        rows.append(make_row("textlm", a.test_set, "perplexity", bppl, len(ids), Path(a.hf_llm_dir).name, "-", tokens=n))
        rows.append(make_row("textlm", a.test_set, "perplexity_ratio_to_base", ppl / bppl, len(ids), a.model, "-"))
        msg += f"; base text LLM {bppl:.3f} (ratio {ppl / bppl:.3f})"
    write_results(a.out_dir, rows, title=f"Perplexity: {a.test_set}")
    print(f"[score_ppl] {msg}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
