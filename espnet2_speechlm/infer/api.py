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
array at 16 kHz.  Audio out: 1-D float32 arrays at 16 kHz.

The released OpusLM models load the same way, from the directory that
``bin/import_opuslm`` writes or straight from the released files
(``model.pth``, ``config.yaml``, ``decode_default.yaml``; the body's Hugging
Face config and tokenizer beside them or in ``base_llm``).  For them (their
``speechlm.yaml`` records ``convention: espnet_opuslm``) prompts and decoding
follow the release: a TTS speaker prompt is a random window of
``speaker_prompt_frames`` (500) frames, zero rows padding a shorter one; text
continuation starts with the text itself (no task prefix); generation follows
``infer/opuslm_rules.py``.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .. import config as cfgmod
from ..tasks import build_prompt, build_sequence, entry_frames, fixed_length_prompt
from ..vocab import PAD
from .generate import GenerationConfig, SamplingConfig, generate
from .opuslm_rules import pad_speaker_prompt

SAMPLE_RATE = 16000


@dataclass
class DecodeConfig:
    """How one task is decoded.  Lengths are in frames (50 per second for
    speech, one per token for text); ``*_ratio`` limits are relative to the
    input's length (input frames for ASR, text tokens for TTS)."""

    generation: GenerationConfig = field(default_factory=GenerationConfig)
    min_len: int = 0
    max_len: int = 1500
    min_len_ratio: float = 0.0
    max_len_ratio: float = 0.0  # 0: no ratio limit
    batch_size: int = 8
    nbest: int = 1  # TTS: sample n candidates, keep the one an ASR model transcribes best
    speaker_prompt_frames: int = 150


def default_decode_configs() -> dict[str, DecodeConfig]:
    greedy = SamplingConfig(greedy=True)
    topk = SamplingConfig(temperature=0.8, top_k=30)  # the released TTS defaults
    return {
        "asr": DecodeConfig(GenerationConfig(text=greedy), max_len=400, max_len_ratio=1.0),
        "tts": DecodeConfig(GenerationConfig(semantic=topk, acoustic=topk), min_len_ratio=1.0, max_len=1500, max_len_ratio=25.0),
        "textlm": DecodeConfig(GenerationConfig(text=SamplingConfig(temperature=0.8, top_k=50)), max_len=100),
        "audiolm": DecodeConfig(GenerationConfig(semantic=topk, acoustic=topk), min_len=50, max_len=250),
    }


@dataclass
class DecodeDefaults:
    asr: DecodeConfig = field(default_factory=lambda: default_decode_configs()["asr"])
    tts: DecodeConfig = field(default_factory=lambda: default_decode_configs()["tts"])
    textlm: DecodeConfig = field(default_factory=lambda: default_decode_configs()["textlm"])
    audiolm: DecodeConfig = field(default_factory=lambda: default_decode_configs()["audiolm"])


def _load_speech_tokenizer(d: Path, vocab, device):
    """A speech tokenizer directory, checked against the model's vocabulary before
    its models are loaded; the released OpusLM files are turned into one first."""
    import tempfile

    from ..tokenizers.speech import SpeechTokenizer, check_fits_vocab, read_config

    if not (d / "tokenizer.json").exists():
        if not d.is_dir():
            raise FileNotFoundError(f"speech tokenizer not found: {d}")
        from ..tokenizers.opuslm import build_release_tokenizer

        with tempfile.TemporaryDirectory() as tmp:  # the loaded tokenizer keeps nothing open in it
            built = build_release_tokenizer(d, Path(tmp) / "speech_tokenizer", device=device)
            return _load_speech_tokenizer(built, vocab, device)
    check_fits_vocab(read_config(d), vocab, f"speech tokenizer {d / 'tokenizer.json'}")
    return SpeechTokenizer.load(d, device=device)


def load_audio(audio) -> np.ndarray:
    """Path or array -> 1-D float32 at 16 kHz."""
    if isinstance(audio, (str, os.PathLike)):
        from ..tokenizers.audio import AudioItem, load_item

        return load_item(AudioItem(str(audio), str(audio)))
    wav = np.asarray(audio, dtype=np.float32)
    if wav.ndim != 1 or wav.size == 0:
        raise ValueError(f"audio must be a non-empty 1-D array at 16 kHz (or a file path), got shape {wav.shape}")
    return wav


def _limits(cfg: DecodeConfig, input_len: int) -> tuple[int, int]:
    lo, hi = cfg.min_len, cfg.max_len
    if cfg.min_len_ratio > 0:
        lo = max(lo, int(cfg.min_len_ratio * input_len))
    if cfg.max_len_ratio > 0:
        hi = min(hi, max(1, int(np.ceil(cfg.max_len_ratio * input_len))))
    return min(lo, hi), hi


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
            defaults = cfgmod.load(DecodeDefaults, path / "decode.yaml") if (path / "decode.yaml").exists() else DecodeDefaults()
        st = Path(speech_tokenizer) if speech_tokenizer is not None else path / "speech_tokenizer"
        speech_tok = _load_speech_tokenizer(st, model.vocab, device) if (speech_tokenizer is not None or st.is_dir()) else None
        return cls(model, text_tok, speech_tok, defaults)

    # ------------------------------------------------------------- helpers
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
        wavs = [load_audio(a) for a in audios]
        return [np.asarray(f, dtype=np.int64) for f in self._need("speech").encode(wavs)]

    def decode_speech(self, frames: np.ndarray) -> np.ndarray:
        if len(frames) == 0:
            return np.zeros(0, dtype=np.float32)
        return np.asarray(self._need("speech").decode(frames), dtype=np.float32)

    def _run(self, task: str, prompts, modality, input_lens, cfg: DecodeConfig):
        out = []
        for i in range(0, len(prompts), max(1, cfg.batch_size)):
            chunk = slice(i, i + cfg.batch_size)
            lims = [_limits(cfg, n) for n in input_lens[chunk]]
            out += generate(self.model, prompts[chunk], modality, cfg.generation,
                            min_len=[lo for lo, _ in lims], max_len=[hi for _, hi in lims])
        return out

    # ------------------------------------------------------------------ ASR
    def asr_batch(self, audios: Sequence, cfg: DecodeConfig | None = None) -> list[str]:
        return self.asr_tokens([self._as_frames(a) for a in audios], cfg)

    def asr_tokens(self, speech_frames: Sequence[np.ndarray], cfg: DecodeConfig | None = None) -> list[str]:
        """ASR from already tokenised speech (``[T, N]`` local frames)."""
        cfg = cfg or self.defaults.asr
        prompts = [build_prompt(self.vocab, "asr", {"speech": f}) for f in speech_frames]
        res = self._run("asr", prompts, "text", [len(f) for f in speech_frames], cfg)
        tok = self._need("text")
        return [tok.decode(r.tokens.tolist()) for r in res]

    def asr(self, audio, cfg: DecodeConfig | None = None) -> str:
        return self.asr_batch([audio], cfg)[0]

    def _as_frames(self, a):
        return self.encode_speech([a])[0]

    # ------------------------------------------------------------------ TTS
    def tts_tokens(self, texts: Sequence[str], speaker_prompts: Sequence | None = None, cfg: DecodeConfig | None = None) -> list[np.ndarray]:
        """TTS to ``[T, N]`` local speech frames (no vocoding)."""
        cfg = cfg or self.defaults.tts
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
                if self.release:  # a random window, as the release was trained; zero rows pad a shorter one (below)
                    cond["speaker"] = fixed_length_prompt(frames, cfg.speaker_prompt_frames, rng)
                else:
                    cond["speaker"] = frames[: cfg.speaker_prompt_frames]
            prompt = build_prompt(self.vocab, "tts", cond)
            if self.release and s is not None:
                prompt = pad_speaker_prompt(prompt, len(cond["speaker"]), cfg.speaker_prompt_frames)
            prompts.append(prompt)
        n = max(1, cfg.nbest)
        rep = [p for p in prompts for _ in range(n)]
        lens = [len(t) for t in ids for _ in range(n)]
        gen = cfg.generation
        res = self._run("tts", rep, "audio", lens, cfg)
        cands = [[res[i * n + k].tokens for k in range(n)] for i in range(len(prompts))]
        if n == 1:
            return [c[0] for c in cands]
        return [self._select_by_asr(c, text) for c, text in zip(cands, texts)]

    def _select_by_asr(self, candidates: list[np.ndarray], text: str) -> np.ndarray:
        """n-best TTS: keep the candidate whose Whisper transcript has the lowest WER."""
        from ..score.wer import word_error_rate
        from ..score.whisper import WhisperASR

        if not hasattr(self, "_selector"):
            self._selector = WhisperASR()
        scores = []
        for c in candidates:
            hyp = self._selector.transcribe(self.decode_speech(c)) if len(c) else ""
            scores.append(word_error_rate([text], [hyp])["wer"])
        return candidates[int(np.argmin(scores))]

    def tts_batch(self, texts: Sequence[str], speaker_prompts: Sequence | None = None, cfg: DecodeConfig | None = None) -> list[np.ndarray]:
        return [self.decode_speech(f) for f in self.tts_tokens(texts, speaker_prompts, cfg)]

    def tts(self, text: str, speaker_prompt=None, cfg: DecodeConfig | None = None) -> np.ndarray:
        return self.tts_batch([text], None if speaker_prompt is None else [speaker_prompt], cfg)[0]

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
        res = self._run("textlm", prompts, "text", [len(t) for t in ids], cfg)
        return [self._need("text").decode(r.tokens.tolist()) for r in res]

    def continue_text(self, text: str, cfg: DecodeConfig | None = None) -> str:
        return self.continue_text_batch([text], cfg)[0]

    def continue_speech_tokens(self, speech_frames: Sequence[np.ndarray], cfg: DecodeConfig | None = None) -> list[np.ndarray]:
        cfg = cfg or self.defaults.audiolm
        prompts = [self._continuation_prompt("audiolm", "speech", f) for f in speech_frames]
        res = self._run("audiolm", prompts, "audio", [len(f) for f in speech_frames], cfg)
        return [r.tokens for r in res]

    def continue_speech_batch(self, audios: Sequence, cfg: DecodeConfig | None = None, include_prompt: bool = True) -> list[np.ndarray]:
        frames = [self._as_frames(a) for a in audios]
        conts = self.continue_speech_tokens(frames, cfg)
        return [self.decode_speech(np.concatenate([f, c]) if include_prompt else c) for f, c in zip(frames, conts)]

    def continue_speech(self, audio, cfg: DecodeConfig | None = None, include_prompt: bool = True) -> np.ndarray:
        return self.continue_speech_batch([audio], cfg, include_prompt)[0]


def pack(model_dir, out_dir, text_tokenizer=None, speech_tokenizer=None, decode_defaults: DecodeDefaults | None = None) -> Path:
    """Assemble a self-contained model directory for :meth:`SpeechLM.from_pretrained`.

    ``text_tokenizer``: a Hugging Face tokenizer directory or a sentencepiece
    ``.model``; ``speech_tokenizer``: a fitted tokenizer directory.  Written
    to ``out_dir.tmp`` and renamed, so an interrupted pack leaves nothing
    that looks complete."""
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    convention = cfgmod.load_yaml(model_dir / "speechlm.yaml").get("convention") if (model_dir / "speechlm.yaml").exists() else None
    if speech_tokenizer is not None:
        from ..tokenizers.speech import check_fits_vocab, read_config
        from ..vocab import JointVocab

        check_fits_vocab(read_config(speech_tokenizer), JointVocab.load(model_dir / "vocab.json"),
                         f"speech tokenizer {Path(speech_tokenizer) / 'tokenizer.json'} for {model_dir}")
    if decode_defaults is None and convention == "espnet_opuslm":
        # an imported release keeps the decoding read from its decode_default.yaml; a model
        # fine-tuned from one gets the release's documented defaults
        if (model_dir / "decode.yaml").exists():
            decode_defaults = cfgmod.load(DecodeDefaults, model_dir / "decode.yaml")
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
