"""Engines: the parallelism wrapped around the (parallelism-free) model.

Every engine has the same small interface, used by the training loop:

    with engine.sync_gradients(last_micro_batch):     # DDP/FSDP2 reduce gradients on the last one only
        loss_sum, frames, stats = engine.forward(batch)   # model forward (autocast for bf16)
        engine.backward(loss_sum, global_frames)     # gradient of sum(loss_sum) / global_frames
    engine.set_lr(lr)                            # before the step's first micro-batch (x each group's lr_scale)
    grad_norm = engine.step()                    # clip, optimizer step, zero grads
    engine.zero_grad()                           # drop accumulated grads (skipped step)
    engine.save(dir) / engine.load(dir, ...)     # engine-native checkpoint (collective)
    engine.full_state_dict()                     # full fp32 weights on rank 0 (collective)

The model is wrapped by small ``apply_*`` functions, always in the same
order (:func:`parallelize`): activation checkpointing first, then data
parallelism (DDP, FSDP2, or DeepSpeed's engine).

Loss normalisation: the loss of the *global* batch is the weighted CE sum
over every rank and micro-batch divided by the real-frame count of the whole
global batch (``global_frames``, all-reduced before the first backward).
DDP, FSDP2 and DeepSpeed average gradients over ranks (and DeepSpeed also
divides by its accumulation steps), so each micro-batch back-propagates
:func:`rescale_loss` of its loss sum, with the factor that undoes that
averaging.  This is the one place the training loss is divided.  A gradient
that is not reduced across ranks therefore gives a different update from
one rank on the same global batch (tested).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn

from ..model import MultiStreamLM
from .config import TrainConfig
from .precision import resolve_precision


def dist_env() -> tuple[int, int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def device_for(local_rank: int) -> torch.device:
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def free_port() -> int:
    """A TCP port nothing listens on now: single-process runs without a launcher
    must not collide with each other on one machine."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(cfg: TrainConfig) -> tuple[int, int, torch.device]:
    rank, world, local = dist_env()
    device = device_for(local)
    backend = cfg.engine.backend or ("nccl" if device.type == "cuda" else "gloo")
    if cfg.engine.name == "deepspeed":
        if device.type == "cpu":
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        for k, v in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0"), ("MASTER_ADDR", "127.0.0.1")):
            os.environ.setdefault(k, v)
        if "MASTER_PORT" not in os.environ:
            os.environ["MASTER_PORT"] = str(free_port())
        import deepspeed

        if device.type == "cpu" and os.environ.get("SPEECHLM_DS_SHM_COMM", "0") != "1":
            # DeepSpeed JIT-compiles a shared-memory all-reduce for CPU ranks on first use
            # (over a minute on a CPU-only host); gloo does the same job, so skip it unless asked for
            from deepspeed import ops as ds_ops

            ds_ops.__compatible_ops__["deepspeed_shm_comm"] = False
        deepspeed.init_distributed(dist_backend=backend)
    elif world > 1 or cfg.engine.name in ("ddp", "fsdp2"):
        if not dist.is_initialized():
            if "MASTER_ADDR" not in os.environ:  # a single process without a launcher
                os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0", WORLD_SIZE="1")
            dist.init_process_group(backend)
    if world > 1 and cfg.engine.name == "single":
        raise ValueError(f"engine 'single' cannot run on {world} ranks; choose ddp, fsdp2 or deepspeed")
    return rank, world, device


def all_reduce_sum(x: float | int, device) -> float:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    t = torch.tensor([float(x)], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.item()


def barrier():
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def rescale_loss(loss_sum: torch.Tensor, global_frames: float, averaged_over: int) -> torch.Tensor:
    """What one micro-batch back-propagates so that the gradient is that of
    (sum of every micro-batch's ``loss_sum``) / ``global_frames``, once the
    engine has averaged gradients over ``averaged_over`` contributions (ranks,
    times accumulation steps for DeepSpeed)."""
    return loss_sum * (averaged_over / max(global_frames, 1.0))


def decay_groups(params, weight_decay: float, **extra) -> list[dict]:
    """AdamW parameter groups: decoupled weight decay on matrices only; norms, biases
    and the per-stream embedding are not decayed.  ``extra`` goes into both groups."""
    params = list(params)
    return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay, **extra},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0, **extra}]


def _adamw(model, cfg: TrainConfig):
    o = cfg.optim
    params = [p for p in _unique_params(model) if p.requires_grad]
    # the embedding and head (tied or not) hold every row new to the model; the rest is the body
    outer = {id(p) for m in (model.embed, model.head) for p in m.parameters()}
    outer_params = [p for p in params if id(p) in outer]
    body_params = [p for p in params if id(p) not in outer]
    groups = []
    for part, scale in ((outer_params, 1.0), (body_params, o.body_lr_scale)):
        groups += decay_groups(part, o.weight_decay, lr_scale=scale)
    groups = [dict(g, lr=o.lr * g["lr_scale"]) for g in groups if g["params"]]
    # foreach=False: the same per-parameter arithmetic whatever the parameter layout (DTensor shards)
    return torch.optim.AdamW(groups, lr=o.lr, betas=o.betas, eps=o.eps, foreach=False)


def _set_group_lrs(param_groups, lr: float):
    for g in param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)


def _unique_params(model):
    return list({id(p): p for p in model.parameters()}.values())


# --------------------------------------------------------------- wrapping
def apply_activation_checkpointing(model: MultiStreamLM) -> MultiStreamLM:
    """Recompute each decoder layer's activations in the backward pass."""
    model.lm.gradient_checkpointing_enable()
    return model


def apply_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None)


def apply_fsdp2(model: MultiStreamLM) -> MultiStreamLM:
    """``fully_shard`` each decoder layer, then the root (embedding, head, norms)."""
    from torch.distributed.fsdp import fully_shard

    for layer in getattr(model.body, "layers", []):
        fully_shard(layer)
    fully_shard(model)
    return model


def parallelize(model: MultiStreamLM, cfg: TrainConfig, device: torch.device) -> nn.Module:
    """Wrap the model for a torch engine, in a fixed order: activation
    checkpointing, then data parallelism.  Returns the module to call."""
    if cfg.engine.activation_checkpointing:
        apply_activation_checkpointing(model)
    if cfg.engine.name == "ddp":
        return apply_ddp(model, device)
    if cfg.engine.name == "fsdp2":
        return apply_fsdp2(model)
    return model


@contextlib.contextmanager
def _fsdp2_gradient_sync(model, sync: bool):
    model.set_requires_gradient_sync(sync)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


class TorchEngine:
    """single process, DDP, or FSDP2 (``fully_shard`` per decoder layer + root)."""

    def __init__(self, model: MultiStreamLM, cfg: TrainConfig, device: torch.device, world: int):
        self.cfg, self.device, self.world = cfg, device, world
        self.precision = resolve_precision(cfg.engine.precision, device)
        self.model = model.to(device)
        self.kind = cfg.engine.name
        self.wrapped = parallelize(self.model, cfg, device)
        self.params = _unique_params(self.model)
        self.optimizer = _adamw(self.model, cfg)

    def _autocast(self):
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def sync_gradients(self, sync: bool):
        """A context for one micro-batch's forward and backward: gradients are
        reduced across ranks only when ``sync`` (the step's last micro-batch)."""
        if self.kind == "ddp" and not sync:
            return self.wrapped.no_sync()
        if self.kind == "fsdp2":
            return _fsdp2_gradient_sync(self.model, sync)
        return contextlib.nullcontext()

    def forward(self, batch):
        kw = _model_inputs(batch, self.device)
        with self._autocast():
            return self.wrapped(**kw)

    def backward(self, loss_sum, global_frames: float):
        rescale_loss(loss_sum, global_frames, self.world).backward()

    def set_lr(self, lr: float):
        _set_group_lrs(self.optimizer.param_groups, lr)

    def step(self) -> float:
        clip = self.cfg.optim.clip if self.cfg.optim.clip > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(self.params, clip)
        if hasattr(norm, "full_tensor"):
            norm = norm.full_tensor()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def zero_grad(self):
        self.optimizer.zero_grad(set_to_none=True)

    def train(self, mode=True):
        self.wrapped.train(mode)

    # ------------------------------------------------------------ checkpoints
    def save(self, d: Path, rank: int):
        if self.kind == "fsdp2":
            import torch.distributed.checkpoint as dcp
            from torch.distributed.checkpoint.state_dict import get_state_dict

            msd, osd = get_state_dict(self.model, self.optimizer)
            dcp.save({"model": msd, "optim": osd}, checkpoint_id=str(d))
            return
        if rank == 0:
            d.mkdir(parents=True, exist_ok=True)
            torch.save({"model": self.model.state_dict(), "optim": self.optimizer.state_dict()}, d / "state.pt")

    def load(self, d: Path, load_optimizer: bool = True):
        if self.kind == "fsdp2":
            import torch.distributed.checkpoint as dcp
            from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

            msd, osd = get_state_dict(self.model, self.optimizer)
            state = {"model": msd, "optim": osd} if load_optimizer else {"model": msd}
            dcp.load(state, checkpoint_id=str(d))
            set_state_dict(self.model, self.optimizer, model_state_dict=state["model"], optim_state_dict=state.get("optim", osd) if load_optimizer else {})
            return
        f = d / "state.pt"
        if not f.exists():
            raise FileNotFoundError(f"{d}: no state.pt (a checkpoint of engine {self.kind!r} was expected; was it written by another engine?)")
        sd = torch.load(f, map_location=self.device, weights_only=True)
        self.model.load_state_dict(sd["model"])
        if load_optimizer:
            self.optimizer.load_state_dict(sd["optim"])

    def full_state_dict(self) -> dict | None:
        if self.kind == "fsdp2":
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            sd = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
            return sd if dist.get_rank() == 0 else None
        return {k: v.detach().cpu() for k, v in self.model.state_dict().items()}


class DeepSpeedEngine:
    """DeepSpeed ZeRO stage 0-3 with a torch AdamW (no compiled ops needed)."""

    def __init__(self, model: MultiStreamLM, cfg: TrainConfig, device: torch.device, world: int):
        import deepspeed

        self.cfg, self.device, self.world = cfg, device, world
        self.precision = resolve_precision(cfg.engine.precision, device)
        self.model = model
        A = cfg.engine.grad_accum
        ds = {
            "train_micro_batch_size_per_gpu": 1,
            "gradient_accumulation_steps": A,
            "gradient_clipping": cfg.optim.clip,
            "zero_optimization": {"stage": cfg.engine.zero_stage, "stage3_gather_16bit_weights_on_model_save": True},
            "bf16": {"enabled": self.precision == "bf16"},
            "zero_allow_untested_optimizer": True,
            "steps_per_print": 10**9,
            "wall_clock_breakdown": False,
        }
        if cfg.engine.deepspeed_config:
            import json

            p = Path(cfg.engine.deepspeed_config)
            if not p.exists():
                raise FileNotFoundError(f"engine.deepspeed_config: {p} not found")
            user = json.loads(p.read_text())
            # the trainer owns these: they must agree with its own accounting
            for k in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size", "optimizer", "scheduler"):
                user.pop(k, None)
            ds = _merge(user, ds)  # the trainer's own keys (stage, precision, clipping) win
        self.ds_config = ds
        if cfg.engine.activation_checkpointing:
            apply_activation_checkpointing(model)
        # DeepSpeed's engine is the data parallelism: it comes last, as in parallelize()
        self.engine, self.optimizer, _, _ = deepspeed.initialize(model=model, optimizer=_adamw(model, cfg), config=ds)
        self.A = A
        self._norm = 0.0

    def sync_gradients(self, sync: bool):
        """DeepSpeed reduces at its own accumulation boundary."""
        return contextlib.nullcontext()

    def forward(self, batch):
        kw = _model_inputs(batch, self.engine.device)
        return self.engine(**kw)

    def backward(self, loss_sum, global_frames: float):
        # DeepSpeed divides by its accumulation steps and averages over ranks
        self.engine.backward(rescale_loss(loss_sum, global_frames, self.world * self.A))
        self.engine.step()  # an optimizer step only at the accumulation boundary

    def set_lr(self, lr: float):
        _set_group_lrs(self.engine.optimizer.param_groups, lr)

    def step(self) -> float:
        # the optimizer step already happened in the last micro-batch's engine.step()
        n = self.engine.get_global_grad_norm()
        return float(n) if n is not None else float("nan")

    def zero_grad(self):
        self.engine.zero_grad()

    def train(self, mode=True):
        self.engine.train(mode)

    def save(self, d: Path, rank: int):
        self.engine.save_checkpoint(str(d), tag="ds", save_latest=False)

    def load(self, d: Path, load_optimizer: bool = True):
        if not (d / "ds").exists():
            raise FileNotFoundError(f"{d}: no DeepSpeed checkpoint 'ds' (a checkpoint of engine deepspeed was expected)")
        path, _ = self.engine.load_checkpoint(
            str(d), tag="ds", load_optimizer_states=load_optimizer, load_lr_scheduler_states=False, load_module_only=not load_optimizer
        )
        if path is None:
            raise RuntimeError(f"{d}: DeepSpeed could not load the checkpoint")

    def full_state_dict(self) -> dict | None:
        import deepspeed

        if self.precision == "bf16":
            # the module holds bf16 copies: export the optimizer's fp32 master weights
            from deepspeed.utils import safe_get_full_fp32_param

            sd = {}
            full = {id(p): safe_get_full_fp32_param(p) for p in _unique_params(self.model)}  # collective in ZeRO-3
            if dist.get_rank() != 0:
                return None
            for n, p in self.model.named_parameters(remove_duplicate=False):
                sd[n] = full[id(p)].detach().float().cpu().clone()
            for n, b in self.model.named_buffers():
                if n in self.model.state_dict():
                    sd[n] = b.detach().cpu().clone()
            return sd
        params = _unique_params(self.model)
        ctx = deepspeed.zero.GatheredParameters(params, modifier_rank=None) if self.cfg.engine.zero_stage == 3 else contextlib.nullcontext()
        with ctx:
            if dist.get_rank() != 0:
                return None
            return {k: v.detach().float().cpu().clone() for k, v in self.model.state_dict().items()}


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _model_inputs(batch, device) -> dict:
    kw = {"steps": batch["steps"].to(device), "loss_mask": batch["loss_mask"].to(device)}
    if batch.get("packed"):
        kw["attention_mask"] = None  # block-diagonal attention from the restarting position ids
        kw["position_ids"] = batch["position_ids"].to(device)
    else:
        kw["attention_mask"] = batch["attention_mask"].to(device)
    return kw


def build_engine(model: MultiStreamLM, cfg: TrainConfig, device, world: int):
    if cfg.engine.name == "deepspeed":
        return DeepSpeedEngine(model, cfg, device, world)
    return TorchEngine(model, cfg, device, world)
