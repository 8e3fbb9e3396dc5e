"""Import a released OpusLM model (ESPnet) as this toolkit's model directory.

    python -m espnet2_speechlm.bin.import_opuslm --model_dir OpusLM_1.7B_Anneal --out exp/opuslm_1.7b \\
        --base_llm SmolLM2-1.7B [--speech_tokenizer released_tokenizers/]

``--model_dir``: the downloaded release (``model.pth``, ``config.yaml``,
``decode_default.yaml``).  ``--base_llm``: the body's Hugging Face
``config.json`` and tokenizer files (SmolLM2-1.7B for the 1.7B model,
OLMo-2-1124-7B for the 7B; no weights needed); default: the release
directory, if they were put there.  ``--speech_tokenizer``: a tokenizer
directory, or the downloaded ``espnet/xeus`` and
``ftshijt/espnet_codec_dac_large_v1.4_360epoch`` files (found by name).

The result loads with ``SpeechLM.from_pretrained(out)`` and fine-tunes with
``model.init=pretrained``.  What was found in the files is printed and kept
in ``out/opuslm_import.json``.  Weights larger than ``--max_shard_gb`` are
split into Hugging Face shards.
"""

from __future__ import annotations

import argparse
import sys


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_dir", required=True, help="released model directory (model.pth, config.yaml, decode_default.yaml)")
    p.add_argument("--out", required=True, help="the model directory to write")
    p.add_argument("--base_llm", help="directory with the body's Hugging Face config.json and tokenizer files")
    p.add_argument("--speech_tokenizer", help="tokenizer directory, or the downloaded released tokenizer files")
    p.add_argument("--max_shard_gb", type=float, default=5.0, help="largest weight file (GB) before sharding")
    p.add_argument("--skip_tokenizer_check", action="store_true",
                   help="do not refuse a text tokenizer whose token names differ from the release's text block")
    p.add_argument("--device", default="cpu", help="device for building the speech tokenizer")
    return p


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    from ..release.opuslm import ReleaseError, import_opuslm

    try:
        import_opuslm(args.model_dir, args.out, base_llm=args.base_llm, speech_tokenizer=args.speech_tokenizer,
                      max_shard_bytes=int(args.max_shard_gb * 1e9), check_tokenizer=not args.skip_tokenizer_check,
                      device=args.device)
    except (ReleaseError, FileNotFoundError, ValueError) as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
