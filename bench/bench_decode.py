"""Decoding benchmarks (issue 5), CPU.

batched_decode_speedup_8  time to TTS-decode 8 utterances one by one / in one batch
                          (the small recipe's model shape: 6 layers, width 256, its vocabulary)
tts_rtf_cpu               wall seconds per second of generated speech, batch 1, token
                          generation plus the mel codec's Griffin-Lim vocoding
tts_rtf_cpu_batch8        the same per second of speech when 8 utterances share a batch

The model is randomly initialised (speed does not depend on the weights) and
lengths are forced (min_len = max_len) so every run generates the same frames.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import Timer, log, report  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

from espnet2_speechlm.infer.generate import GenerationConfig, SamplingConfig, generate  # noqa: E402
from espnet2_speechlm.model.build import random_body  # noqa: E402
from espnet2_speechlm.tasks import build_prompt  # noqa: E402
from espnet2_speechlm.tokenizers.melcodec import MelCodecConfig, MelRVQCodec  # noqa: E402
from espnet2_speechlm.vocab import JointVocab  # noqa: E402

FRAMES = 150  # 3 s of speech per utterance
SMALL = dict(model_type="llama", hidden_size=256, num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=4,
             intermediate_size=768, max_position_embeddings=2048, tie_word_embeddings=True)


def main():
    vocab = JointVocab.build({"semantic": 500, "acoustic": 8 * 1024, "text": 1000})
    model = random_body(SMALL, vocab).eval()
    rng = np.random.default_rng(0)
    prompts = [build_prompt(vocab, "tts", {"text": rng.integers(0, 1000, int(rng.integers(8, 20)))}) for _ in range(8)]
    topk = SamplingConfig(temperature=0.8, top_k=30)
    cfg = GenerationConfig(semantic=topk, acoustic=topk, min_len=FRAMES, max_len=FRAMES)
    generate(model, prompts[:1], "audio", GenerationConfig(min_len=5, max_len=5))  # warm-up
    with Timer() as one:
        singles = [generate(model, [p], "audio", cfg)[0] for p in prompts]
    with Timer() as batch:
        batched = generate(model, prompts, "audio", cfg)
    assert all(len(r.tokens) == FRAMES for r in singles + batched)
    log(f"[decode] 8 x {FRAMES} frames: one by one {one.seconds:.1f}s, one batch {batch.seconds:.1f}s")
    report("batched_decode_speedup_8", one.seconds / batch.seconds, "ratio")

    codec = MelRVQCodec(MelCodecConfig(), books=torch.randn(8, 1024, 80) * 0.1)
    with Timer() as voc:
        for r in singles:
            wav = codec.decode(r.tokens[:, 1:])
    seconds_of_speech = 8 * FRAMES / 50
    assert abs(len(wav) / 16000 - FRAMES / 50) < 0.05
    log(f"[decode] vocoding {seconds_of_speech:.0f}s of speech: {voc.seconds:.1f}s")
    report("tts_rtf_cpu", (one.seconds + voc.seconds) / seconds_of_speech, "s/s")
    report("tts_rtf_cpu_batch8", (batch.seconds + voc.seconds) / seconds_of_speech, "s/s")


if __name__ == "__main__":
    main()
