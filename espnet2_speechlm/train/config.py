"""The training configuration: one typed object read from YAML (strict keys).

Example (see egs2/TEMPLATE/speechlm1/conf/train_speechlm.yaml)::

    exp_dir: exp/speechlm
    data:
      train: [{dir: dump/splice/train_asr, ratio: 1.0}, {dir: dump/splice/train_tts, ratio: 0.5}]
      valid: [dump/splice/dev_asr, dump/splice/dev_tts]
      batch_bins: 1048576
    model: {init: llm, llm_dir: exp/textlm}
    optim: {lr: 2.0e-4, betas: [0.9, 0.95], weight_decay: 3.0e-7, clip: 1.0}
    schedule: {name: warmup_cosine, warmup_steps: 2000, total_steps: 100000, min_lr_ratio: 0.3}
    engine: {name: deepspeed, zero_stage: 2, precision: bf16}

Annealing is the same file with ``init_from`` (a pretraining checkpoint),
``schedule.name: linear_to_zero`` and the new data mixture.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .. import config as cfgmod
from ..config import ConfigError
from ..model.config import ModelConfig
from .precision import PRECISIONS


@dataclass
class DataSource:
    dir: str = ""
    ratio: float = 1.0


@dataclass
class DataConfig:
    train: list = field(default_factory=list)  # list of DataSource mappings (dir, ratio)
    valid: list = field(default_factory=list)  # list of data directories (one per task's dev set)
    batch_bins: int = 8192  # global batch in LM steps (frames + N-1) across ranks and accumulation, padding included
    pool_size: int = 4096  # examples sorted (bucketing) or packed together
    packing: bool = False
    pack_len: int = 0  # row length when packing (0: the micro-batch budget)
    max_rows: int = 0  # at most this many sequences per micro-batch (0: no limit)
    loss_region: str | None = None  # override the data directory's "target"/"all"
    num_workers: int = 2
    prefetch: int = 4
    valid_batch_bins: int = 0  # per-rank validation batch (0: the training micro-batch budget)


@dataclass
class ModelInit:
    init: str = "random"  # random | llm | pretrained
    hf_config: dict = field(default_factory=dict)  # body config for init=random (model_type, hidden_size, ...)
    llm_dir: str = ""  # Hugging Face text LLM directory for init=llm
    # init=llm: a fitted speech tokenizer directory whose code vectors (k-means centres,
    # mel codebooks) give the new speech rows their start (model/speech_init.py); empty: random rows
    speech_tokenizer_dir: str = ""
    pretrained_dir: str = ""  # a save_pretrained directory for init=pretrained
    speechlm: ModelConfig = field(default_factory=ModelConfig)


@dataclass
class InitFrom:
    """Start from a checkpoint of another run (annealing): weights, optionally optimizer."""

    checkpoint: str = ""  # a checkpoint directory (exp/x/checkpoints/step_N) or an exported model dir
    load_optimizer: bool = False


@dataclass
class OptimConfig:
    lr: float = 2.0e-4
    betas: tuple = (0.9, 0.95)
    eps: float = 1.0e-8
    weight_decay: float = 3.0e-7
    clip: float = 1.0  # max global grad norm (0: no clipping)
    # lr of the decoder layers (the pretrained body) as a fraction of lr; the embedding
    # and output head, which hold the rows new to the model (speech units, codes,
    # specials), keep lr.  Below 1 the text LLM's layers move less while the new rows
    # are learnt at full speed.
    body_lr_scale: float = 1.0


@dataclass
class ScheduleConfig:
    name: str = "warmup_cosine"  # warmup_cosine | linear_to_zero | constant
    warmup_steps: int = 0
    total_steps: int = 1000  # also the length of training
    min_lr_ratio: float = 0.3  # cosine floor as a fraction of lr


@dataclass
class EngineConfig:
    name: str = "single"  # single | ddp | fsdp2 | deepspeed
    zero_stage: int = 2
    deepspeed_config: str = ""  # optional JSON merged under the generated DeepSpeed config
    precision: str = "fp32"  # fp32 | bf16 | auto (bf16 where the device computes it natively: train/precision.py)
    grad_accum: int = 1
    activation_checkpointing: bool = False
    backend: str = ""  # nccl | gloo ("" = nccl on GPU, gloo on CPU)
    threads: int = 0  # torch threads per rank (0: leave as is)


@dataclass
class CheckpointConfig:
    every: int = 1000
    keep: int = 3
    export: bool = True  # also write a plain model directory (safetensors + config + vocab) per checkpoint
    average_last: int = 0  # at the end, average the last K checkpoints into exp_dir/model_avg


@dataclass
class LogConfig:
    every: int = 10
    tensorboard: bool = True
    plot: bool = True
    progress_bar: bool = True
    valid_every: int = 0  # 0: only at checkpoints


@dataclass
class TrainConfig:
    exp_dir: str = "exp/speechlm"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelInit = field(default_factory=ModelInit)
    init_from: InitFrom = field(default_factory=InitFrom)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    nan_policy: str = "stop"  # stop | skip: what a non-finite loss does
    resume: bool = True  # continue from exp_dir/checkpoints/latest when present
    stop_after: int = 0  # leave (with a checkpoint) after this many steps of this process (pre-emption drills)


def _check_choice(where, v, choices):
    if v not in choices:
        raise ConfigError(f"{where}: {v!r} is not one of {list(choices)}")


def load(path=None, overrides=()) -> TrainConfig:
    cfg = cfgmod.load(TrainConfig, path, overrides)
    where = str(path or "config")
    srcs = []
    for i, s in enumerate(cfg.data.train):
        if isinstance(s, str):
            s = {"dir": s}
        srcs.append(cfgmod.from_dict(DataSource, s, f"{where}: data.train[{i}]"))
    cfg.data.train = srcs
    if not isinstance(cfg.data.valid, list) or not all(isinstance(v, str) for v in cfg.data.valid):
        raise ConfigError(f"{where}: data.valid must be a list of data directories")
    _check_choice(f"{where}: model.init", cfg.model.init, ("random", "llm", "pretrained"))
    _check_choice(f"{where}: schedule.name", cfg.schedule.name, ("warmup_cosine", "linear_to_zero", "constant"))
    _check_choice(f"{where}: engine.name", cfg.engine.name, ("single", "ddp", "fsdp2", "deepspeed"))
    _check_choice(f"{where}: engine.precision", cfg.engine.precision, PRECISIONS)
    _check_choice(f"{where}: engine.zero_stage", cfg.engine.zero_stage, (0, 1, 2, 3))
    _check_choice(f"{where}: nan_policy", cfg.nan_policy, ("stop", "skip"))
    if cfg.data.loss_region is not None:
        _check_choice(f"{where}: data.loss_region", cfg.data.loss_region, ("target", "all"))
    cfg.optim.betas = tuple(float(b) for b in cfg.optim.betas)
    if cfg.engine.grad_accum < 1:
        raise ConfigError(f"{where}: engine.grad_accum must be >= 1")
    if not cfg.optim.body_lr_scale > 0:
        raise ConfigError(f"{where}: optim.body_lr_scale must be > 0, got {cfg.optim.body_lr_scale}")
    if cfg.nan_policy == "skip" and cfg.engine.name == "deepspeed":
        raise ConfigError(f"{where}: nan_policy=skip is not supported with engine deepspeed (its step cannot be dropped); use stop")
    return cfg


def to_dict(cfg: TrainConfig) -> dict[str, Any]:
    return cfgmod.to_dict(cfg)
