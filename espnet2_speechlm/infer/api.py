"""``SpeechLM``: one object that does ASR, TTS and text / speech continuation.

    lm = SpeechLM.from_pretrained("exp/speechlm_pack")
    lm.asr("utt.wav")                      -> "the transcript"
    lm.tts("hello world", speaker_prompt="ref.wav")  -> float32 16 kHz waveform
    lm.continue_text("once upon a")        -> "time there was"
    lm.continue_speech(wav)                -> float32 16 kHz waveform (prompt + continuation)

A packed model directory holds the model (``config.json``, ``model.safetensors``,
``speechlm.yaml``, ``vocab.json``), ``text_tokenizer/`` (a Hugging Face
tokenizer directory, or ``text_tokenizer.model`` for sentencepiece),
``speech_tokenizer/`` (``tokenizer.json`` and its files) and ``decode.yaml``
(the default :class:`DecodeConfig` per task).  :func:`pack` writes one.

Audio in: a path (any format and rate; resampled to 16 kHz) or a 1-D float
array at 16 kHz.  Audio out: 1-D float32 arrays at 16 kHz.  (16 kHz and 50
frames per second are the toolkit's rates; a speech tokenizer that records
others in its ``tokenizer.json`` is followed: ``SpeechLM.sample_rate``,
``SpeechLM.frame_rate``.)

The released OpusLM models load the same way, from the directory that
``bin/import_opuslm`` writes or straight from the released files
(``model.pth``, ``config.yaml``, ``decode_default.yaml``; the body's Hugging
Face config and tokenizer beside them or in ``base_llm``).  For them (their
``speechlm.yaml`` records ``convention: espnet_opuslm``) prompts and decoding
follow the release: a TTS speaker prompt is a random window of
``speaker_prompt_frames`` (500) frames, pad frames filling a shorter one; text
continuation starts with the text itself (no task prefix); generation follows
``infer/opuslm_rules.py``.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .. import config as cfgmod
from ..tasks import build_prompt, build_sequence, entry_frames
from ..tokenizers.audio import FRAME_RATE, SAMPLE_RATE
from .beam_search import beam_search
from .config import GenerationConfig, GenerationResult, SamplingConfig
from .generate import generate
from .opuslm_rules import speaker_window

# a candidate's waveform and the text it should say -> an error, lower is better
# (n-best TTS; e.g. the WER of an ASR transcript: score.whisper.wer_scorer)
Scorer = Callable[[np.ndarray, str], float]


@dataclass
class DecodeConfig:
    """How one task is decoded: sampling and length limits (``generation``,
    whose ``*_len_ratio`` limits are relative to the input's length: speech
    frames for ASR, text tokens for TTS), batching, n-best TTS."""

    generation: GenerationConfig = field(default_factory=GenerationConfig)
    batch_size: int = 8
    nbest: int = 1  # TTS: sample n candidates, keep the one the scorer likes best
    speaker_prompt_frames: int = 150


# Decode configs written before the length limits moved into ``generation`` (packed
# models' decode.yaml, recipe configs) kept them at the top level.
LEGACY_LENGTH_KEYS = ("min_len", "max_len", "min_len_ratio", "max_len_ratio")


def upgrade_decode_dict(data: dict, where: str) -> dict:
    """A decode config dict with top-level length limits moved into ``generation``."""
    data = dict(data)
    moved = [k for k in LEGACY_LENGTH_KEYS if k in data]
    if moved:
        gen = dict(data.get("generation") or {})
        both = [k for k in moved if k in gen]
        if both:
            raise ValueError(f"{where}: {', '.join(both)} given both at the top level and under generation")
        gen.update({k: data.pop(k) for k in moved})
        data["generation"] = gen
    return data


def upgrade_decode_override(item: str) -> str:
    """``max_len=N`` (the old spelling) -> ``generation.max_len=N``."""
    key = item.split("=", 1)[0].strip()
    return f"generation.{item.strip()}" if key in LEGACY_LENGTH_KEYS else item


def load_decode_defaults(path) -> DecodeDefaults:
    """decode.yaml of a packed model: the per-task decode configs."""
    data = cfgmod.load_yaml(path) or {}
    data = {task: upgrade_decode_dict(d, f"{path}: {task}") if isinstance(d, dict) else d for task, d in data.items()}
    return cfgmod.from_dict(DecodeDefaults, data, str(path))


def default_decode_configs() -> dict[str, DecodeConfig]:
    greedy = SamplingConfig(greedy=True)
    topk = SamplingConfig(temperature=0.8, top_k=30)  # the released TTS defaults
    return {
        "asr": DecodeConfig(GenerationConfig(text=greedy, max_len=400, max_len_ratio=1.0)),
        "tts": DecodeConfig(GenerationConfig(semantic=topk, acoustic=topk, min_len_ratio=1.0, max_len=1500, max_len_ratio=25.0)),
        "textlm": DecodeConfig(GenerationConfig(text=SamplingConfig(temperature=0.8, top_k=50), max_len=100)),
        "audiolm": DecodeConfig(GenerationConfig(semantic=topk, acoustic=topk, min_len=50, max_len=250)),
    }


def decode_batch(model, prompts: Sequence[np.ndarray], modality: str | Sequence[str], cfg: GenerationConfig,
                 input_lens: Sequence[int] | None = None) -> list[GenerationResult]:
    """One target per prompt: beam search for text targets when ``cfg.beam_size``
    > 1 (:mod:`.beam_search`), sampling otherwise (:mod:`.generate`)."""
    release = getattr(getattr(model, "cfg", None), "convention", "toolkit") == "espnet_opuslm"
    if cfg.beam_size > 1 and not release:  # the release's decoding has no beam search: generate() says so
        mods = [modality] * len(prompts) if isinstance(modality, str) else list(modality)
        if any(m != "text" for m in mods):
            raise ValueError(f"beam_size={cfg.beam_size}: beam search is for text targets (ASR); speech is sampled")
        return beam_search(model, prompts, cfg, input_lens)
    return generate(model, prompts, modality, cfg, input_lens)


@dataclass
class DecodeDefaults:
    asr: DecodeConfig = field(default_factory=lambda: default_decode_configs()["asr"])
    tts: DecodeConfig = field(default_factory=lambda: default_decode_configs()["tts"])
    textlm: DecodeConfig = field(default_factory=lambda: default_decode_configs()["textlm"])
    audiolm: DecodeConfig = field(default_factory=lambda: default_decode_configs()["audiolm"])


def _load_speech_tokenizer(d: Path, vocab, vocab_file, device):
    """A speech tokenizer directory, checked against the model's vocabulary before
    its models are loaded; the released OpusLM files are turned into one first."""
    import tempfile

    from ..tokenizers.speech import TOKENIZER_FILE, SpeechTokenizer, check_fits_vocab

    if not (d / TOKENIZER_FILE).exists():
        if not d.is_dir():
            raise FileNotFoundError(f"speech tokenizer not found: {d}")
        from ..tokenizers.opuslm import build_release_tokenizer

        with tempfile.TemporaryDirectory() as tmp:  # the loaded tokenizer keeps nothing open in it
            built = build_release_tokenizer(d, Path(tmp) / "speech_tokenizer", device=device)
            return _load_speech_tokenizer(built, vocab, vocab_file, device)
    check_fits_vocab(d, vocab, vocab_file)
    return SpeechTokenizer.load(d, device=device)


def select_best(wavs: Sequence[np.ndarray], text: str, scorer: Scorer) -> int:
    """n-best TTS: the index of the waveform ``scorer`` gives the lowest error
    for ``text`` (the first of equals)."""
    return int(np.argmin([scorer(w, text) for w in wavs]))


def load_audio(audio, rate: int = SAMPLE_RATE) -> np.ndarray:
    """Path (any format and rate, resampled) or array (already at ``rate``) ->
    1-D float32 at ``rate`` Hz.  Integer arrays are PCM samples (int16 as
    soundfile and scipy read WAV files) and are scaled to [-1, 1)."""
    if isinstance(audio, (str, os.PathLike)):
        from ..tokenizers.audio import AudioItem, load_item

        return load_item(AudioItem(str(audio), str(audio)), target_rate=rate)
    wav = np.asarray(audio)
    if wav.dtype.kind == "i":
        wav = wav.astype(np.float32) / float(2 ** (8 * wav.dtype.itemsize - 1))
    elif wav.dtype.kind == "u":  # 8-bit WAV: unsigned, centred on 128
        half = float(2 ** (8 * wav.dtype.itemsize - 1))
        wav = (wav.astype(np.float32) - half) / half
    wav = np.asarray(wav, dtype=np.float32)
    if wav.ndim != 1 or wav.size == 0:
        raise ValueError(f"audio must be a non-empty 1-D array at {rate} Hz (or a file path), got shape {wav.shape}")
    return wav


class SpeechLM:
    def __init__(self, model, text_tokenizer, speech_tokenizer, defaults: DecodeDefaults | None = None):
        self.model = model.eval()
        self.vocab = model.vocab
        self.text_tokenizer = text_tokenizer
        self.speech_tokenizer = speech_tokenizer
        self.defaults = defaults or DecodeDefaults()
        # the released OpusLM models' own prompt conventions (see the module doc)
        self.release = getattr(getattr(model, "cfg", None), "convention", "toolkit") == "espnet_opuslm"
        if text_tokenizer is not None and text_tokenizer.vocab_size > self.vocab.block("text").size:
            raise ValueError(f"text tokenizer has {text_tokenizer.vocab_size} ids, the model's text block {self.vocab.block('text').size}")

    # ------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device: str = "auto", dtype: torch.dtype | None = None,
                        base_llm: str | os.PathLike | None = None, speech_tokenizer: str | os.PathLike | None = None) -> "SpeechLM":
        """``path``: a packed / imported model directory, or a released OpusLM
        directory (``model.pth`` + ``config.yaml``; ``base_llm``: the body's HF
        config and tokenizer when they are not beside it).  ``speech_tokenizer``:
        a tokenizer directory (default ``path/speech_tokenizer``) or, for the
        released models, the downloaded XEUS / DAC / k-means files."""
        from ..model import MultiStreamLM
        from ..release.opuslm import is_release_dir
        from ..tokenizers.text import load_text_tokenizer

        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"model directory not found: {path}")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if str(device).startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError(f"device {device!r} asked for, but torch sees no CUDA GPU (use device='cpu' or 'auto')")
        if dtype is None:
            dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        text_tok = None
        if is_release_dir(path):
            from ..release.opuslm import load_release_model

            model, defaults, body_dir = load_release_model(path, base_llm, dtype=dtype, device=device)
            text_tok = load_text_tokenizer(body_dir)
        else:
            model = MultiStreamLM.from_pretrained(path, dtype=dtype, device=device)
            if (path / "text_tokenizer").is_dir():
                text_tok = load_text_tokenizer(path / "text_tokenizer")
            elif (path / "text_tokenizer.model").exists():
                text_tok = load_text_tokenizer(path / "text_tokenizer.model")
            defaults = load_decode_defaults(path / "decode.yaml") if (path / "decode.yaml").exists() else DecodeDefaults()
        st = Path(speech_tokenizer) if speech_tokenizer is not None else path / "speech_tokenizer"
        vocab_file = path / "vocab.json" if (path / "vocab.json").exists() else path / "config.yaml"
        speech_tok = _load_speech_tokenizer(st, model.vocab, vocab_file, device) if (speech_tokenizer is not None or st.is_dir()) else None
        return cls(model, text_tok, speech_tok, defaults)

    # ------------------------------------------------------------- helpers
    @property
    def sample_rate(self) -> int:
        """Hz of the audio it reads and writes (its speech tokenizer's, else the toolkit's)."""
        return self.speech_tokenizer.sample_rate if self.speech_tokenizer is not None else SAMPLE_RATE

    @property
    def frame_rate(self) -> float:
        """Speech frames per second (its speech tokenizer's, else the toolkit's)."""
        return self.speech_tokenizer.frame_rate if self.speech_tokenizer is not None else FRAME_RATE

    def _need(self, what: str):
        tok = self.text_tokenizer if what == "text" else self.speech_tokenizer
        if tok is None:
            raise RuntimeError(f"this model directory has no {what} tokenizer (pack it with one: infer.api.pack)")
        return tok

    def encode_text(self, text: str) -> np.ndarray:
        if not text or not text.strip():
            raise ValueError("empty text: nothing to synthesise or continue")
        return np.asarray(self._need("text").encode(text), dtype=np.int64)

    def encode_speech(self, audios: Sequence) -> list[np.ndarray]:
        wavs = [load_audio(a, self.sample_rate) for a in audios]
        return [np.asarray(f, dtype=np.int64) for f in self._need("speech").encode(wavs)]

    def decode_speech(self, frames: np.ndarray) -> np.ndarray:
        if len(frames) == 0:
            return np.zeros(0, dtype=np.float32)
        return np.asarray(self._need("speech").decode(frames), dtype=np.float32)

    def _run(self, prompts, modality, input_lens, cfg: DecodeConfig):
        out = []
        bs = max(1, cfg.batch_size)
        for i in range(0, len(prompts), bs):
            out += decode_batch(self.model, prompts[i : i + bs], modality, cfg.generation, input_lens[i : i + bs])
        return out

    # ------------------------------------------------------------------ ASR
    def asr_batch(self, audios: Sequence, cfg: DecodeConfig | None = None) -> list[str]:
        return self.asr_tokens([self._as_frames(a) for a in audios], cfg)

    def asr_tokens(self, speech_frames: Sequence[np.ndarray], cfg: DecodeConfig | None = None) -> list[str]:
        """ASR from already tokenised speech (``[T, N]`` local frames)."""
        cfg = cfg or self.defaults.asr
        prompts = [build_prompt(self.vocab, "asr", {"speech": f}) for f in speech_frames]
        res = self._run(prompts, "text", [len(f) for f in speech_frames], cfg)
        tok = self._need("text")
        return [tok.decode(r.tokens.tolist()) for r in res]

    def asr(self, audio, cfg: DecodeConfig | None = None) -> str:
        return self.asr_batch([audio], cfg)[0]

    def _as_frames(self, a):
        return self.encode_speech([a])[0]

    # ------------------------------------------------------------------ TTS
    def tts_tokens(self, texts: Sequence[str], speaker_prompts: Sequence | None = None, cfg: DecodeConfig | None = None,
                   scorer: Scorer | None = None) -> list[np.ndarray]:
        """TTS to ``[T, N]`` local speech frames (no vocoding).  With
        ``cfg.nbest`` > 1, ``scorer`` picks the best of the n candidates."""
        cfg = cfg or self.defaults.tts
        if cfg.nbest > 1 and scorer is None:
            raise ValueError(f"nbest={cfg.nbest} needs a scorer (a waveform and its text -> an error, e.g. score.whisper.wer_scorer())")
        ids = [self.encode_text(t) for t in texts]
        spk = [None] * len(texts) if speaker_prompts is None else list(speaker_prompts)
        if len(spk) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(spk)} speaker prompts")
        prompts = []
        rng = np.random.default_rng(cfg.generation.seed)
        for t, s in zip(ids, spk):
            cond = {"text": t}
            if s is not None:
                frames = s if (isinstance(s, np.ndarray) and s.ndim == 2) else self._as_frames(s)
                if self.release:  # a random window, as the release was trained; pad frames fill a shorter one
                    cond["speaker"] = speaker_window(frames, cfg.speaker_prompt_frames, rng)
                else:
                    cond["speaker"] = frames[: cfg.speaker_prompt_frames]
            pad_to = cfg.speaker_prompt_frames if self.release else 0
            prompt = build_prompt(self.vocab, "tts", cond, speaker_prompt_len=pad_to)
            prompts.append(prompt)
        n = max(1, cfg.nbest)
        rep = [p for p in prompts for _ in range(n)]
        lens = [len(t) for t in ids for _ in range(n)]
        res = self._run(rep, "audio", lens, cfg)
        cands = [[res[i * n + k].tokens for k in range(n)] for i in range(len(prompts))]
        if n == 1:
            return [c[0] for c in cands]
        return [c[select_best([self.decode_speech(x) for x in c], text, scorer)] for c, text in zip(cands, texts)]

    def tts_batch(self, texts: Sequence[str], speaker_prompts: Sequence | None = None, cfg: DecodeConfig | None = None,
                  scorer: Scorer | None = None) -> list[np.ndarray]:
        return [self.decode_speech(f) for f in self.tts_tokens(texts, speaker_prompts, cfg, scorer)]

    def tts(self, text: str, speaker_prompt=None, cfg: DecodeConfig | None = None, scorer: Scorer | None = None) -> np.ndarray:
        return self.tts_batch([text], None if speaker_prompt is None else [speaker_prompt], cfg, scorer)[0]

    # --------------------------------------------------------- continuation
    def _continuation_prompt(self, task: str, entry: str, tokens: np.ndarray) -> np.ndarray:
        seq = build_sequence(self.vocab, task, {entry: tokens})
        return seq.frames[: seq.segments[0].end]  # drop <sos/eos> and the pad frames

    def continue_text_batch(self, texts: Sequence[str], cfg: DecodeConfig | None = None) -> list[str]:
        cfg = cfg or self.defaults.textlm
        ids = [self.encode_text(t) for t in texts]
        if self.release:  # the released models learnt text continuation from the text rows alone
            prompts = [entry_frames(self.vocab, "text", t) for t in ids]
        else:
            prompts = [self._continuation_prompt("textlm", "text", t) for t in ids]
        res = self._run(prompts, "text", [len(t) for t in ids], cfg)
        return [self._need("text").decode(r.tokens.tolist()) for r in res]

    def continue_text(self, text: str, cfg: DecodeConfig | None = None) -> str:
        return self.continue_text_batch([text], cfg)[0]

    def continue_speech_tokens(self, speech_frames: Sequence[np.ndarray], cfg: DecodeConfig | None = None) -> list[np.ndarray]:
        cfg = cfg or self.defaults.audiolm
        prompts = [self._continuation_prompt("audiolm", "speech", f) for f in speech_frames]
        res = self._run(prompts, "audio", [len(f) for f in speech_frames], cfg)
        return [r.tokens for r in res]

    def continue_speech_batch(self, audios: Sequence, cfg: DecodeConfig | None = None, include_prompt: bool = True) -> list[np.ndarray]:
        frames = [self._as_frames(a) for a in audios]
        conts = self.continue_speech_tokens(frames, cfg)
        return [self.decode_speech(np.concatenate([f, c]) if include_prompt else c) for f, c in zip(frames, conts)]

    def continue_speech(self, audio, cfg: DecodeConfig | None = None, include_prompt: bool = True) -> np.ndarray:
        return self.continue_speech_batch([audio], cfg, include_prompt)[0]


def check_tokenizers(model_dir, text_tokenizer=None, speech_tokenizer=None) -> None:
    """Refuse tokenizers that do not fit the model in ``model_dir`` (its vocab.json),
    naming both files, before anything is loaded or written.  Missing ones are skipped."""
    from ..tokenizers.speech import TOKENIZER_FILE, check_fits_vocab
    from ..vocab import JointVocab, VocabError

    vocab_file = Path(model_dir) / "vocab.json"
    vocab = JointVocab.load(vocab_file)
    if speech_tokenizer is not None and (Path(speech_tokenizer) / TOKENIZER_FILE).exists():
        check_fits_vocab(speech_tokenizer, vocab, vocab_file)
    if text_tokenizer is not None and Path(text_tokenizer).exists():
        from ..tokenizers.text import load_text_tokenizer

        n, block = load_text_tokenizer(text_tokenizer).vocab_size, vocab.block("text").size
        if n > block:
            raise VocabError(f"{text_tokenizer}: {n} text tokens, but {vocab_file} has a text block of {block} ids: "
                             "the text tokenizer does not fit the model")


def pack(model_dir, out_dir, text_tokenizer=None, speech_tokenizer=None, decode_defaults: DecodeDefaults | None = None) -> Path:
    """Assemble a self-contained model directory for :meth:`SpeechLM.from_pretrained`.

    ``text_tokenizer``: a Hugging Face tokenizer directory or a sentencepiece
    ``.model``; ``speech_tokenizer``: a fitted tokenizer directory.  Written
    to ``out_dir.tmp`` and renamed, so an interrupted pack leaves nothing
    that looks complete."""
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    check_tokenizers(model_dir, text_tokenizer, speech_tokenizer)
    convention = cfgmod.load_yaml(model_dir / "speechlm.yaml").get("convention") if (model_dir / "speechlm.yaml").exists() else None
    if decode_defaults is None and convention == "espnet_opuslm":
        # an imported release keeps the decoding read from its decode_default.yaml; a model
        # fine-tuned from one gets the release's documented defaults
        if (model_dir / "decode.yaml").exists():
            decode_defaults = load_decode_defaults(model_dir / "decode.yaml")
        else:
            from ..release.opuslm import release_decode_defaults

            decode_defaults = release_decode_defaults({}, 500)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(model_dir, tmp)
    for old in ("text_tokenizer", "text_tokenizer.model", "speech_tokenizer"):  # replaced by the ones given
        given = text_tokenizer if old.startswith("text") else speech_tokenizer
        if given is not None and (tmp / old).is_dir():
            shutil.rmtree(tmp / old)
        elif given is not None and (tmp / old).exists():
            (tmp / old).unlink()
    if text_tokenizer is not None:
        t = Path(text_tokenizer)
        if t.is_dir():
            shutil.copytree(t, tmp / "text_tokenizer")
        elif t.suffix == ".model":
            shutil.copy(t, tmp / "text_tokenizer.model")
        else:
            raise FileNotFoundError(f"text tokenizer {t}: expected a directory or a sentencepiece .model file")
    if speech_tokenizer is not None:
        from ..tokenizers.speech import SpeechTokenizer

        SpeechTokenizer.load(speech_tokenizer).save(tmp / "speech_tokenizer")
    cfgmod.save(decode_defaults or DecodeDefaults(), tmp / "decode.yaml")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return out_dir
