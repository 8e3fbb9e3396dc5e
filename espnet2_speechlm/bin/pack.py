"""Pack a trained model with its tokenizers into one self-contained directory.

    python -m espnet2_speechlm.bin.pack --checkpoint exp/speechlm --out exp/speechlm/pack \\
        --text_tokenizer exp/text_tokenizer/bpe.model --speech_tokenizer exp/speech_tokenizer \\
        [--decode_config conf/decode_defaults.yaml]

``--checkpoint``: an experiment directory (its averaged model ``model_avg``
when that was averaged up to its latest checkpoint, else the latest
checkpoint), its ``checkpoints`` directory (the latest), one checkpoint, or
an exported model directory; the one used is printed.  The result loads with
``SpeechLM.from_pretrained(out)`` on any machine (no absolute paths inside).
"""

from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    from .. import config as cfgmod
    from ..infer.api import DecodeDefaults, pack
    from ..train.checkpoint import find_model_dir

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--text_tokenizer", help="HF tokenizer directory or sentencepiece .model")
    p.add_argument("--speech_tokenizer", help="fitted speech tokenizer directory")
    p.add_argument("--decode_config", help="YAML with per-task decode defaults (DecodeDefaults keys: asr, tts, textlm, audiolm)")
    a = p.parse_args(argv)
    try:
        model_dir = find_model_dir(a.checkpoint)
        defaults = cfgmod.load(DecodeDefaults, a.decode_config) if a.decode_config else None
        out = pack(model_dir, a.out, a.text_tokenizer, a.speech_tokenizer, defaults)
    except (FileNotFoundError, cfgmod.ConfigError, ValueError) as e:  # ValueError: tokenizers that do not fit
        print(f"ERROR: {e}", file=sys.stderr)
        return 1
    print(f"[pack] {model_dir} + tokenizers -> {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
