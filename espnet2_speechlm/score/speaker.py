"""Speaker similarity between a speaker prompt and synthesised speech.

The metric is the cosine similarity of two speaker embeddings, averaged
over utterances (the usual "SIM" / "SPK-SIM" of zero-shot TTS papers).  It
is only as good as the speaker model, so the table names the model.

Pluggable: anything with ``embed(wav: np.ndarray float32 16 kHz) ->
np.ndarray`` (1-D) and ``describe() -> str`` is a :class:`SpeakerEmbedder`.

Implementation that runs here: :class:`ESPnetSpeakerEmbedder`, an ESPnet
speaker model (``espnet2.tasks.spk.SpeakerTask``: ECAPA-TDNN, RawNet3,
SKA-TDNN, ...) loaded from a local ``config.yaml`` and ``.pth`` (for
example a model unpacked from ESPnet's VoxCeleb recipes).  No trained
speaker weights can be had offline on these machines, so the offline
recipes cannot report a meaningful SPK-SIM; the tests check the loading
and scoring path with a small randomly initialised model of the same class,
and the recipe leaves the row out when no speaker model is given.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

import numpy as np


class SpeakerEmbedder(Protocol):
    def embed(self, wav: np.ndarray) -> np.ndarray: ...

    def describe(self) -> str: ...


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"embedding sizes differ: {a.shape} vs {b.shape}")
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        raise ValueError("zero speaker embedding (silent or empty audio?)")
    return float(np.dot(a, b) / (na * nb))


def _find_model_files(model_dir: Path) -> tuple[Path, Path]:
    configs = [model_dir / n for n in ("config.yaml", "config.yml", "spk_config.yaml") if (model_dir / n).is_file()]
    weights = sorted(model_dir.glob("*.pth"))
    # ESPnet names its kept checkpoints by criterion; prefer the best ones.
    preferred = [w for w in weights if "best" in w.name or w.name == "model.pth"]
    if not configs or not weights:
        raise FileNotFoundError(
            f"{model_dir}: expected an ESPnet speaker model directory with config.yaml and a .pth file "
            f"(found config: {bool(configs)}, .pth files: {len(weights)})"
        )
    if len(weights) > 1 and len(preferred) != 1:
        raise FileNotFoundError(
            f"{model_dir}: several .pth files ({', '.join(w.name for w in weights)}); pass model_file explicitly"
        )
    return configs[0], (preferred or weights)[0]


class ESPnetSpeakerEmbedder:
    """ESPnet speaker model (SpeakerTask) from local files.

    Args:
        model_dir: directory with ``config.yaml`` and one ``*.pth`` (or a
            ``*best*.pth`` among several); or give both of
        train_config, model_file: explicit paths.
        device: torch device.

    Importing espnet2's task takes 10-20 s, so it happens here and not at
    module import.
    """

    def __init__(self, model_dir=None, train_config=None, model_file=None, device: str = "cpu"):
        if model_dir is not None:
            model_dir = Path(model_dir)
            if not model_dir.is_dir():
                raise FileNotFoundError(f"speaker model directory {model_dir} does not exist")
            found_cfg, found_pth = _find_model_files(model_dir)
            train_config = train_config or found_cfg
            model_file = model_file or found_pth
        if train_config is None or model_file is None:
            raise ValueError("pass model_dir, or both train_config and model_file")
        for p in (train_config, model_file):
            if not os.path.isfile(p):
                raise FileNotFoundError(f"speaker model file {p} does not exist")
        import torch

        from ..tokenizers.espnet_tasks import espnet_task

        SpeakerTask = espnet_task("espnet2.tasks.spk", "SpeakerTask")

        self._torch = torch
        self.model, self.train_args = SpeakerTask.build_model_from_file(str(train_config), str(model_file), device)
        self.model.eval()
        self.device = device
        self.train_config, self.model_file = Path(train_config), Path(model_file)

    def describe(self) -> str:
        return f"espnet-spk:{self.train_args.encoder}({self.model_file.parent.name}/{self.model_file.name})"

    def embed(self, wav: np.ndarray) -> np.ndarray:
        wav = np.asarray(wav, dtype=np.float32)
        if wav.ndim != 1 or wav.size == 0:
            raise ValueError(f"expected non-empty 1-D audio, got shape {wav.shape}")
        torch = self._torch
        with torch.no_grad():
            x = torch.from_numpy(wav).unsqueeze(0).to(self.device)
            emb = self.model(speech=x, extract_embd=True)
        return emb.squeeze(0).float().cpu().numpy()
