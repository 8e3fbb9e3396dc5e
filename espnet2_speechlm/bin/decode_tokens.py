"""Turn speech tokens back into 16 kHz audio (TTS outputs, or listening to what the model sees).

    python -m espnet2_speechlm.bin.decode_tokens --tokens dump/tokens/test/tokens.scp \\
        --tokenizer_dir exp/speech_tokenizer --out_dir exp/listen --utts utt1,utt2

``--tokens`` is a ``tokens.scp`` or ``.ark`` (flattened int32 frames, as the
dump writes them), or a ``.npy`` file holding one ``[T, 1 + K]`` (or
``[T, K]`` acoustic-only) array.  Frames are local ids.  Writes
``out_dir/<utt>.wav`` and ``out_dir/wav.scp``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", required=True)
    p.add_argument("--tokenizer_dir", required=True, help="directory with tokenizer.json (or a dump dir, which records one)")
    p.add_argument("--out_dir", required=True)
    p.add_argument("--utts", default=None, help="comma-separated ids to decode (default: all)")
    p.add_argument("--limit", type=int, default=None, help="decode at most this many utterances")
    p.add_argument("--device", default="cpu")
    p.add_argument("--num_threads", type=int, default=1)
    args = p.parse_args(argv)

    import numpy as np
    import soundfile as sf
    import torch

    from ..tokenizers.speech import SpeechTokenizer
    from ..tokenizers.token_io import TokenReader, write_lines_atomic

    torch.set_num_threads(args.num_threads)
    tok = SpeechTokenizer.load(args.tokenizer_dir, device=args.device)
    src = Path(args.tokens)
    if src.suffix == ".npy":
        table = {src.stem: np.load(src)}
    else:
        table = TokenReader(src, tok.num_streams)
    utts = args.utts.split(",") if args.utts else list(table)
    missing = [u for u in utts if u not in table]
    if missing:
        raise SystemExit(f"ERROR: {src} has no utterance(s) {missing[:10]}")
    if args.limit is not None:
        utts = utts[: args.limit]
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0, secs, lines = time.time(), 0.0, []
    for u in utts:
        wav = tok.decode(table[u])
        path = out / f"{u}.wav"
        tmp = out / f".{u}.tmp.wav"
        sf.write(tmp, np.clip(wav, -1, 1), tok.sample_rate, subtype="PCM_16")
        tmp.replace(path)
        secs += len(wav) / tok.sample_rate
        lines.append(f"{u} {path.resolve()}")
    write_lines_atomic(out / "wav.scp", lines)
    print(f"[decode_tokens] wrote {len(utts)} wav files ({secs:.1f} s of audio) to {out} in {time.time() - t0:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
