"""Acoustic tokens from an ESPnet codec (``espnet2.gan_codec``: DAC, SoundStream, EnCodec...).

Loaded the way the released OpusLM codec is distributed: the training
``config.yaml`` and a ``*.pth`` state dict, through
``GANCodecTask.build_model_from_file``.  espnet is imported only here, when
the codec is built.  Only the first ``num_codebooks`` quantiser levels are
kept (the codecs are trained with quantiser dropout, so a prefix of levels
is a valid lower-bit-rate code).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import yaml

from .audio import SAMPLE_RATE, resample


class ESPnetCodec:
    kind = "espnet_codec"
    sample_rate = SAMPLE_RATE

    def __init__(self, config: str, model: str, num_codebooks: int = 8, device: str = "cpu"):
        for p in (config, model):
            if not Path(p).exists():
                raise FileNotFoundError(f"codec file not found: {p}")
        self.config_path, self.model_path = str(config), str(model)
        with open(config) as f:
            conf = yaml.safe_load(f) or {}
        self.codec_rate = int((conf.get("codec_conf") or {}).get("sampling_rate", SAMPLE_RATE))
        from .espnet_tasks import espnet_task

        GANCodecTask = espnet_task("espnet2.tasks.gan_codec", "GANCodecTask")

        self.device = torch.device(device)
        self.model, _ = GANCodecTask.build_model_from_file(self.config_path, self.model_path, str(self.device))
        self.model.eval()
        self.num_codebooks = int(num_codebooks)
        with torch.no_grad():
            probe = self.model.encode(torch.zeros(1, 1, self.codec_rate, device=self.device))
        if probe.shape[0] < self.num_codebooks:
            raise ValueError(f"{config}: the codec has {probe.shape[0]} codebooks, {self.num_codebooks} asked for")
        self.frames_per_second = int(probe.shape[-1])
        self.hop = self.codec_rate // self.frames_per_second
        self.codebook_size = self._codebook_size(conf)

    def _codebook_size(self, conf) -> int:
        gp = (conf.get("codec_conf") or {}).get("generator_params") or {}
        for key in ("quantizer_bins", "codebook_size", "bins"):
            if key in gp:
                return int(gp[key])
        return 1024

    def to_dict(self) -> dict:
        return {"type": self.kind, "config": str(Path(self.config_path).resolve()), "model": str(Path(self.model_path).resolve()),
                "num_codebooks": self.num_codebooks, "codebook_size": self.codebook_size}

    @classmethod
    def from_config(cls, entry: dict, device: str = "cpu") -> "ESPnetCodec":
        return cls(entry["config"], entry["model"], int(entry.get("num_codebooks", 8)), device=device)

    @torch.no_grad()
    def encode(self, wavs) -> list[np.ndarray]:
        if not wavs:
            return []
        ws = [torch.as_tensor(resample(np.asarray(w, np.float32), SAMPLE_RATE, self.codec_rate)) for w in wavs]
        x = torch.nn.utils.rnn.pad_sequence(ws, batch_first=True)[:, None].to(self.device)
        codes = self.model.encode(x)[: self.num_codebooks]  # [nq, B, T]
        out = []
        for b, w in enumerate(ws):
            t = max(1, -(-len(w) // self.hop))
            out.append(codes[:, b, :t].T.cpu().numpy().astype(np.int64))
        return out

    @torch.no_grad()
    def decode(self, codes) -> np.ndarray:
        c = torch.as_tensor(np.asarray(codes), dtype=torch.long, device=self.device)
        if c.ndim != 2 or c.shape[1] != self.num_codebooks:
            raise ValueError(f"codes must be [T, {self.num_codebooks}], got {tuple(c.shape)}")
        wav = self.model.decode(c.T[:, None, :]).reshape(-1).float().cpu().numpy()
        return resample(wav, self.codec_rate, SAMPLE_RATE)
