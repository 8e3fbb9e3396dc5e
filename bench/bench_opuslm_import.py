"""Peak memory of importing a released OpusLM model (bin/import_opuslm), on a synthetic 7B-shaped file.

Writes a release directory in the released format (``model.pth`` of bf16
tensors under the released key names, ``config.yaml`` with a full-size
``token_list``, ``decode_default.yaml``) with the OLMo-2-7B shapes of OpusLM 7B
by default (hidden 4096, 32 layers, FFN 11008, 113,870 ids: about 14.6 GB),
then imports it in a subprocess, so that the peak resident memory measured is
the import's own.  The weights' values do not matter here: one random block is
repeated.  Prints::

    opuslm_import_peak_rss_ratio  <peak resident memory / largest written shard>   x
    opuslm_import_peak_rss_gb     <peak resident memory of the import>              GB
    opuslm_import_largest_shard_gb <largest weight file written>                    GB
    opuslm_import_s               <wall-clock seconds of the import command>        s

Needs free disk for the file and its import (about 2.1 x the model; checked
first); ``--release_dir`` imports a release written before instead.  ``--hidden``, ``--layers``, ``--ffn``, ``--vocab_text`` shrink the
shape where that much disk is not free; everything is deleted afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import log, report  # noqa: E402  (puts ROOT first on sys.path)

CHILD = r"""
import json, sys, time
from espnet2_speechlm.release.opuslm import import_opuslm
t = time.time()
import_opuslm(sys.argv[1], sys.argv[2], base_llm=sys.argv[3], max_shard_bytes=int(sys.argv[4]), log=lambda m: print(m, file=sys.stderr))
hwm = [int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith('VmHWM:')][0]
print(json.dumps({"peak_rss": hwm, "seconds": time.time() - t}))
"""


def write_release(d: Path, hidden: int, layers: int, heads: int, ffn: int, vocab_text: int, semantic=5000, codebook=1024):
    """A release directory of the given shape; the tensors come from one memory-mapped scratch file."""
    import numpy as np
    import torch
    import yaml
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from espnet2_speechlm.release.testing import replica_token_list, write_tokenizer

    rel, base = d / "release", d / "base_llm"
    rel.mkdir(parents=True)
    write_tokenizer(base)
    tok = AutoTokenizer.from_pretrained(base)
    conf = AutoConfig.for_model("olmo2", vocab_size=vocab_text, hidden_size=hidden, num_hidden_layers=layers,
                                num_attention_heads=heads, num_key_value_heads=heads, intermediate_size=ffn,
                                rms_norm_eps=1e-6, rope_theta=500000.0, max_position_embeddings=4096, tie_word_embeddings=False)
    conf.save_pretrained(base)
    tl, tb = replica_token_list(tok.convert_ids_to_tokens(list(range(len(tok)))), vocab_text, semantic, codebook)
    V = len(tl)
    with torch.device("meta"):
        body = AutoModelForCausalLM.from_config(conf).model
    shapes = {"corelm.decoders.model." + k: tuple(v.shape) for k, v in body.state_dict().items() if k != "embed_tokens.weight"}
    shapes.update({"corelm.emb.weight": (V, hidden), "corelm.lm_head.weight": (V, hidden), "corelm.head_emb.weight": (12, hidden)})
    total = sum(int(np.prod(s)) for s in shapes.values())
    log(f"[bench] synthetic release: {len(shapes)} tensors, {total / 1e9:.2f} G parameters, {2 * total / 1e9:.2f} GB")
    scratch = d / "scratch.bin"
    block = torch.randn(1 << 24).to(torch.bfloat16).view(torch.int16).numpy().tobytes()  # 32 MB of bf16 values
    with open(scratch, "wb") as f:
        left = 2 * total
        while left > 0:
            f.write(block[: min(left, len(block))])
            left -= len(block)
    sd, off = {}, 0
    for k, s in shapes.items():
        n = int(np.prod(s))
        sd[k] = torch.from_numpy(np.memmap(scratch, dtype=np.int16, mode="c", offset=off, shape=s)).view(torch.bfloat16)
        off += 2 * n
    sd["criterion.lm_head.weight"] = sd["corelm.lm_head.weight"]
    torch.save(sd, rel / "model.pth")
    del sd
    scratch.unlink()
    config = {"token_list": tl, "token_bias": tb, "corelm": "ar_delay", "corelm_conf": {"share_emb": False},
              "transformer_conf": {"hf_model_tag": "allenai/OLMo-2-1124-7B", "n_ctx": 16384},
              "codec_token_per_frame": 9, "codec_token_in_use": 9, "speaker_prompt_length": 500}
    (rel / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (rel / "decode_default.yaml").write_text(yaml.safe_dump({"top_k": 30, "temperature": 0.8, "maxlen": 2048, "minlen": 3}))
    return rel, base, 2 * total


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, default=4096)
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--ffn", type=int, default=11008)
    p.add_argument("--vocab_text", type=int, default=100352, help="text block (the body's vocabulary)")
    p.add_argument("--max_shard_gb", type=float, default=5.0)
    p.add_argument("--workdir", default=None, help="where to write (default: a temporary directory)")
    p.add_argument("--release_dir", default=None,
                   help="import this already written release instead (model.pth, config.yaml, decode_default.yaml, base_llm/)")
    a = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench_opuslm_import_", dir=a.workdir))
    try:
        if a.release_dir:
            rel, base = Path(a.release_dir), Path(a.release_dir) / "base_llm"
        else:
            params = a.layers * (4 * a.hidden * a.hidden + 3 * a.hidden * a.ffn) + 2 * (a.vocab_text + 13518) * a.hidden
            need = 2.2 * 2 * params
            free = shutil.disk_usage(work).free
            if free < need:
                log(f"[bench] needs about {need / 1e9:.1f} GB of free disk in {work.parent}, has {free / 1e9:.1f} GB: "
                    "give a smaller shape (--hidden, --layers, --ffn, --vocab_text) or another --workdir")
                return 1
            t = time.time()
            rel, base, nbytes = write_release(work, a.hidden, a.layers, a.heads, a.ffn, a.vocab_text)
            log(f"[bench] wrote {rel / 'model.pth'} ({nbytes / 1e9:.2f} GB) in {time.time() - t:.0f} s")
        out = work / "imported"
        env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
        r = subprocess.run([sys.executable, "-c", CHILD, str(rel), str(out), str(base), str(int(a.max_shard_gb * 1e9))],
                           env=env, stdout=subprocess.PIPE, text=True)
        if r.returncode:
            raise SystemExit(f"import failed with exit code {r.returncode}")
        res = json.loads(r.stdout.strip().splitlines()[-1])
        shards = [f.stat().st_size for f in out.glob("*.safetensors")]
        largest = max(shards)
        log(f"[bench] {len(shards)} weight file(s), largest {largest / 1e9:.2f} GB; peak RSS {res['peak_rss'] / 1e9:.2f} GB")
        report("opuslm_import_peak_rss_ratio", res["peak_rss"] / largest, "x")
        report("opuslm_import_peak_rss_gb", res["peak_rss"] / 1e9, "GB")
        report("opuslm_import_largest_shard_gb", largest / 1e9, "GB")
        report("opuslm_import_s", res["seconds"], "s")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
