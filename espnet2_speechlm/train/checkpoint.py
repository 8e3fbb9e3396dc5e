"""Checkpoints: atomic, the last M kept, engine-native state plus a plain export.

Layout::

    exp_dir/checkpoints/
      latest                      name of the newest complete checkpoint (written last, atomically)
      step_00001000/
        engine/                   engine-native state (DeepSpeed ZeRO shards, DCP shards for
                                  FSDP2, or state.pt for single/DDP): weights + optimizer
        rng/rank{r}.pt            each rank's torch / numpy / python RNG states
        trainer_state.json        step, data position (epoch, offset), counters
        model/                    plain export, loadable without any engine:
                                  config.json, speechlm.yaml, vocab.json, model.safetensors,
                                  train_config.yaml (see MultiStreamLM.from_pretrained)

Every rank writes into ``step_N.tmp``; after a barrier rank 0 adds
``trainer_state.json``, renames the directory to ``step_N``, then rewrites
``latest``.  A run killed at any moment leaves either the previous complete
checkpoint or the new one, never a half-written one that resume would pick.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from .. import config as cfgmod
from ..vocab import JointVocab

STEP_RE = re.compile(r"^step_(\d+)$")


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def list_checkpoints(ckpt_root: Path) -> list[Path]:
    if not ckpt_root.exists():
        return []
    out = [p for p in ckpt_root.iterdir() if p.is_dir() and STEP_RE.match(p.name) and (p / "trainer_state.json").exists()]
    return sorted(out, key=lambda p: int(STEP_RE.match(p.name).group(1)))


def latest_checkpoint(ckpt_root: Path) -> Path | None:
    f = ckpt_root / "latest"
    if f.exists():
        p = ckpt_root / f.read_text().strip()
        if (p / "trainer_state.json").exists():
            return p
    ck = list_checkpoints(ckpt_root)
    return ck[-1] if ck else None


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    np.random.set_state(s["numpy"])
    random.setstate(s["python"])


def canonical_names(model: torch.nn.Module) -> dict[str, str]:
    """state-dict key -> the key saved for it (aliases of one tensor share one
    entry, e.g. ``body.*`` and ``lm.model.*``, or a tied head and embedding)."""
    groups: dict[int, list[str]] = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), []).append(n)
    for n, b in model.named_buffers(remove_duplicate=False):
        groups.setdefault(id(b), []).append(n)
    keys = set(model.state_dict().keys())
    out = {}
    for names in groups.values():
        names = [n for n in names if n in keys]
        if names:
            keep = sorted(names)[0]
            for n in names:
                out[n] = keep
    return out


def export_model(out_dir: Path, full_sd: dict, model, train_cfg=None) -> Path:
    """Write a ``MultiStreamLM.from_pretrained`` directory from a full state dict
    (rank 0 only) without needing an unwrapped full model."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    canon = canonical_names(model)
    tensors = {}
    for k, v in full_sd.items():
        keep = canon.get(k, k)
        if keep == k:
            tensors[k] = v.detach().to("cpu").contiguous().clone()
    missing = sorted(set(canon.values()) - set(tensors))
    if missing:
        raise RuntimeError(f"export: the gathered state dict lacks {missing[:5]}")
    model.save_configs(tmp)
    save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    if train_cfg is not None:
        cfgmod.save(train_cfg, tmp / "train_config.yaml")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return out_dir


def resolve_checkpoint(path: Path) -> Path:
    """A run's ``checkpoints/`` directory (or its exp dir) -> its latest step directory."""
    path = Path(path)
    if (path / "trainer_state.json").exists():
        return path
    for root in (path, path / "checkpoints"):
        ck = latest_checkpoint(root)
        if ck is not None:
            return ck
    return path


def find_model_dir(path: Path) -> Path:
    """The exported model of: a checkpoint directory (its ``model/``), an
    exported model directory, a ``checkpoints`` directory (its latest
    checkpoint), or an experiment directory (``exp_dir`` of a training run):
    its averaged model ``model_avg`` when that was averaged up to the latest
    checkpoint, else the latest checkpoint."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    def has_weights(d: Path) -> bool:  # one file, or Hugging Face shards with their index
        return (d / "model.safetensors").exists() or (d / "model.safetensors.index.json").exists()

    if has_weights(path / "model"):
        return path / "model"
    if has_weights(path):
        return path
    if (path / "latest").exists() or list_checkpoints(path):
        ck = latest_checkpoint(path)
        if ck is not None:
            return find_model_dir(ck)
    if (path / "checkpoints").is_dir():
        ck = latest_checkpoint(path / "checkpoints")
        avg = path / "model_avg"
        if (avg / "model.safetensors").exists() and (ck is None or _averaged_up_to(avg, ck)):
            return avg
        if ck is not None:
            return find_model_dir(ck)
    raise FileNotFoundError(f"{path}: not a checkpoint (with model/), a model directory (with model.safetensors), "
                            "a checkpoints directory or an experiment directory with complete checkpoints")


def _averaged_up_to(avg: Path, ck: Path) -> bool:
    """Whether ``avg`` was averaged from checkpoints that include ``ck`` (an older
    average is not taken for a run that went on training afterwards)."""
    try:
        srcs = json.loads((avg / "averaged_from.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return False
    return any(ck.name in Path(s).parts for s in srcs)


def check_vocab(path: Path, vocab: JointVocab) -> None:
    v = JointVocab.load(find_model_dir(path) / "vocab.json")
    vocab.check_matches(v, f"checkpoint {path}", sides=("data", "checkpoint"))


def average_checkpoints(model_dirs: list[Path], out_dir: Path) -> Path:
    """Average the weights of exported model directories (same vocabulary and
    config) into ``out_dir``; the other files are copied from the last one."""
    from safetensors.torch import load_file, save_file

    if not model_dirs:
        raise ValueError("average_checkpoints: no checkpoints given")
    dirs = [find_model_dir(Path(d)) for d in model_dirs]
    fp = {JointVocab.load(d / "vocab.json").fingerprint() for d in dirs}
    if len(fp) > 1:
        raise ValueError(f"average_checkpoints: the checkpoints have different vocabularies: {[str(d) for d in dirs]}")
    acc = None
    for d in dirs:
        sd = load_file(str(d / "model.safetensors"))
        if acc is None:
            acc = {k: v.double() for k, v in sd.items()}
            dtypes = {k: v.dtype for k, v in sd.items()}
        else:
            if set(sd) != set(acc):
                raise ValueError(f"{d}: its weights have different names from {dirs[0]}")
            for k, v in sd.items():
                acc[k] += v.double()
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(dirs[-1], tmp)
    save_file({k: (v / len(dirs)).to(dtypes[k]) for k, v in acc.items()}, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    (tmp / "averaged_from.json").write_text(json.dumps([str(d) for d in dirs], indent=1) + "\n")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return out_dir
