"""Semantic tokens: 50 Hz features, then the index of the nearest k-means centre.

Feature back-ends:

* ``mfcc`` / ``fbank``: :class:`~.features.SpectralFeatures`, for offline
  recipes that have no SSL model.
* ``espnet_ssl``: one layer of a self-supervised model saved by ESPnet
  (``config.yaml`` + ``*.pth``), e.g. XEUS layer 18 as OpusLM uses, or a
  HuBERT model of ``espnet2.tasks.hubert``.  espnet is imported only when
  such a model is loaded.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from . import kmeans as km
from .audio import FRAME_RATE
from .features import HOP, SAMPLE_RATE, SpectralFeatures, frame_count


class ESPnetSSLFeatures:
    """Hidden states of layer ``layer`` (1-based) of an ESPnet SSL model.

    ``task`` is ``"ssl"`` (``espnet2.tasks.ssl.SSLTask``: XEUS and other
    ``ESPnetSSLModel`` checkpoints) or ``"hubert"`` (``espnet2.tasks.hubert``).

    ``use_final_output``: the last layer is read after the encoder's final layer
    norm, as ESPnet's ``encode(use_final_output=True)`` lists the outputs (its
    index ``L - 1`` of ``L`` blocks).  The released OpusLM units are XEUS's index
    18 of 19 blocks read this way: ``layer=19, use_final_output=True``.  The
    features are always computed with the model's masking turned off (ESPnet's
    ``encode`` masks whenever the model carries mask settings, even in eval mode;
    ``inference_encode`` with ``use_mask=False`` on an eval-mode model does not).

    ``pad_to_codec``: pad every input so that the SSL stream has the codec's
    ``ceil(n / 320)`` frames, centred on the codec's hops (the toolkit's
    framing).  ``False`` is ESPnet's: the audio as it is, ``floor((n - 400) / 320) + 1``
    frames, up to 2 fewer than the codec's, the codec's stream then cut to the
    shorter (``max_frame_lag`` tells ``SpeechTokenizer`` so); the released
    OpusLM units were made this way.
    """

    frame_rate = FRAME_RATE

    def __init__(self, config: str, model: str, layer: int, task: str = "ssl", device: str = "cpu", use_final_output: bool = False,
                 pad_to_codec: bool = True):
        for p in (config, model):
            if not Path(p).exists():
                raise FileNotFoundError(f"SSL model file not found: {p}")
        self.config_path, self.model_path, self.layer, self.task = str(config), str(model), int(layer), task
        self.use_final_output = bool(use_final_output)
        self.pad_to_codec = bool(pad_to_codec)
        self.max_frame_lag = 1 if self.pad_to_codec else 2
        if self.use_final_output and task != "ssl":
            raise ValueError("use_final_output applies to ESPnet SSL models (task 'ssl'), not HuBERT")
        self.device = torch.device(device)
        from .espnet_tasks import espnet_task

        if task == "ssl":
            Task = espnet_task("espnet2.tasks.ssl", "SSLTask")
        elif task == "hubert":
            Task = espnet_task("espnet2.tasks.hubert", "HubertTask")
        else:
            raise ValueError(f"unknown ESPnet SSL task {task!r}: use 'ssl' (XEUS, ESPnetSSLModel) or 'hubert'")
        self.model, _ = Task.build_model_from_file(self.config_path, self.model_path, str(self.device))
        self.model.eval()
        self._dim = None
        # A strided CNN front-end (wav2vec/XEUS/HuBERT: receptive field 400, stride 320) gives
        # floor((n - 400) / 320) + 1 frames, up to 2 fewer than the codec's ceil(n / 320).  Measure
        # the span on a 1 s probe and pad every input so that both streams have ceil(n / 320) frames.
        self._span = None
        with torch.no_grad():
            probe = torch.zeros(1, SAMPLE_RATE, device=self.device)
            hs, lens = self._all_layers(probe, torch.tensor([SAMPLE_RATE], device=self.device))
        t1 = int(lens[0])
        self._span = SAMPLE_RATE - HOP * (t1 - 1)

    def _all_layers(self, x: torch.Tensor, lens: torch.Tensor):
        m = self.model
        if self.task == "ssl":
            final, hs, out_lens = m.inference_encode(x, lens, use_mask=False)
            if self.use_final_output:
                hs = list(hs[:-1]) + [final]
            return hs, out_lens
        feats, feat_lens = m._extract_feats(x, lens) if hasattr(m, "_extract_feats") else (x, lens)
        enc = m.encoder
        if hasattr(enc, "hubert_pretrain_model"):  # torchaudio HuBERT wrapper
            tm = enc.hubert_pretrain_model.wav2vec2
            hs, out_lens = tm.extract_features(feats, feat_lens, num_layers=self.layer)
            return hs, out_lens
        raise ValueError(f"{self.config_path}: HuBERT encoder {type(enc).__name__} is not supported for layer extraction")

    @property
    def dim(self) -> int:
        if self._dim is None:
            self._dim = int(self([np.zeros(SAMPLE_RATE, np.float32)])[0].shape[1])
        return self._dim

    def to_dict(self) -> dict:
        d = {"kind": "espnet_ssl", "task": self.task, "config": str(Path(self.config_path).resolve()),
             "model": str(Path(self.model_path).resolve()), "layer": self.layer}
        if self.use_final_output:  # only then, so that older tokenizer.json files read back unchanged
            d["use_final_output"] = True
        if not self.pad_to_codec:
            d["pad_to_codec"] = False
        return d

    @torch.no_grad()
    def __call__(self, wavs) -> list[torch.Tensor]:
        if not wavs:
            return []
        ws, want = [], []
        for w in wavs:
            w = torch.as_tensor(w, dtype=torch.float32)
            if not self.pad_to_codec:
                ws.append(w)
                want.append(len(w))  # as many frames as the model gives
                continue
            t = frame_count(len(w))
            left = max(0, (self._span - HOP) // 2)
            right = max(0, (t - 1) * HOP + self._span - left - len(w))
            ws.append(torch.nn.functional.pad(w, (left, right)))
            want.append(t)
        lens = torch.tensor([len(w) for w in ws])
        x = torch.nn.utils.rnn.pad_sequence(ws, batch_first=True).to(self.device)
        hs, out_lens = self._all_layers(x, lens.to(self.device))
        if not 1 <= self.layer <= len(hs):
            raise ValueError(f"{self.config_path}: layer {self.layer} asked for, the model has {len(hs)} layers")
        h = hs[self.layer - 1]
        return [h[b, : min(int(out_lens[b]), t)].float() for b, t in enumerate(want)]


def read_centers(path: str | Path) -> torch.Tensor:
    """k-means centres fitted elsewhere: a ``.npy`` matrix, or a joblib-saved
    scikit-learn k-means (the released ``km_opus_lm.mdl``; only its
    ``cluster_centers_`` is read, see ``sklearn_kmeans``)."""
    path = Path(path)
    if path.suffix == ".npy":
        return km.load_centers(path)
    from .sklearn_kmeans import read_kmeans_centers

    return torch.from_numpy(read_kmeans_centers(path))


def build_features(spec: dict, device: str = "cpu"):
    """Feature extractor from its ``to_dict()`` description."""
    spec = dict(spec)
    kind = spec.get("kind", "mfcc")
    if kind in ("mfcc", "fbank"):
        return SpectralFeatures(spec, device=device)
    if kind == "espnet_ssl":
        spec.pop("kind")
        return ESPnetSSLFeatures(device=device, **spec)
    raise ValueError(f"unknown semantic feature kind {kind!r}: use mfcc, fbank or espnet_ssl")


class SemanticTokenizer:
    """Features -> nearest of ``K`` centres.  ``encode`` gives one ``[T]`` int array per waveform."""

    def __init__(self, features, centers: torch.Tensor):
        self.features = features
        self.centers = torch.as_tensor(centers, dtype=torch.float32).to(getattr(features, "device", "cpu"))

    @property
    def vocab_size(self) -> int:
        return int(self.centers.shape[0])

    @torch.no_grad()
    def encode(self, wavs) -> list[np.ndarray]:
        return [km.assign(f.to(self.centers.device), self.centers)[0].cpu().numpy() for f in self.features(wavs)]

    @classmethod
    def fit(cls, features, wavs, k: int, max_frames: int = 300000, seed: int = 0, batch_utts: int = 16, verbose: bool = False, **kw) -> "SemanticTokenizer":
        """Fit ``k`` centres on (a random sample of at most ``max_frames``) frames of ``wavs``."""
        feats = []
        for i in range(0, len(wavs), batch_utts):
            feats += [f.cpu() for f in features(wavs[i : i + batch_utts])]
        x = torch.cat(feats)
        if x.shape[0] > max_frames:
            x = x[torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[:max_frames]]
        if verbose:
            print(f"[semantic] k-means with {k} clusters on {x.shape[0]} frames of dim {x.shape[1]}", file=sys.stderr)
        kw.setdefault("device", str(getattr(features, "device", "cpu")))
        centers = km.fit_kmeans(x, k, seed=seed, verbose=verbose, **kw)
        return cls(features, centers)

    def save(self, directory: str | Path) -> dict:
        d = Path(directory)
        km.save_centers(d / "semantic_kmeans.npy", self.centers)
        return {"type": "kmeans", "features": self.features.to_dict(), "kmeans": str((d / "semantic_kmeans.npy").resolve()), "vocab_size": self.vocab_size}

    @classmethod
    def from_kmeans_file(cls, features, path: str | Path) -> "SemanticTokenizer":
        """Centres fitted elsewhere (:func:`read_centers`); their width must be the features' width."""
        return cls.from_centers(features, read_centers(path), path)

    @classmethod
    def from_centers(cls, features, centers: torch.Tensor, where="centres") -> "SemanticTokenizer":
        dim = getattr(features, "dim", None)
        if dim is not None and int(dim) != centers.shape[1]:
            raise ValueError(f"{where}: centres of width {centers.shape[1]}, but the features have {dim} dimensions "
                             "(another SSL model or layer than the k-means was fitted on?)")
        return cls(features, centers)

    @classmethod
    def from_config(cls, entry: dict, device: str = "cpu") -> "SemanticTokenizer":
        return cls(build_features(entry["features"], device), km.load_centers(entry["kmeans"]))
