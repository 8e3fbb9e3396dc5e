"""The training loop shared by every engine.

One call of :func:`train` runs (or resumes) one run in ``cfg.exp_dir``:

* the data plan (:mod:`espnet2_speechlm.data.loader`) fixes the batches from
  the seed alone, and a checkpoint stores the data position (epoch, offset)
  and every rank's RNG states, so a killed run started again with the same
  command continues exactly where its last checkpoint was (bitwise equal
  losses on CPU in fp32; tested);
* the learning rate is a pure function of the step (:mod:`.schedule`);
* SIGTERM / SIGINT (Slurm pre-emption) finish the current step, write a
  checkpoint on every rank at the same step, and exit with status 0;
* a non-finite loss is reported with the step and the example ids of the
  micro-batch; ``nan_policy`` decides whether the step is skipped (no update,
  the data moves on) or training stops (exit status 3, the last checkpoint is
  kept).
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import resource
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from ..data.loader import BatchPlan, DataError, Mixture, BatchDataset, eval_batches, make_loader
from ..data.datadir import DataDir
from ..model import MultiStreamLM
from ..model.loss import CATEGORY_NAMES
from ..vocab import JointVocab
from . import checkpoint as ck
from .config import TrainConfig
from .engines import all_reduce_sum, barrier, build_engine, init_distributed
from .report import Reporter
from .schedule import final_lr, lr_at

log = logging.getLogger("espnet2_speechlm.train")


class NonFiniteLoss(RuntimeError):
    pass


# --------------------------------------------------------------------- model
def build_model(cfg: TrainConfig, vocab: JointVocab) -> MultiStreamLM:
    from ..model.build import from_text_llm, random_body

    mc = cfg.model.speechlm
    if cfg.model.init == "random":
        if not cfg.model.hf_config:
            raise ValueError("model.init=random needs model.hf_config (model_type, hidden_size, num_hidden_layers, ...)")
        model = random_body(cfg.model.hf_config, vocab, mc, seed=cfg.seed)
    elif cfg.model.init == "llm":
        if not cfg.model.llm_dir:
            raise ValueError("model.init=llm needs model.llm_dir (a local Hugging Face model directory)")
        sem = vocab.block("semantic").size
        ac = vocab.block("acoustic")
        model = from_text_llm(cfg.model.llm_dir, sem, ac.codebooks, ac.codebook_size, mc, seed=cfg.seed)
        vocab.check_matches(model.vocab, f"text LLM {cfg.model.llm_dir} (its tokenizer size must be the vocabulary's text block)")
        if cfg.model.speech_tokenizer_dir:
            from ..model.speech_init import init_speech_rows
            from ..tokenizers.speech import code_vectors

            d = cfg.model.speech_tokenizer_dir
            done = init_speech_rows(model.embed.weight, model.vocab, code_vectors(d), seed=cfg.seed, source=str(d))
            log.info(f"speech rows from {cfg.model.speech_tokenizer_dir}: {', '.join(done) or 'none (no stored code vectors)'}")
    else:
        model = MultiStreamLM.from_pretrained(cfg.model.pretrained_dir, vocab=vocab)
    return model


def load_weights(model: MultiStreamLM, path: str, vocab: JointVocab) -> Path:
    """Weights of a checkpoint (its exported model/) into an unwrapped model."""
    from safetensors.torch import load_model

    d = ck.find_model_dir(Path(path))
    ck.check_vocab(d, vocab)
    missing, unexpected = load_model(model, str(d / "model.safetensors"), strict=False)
    if missing or unexpected:
        raise RuntimeError(f"{d / 'model.safetensors'}: does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return d


def check_context(mix: Mixture, model: MultiStreamLM, cfg: TrainConfig) -> None:
    ctx = model.max_steps
    if ctx is None:
        return
    if cfg.data.packing and (cfg.data.pack_len or 0) > ctx:
        raise ValueError(f"data.pack_len={cfg.data.pack_len} is longer than the model's context of {ctx} steps")
    too_long = np.nonzero(mix.steps > ctx)[0]
    if len(too_long):
        g = int(too_long[0])
        d, i = mix.locate(g)
        raise DataError(
            f"{d.path}/examples.jsonl:{i + 1}: example {d.examples[i]['id']!r} has {int(mix.steps[g])} steps "
            f"(frames + N-1), longer than the model's context of {ctx} ({len(too_long)} such examples); "
            f"re-splice with --max_len or use a body with a longer context"
        )


# ------------------------------------------------------------------- helpers
STAT_KEYS_CAT = [f"loss_{c}" for c in CATEGORY_NAMES[1:]] + ["loss_ctc", "loss_guided"]


def _stat_keys(N: int) -> list[str]:
    return STAT_KEYS_CAT + [f"acc_stream{n}" for n in range(N)]


def _memory_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _Signals:
    def __init__(self):
        self.received = 0
        self._old = {}
        for s in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread (e.g. inside some test runners)
                pass

    def _handle(self, signum, frame):
        self.received = signum
        log.warning(f"received signal {signum}: finishing this step, writing a checkpoint, then exiting")

    def restore(self):
        for s, h in self._old.items():
            signal.signal(s, h)


# ---------------------------------------------------------------------- main
@dataclass
class _Run:
    """Everything the training loop works with, as set up by :func:`_setup`."""

    rank: int
    world: int
    device: torch.device
    ckroot: Path
    mix: Mixture
    valid_dirs: list
    model: MultiStreamLM
    engine: object
    plan: BatchPlan
    step: int
    epoch: int
    offset: int
    counters: dict


def train(cfg: TrainConfig) -> dict:
    """Run (or resume) the run ``cfg`` describes; ``cfg`` is not modified."""
    run = _setup(cfg)
    return _loop(cfg, run)


def _loop(cfg: TrainConfig, r: _Run) -> dict:
    A, total, engine = cfg.engine.grad_accum, cfg.schedule.total_steps, r.engine
    it = iter(_loader(cfg, r))
    rep = Reporter(Path(cfg.exp_dir), r.rank == 0, cfg.log.tensorboard, cfg.log.plot, cfg.log.progress_bar, total, r.step)
    win = _Window(_stat_keys(r.mix.vocab.num_streams))
    sig = _Signals()
    engine.train(True)
    step, ran, stop_reason = r.step, 0, None
    t_last = t_start = time.time()
    try:
        while step < total:
            step += 1
            # the learning rate: a pure function of the step
            lr = lr_at(cfg.schedule, cfg.optim.lr, step)
            engine.set_lr(lr)
            # forward and backward of this rank's micro-batches (gradient accumulation)
            mbs = [next(it) for _ in range(A)]
            finite = _accumulate(cfg, r, mbs, step, win)
            # the optimizer step (clipping inside the engine), skipped after a non-finite loss
            if finite:
                gnorm = engine.step()
            else:
                r.counters["steps_skipped"] += 1
                gnorm = float("nan")
            r.epoch, r.offset = mbs[-1]["position"][0], mbs[-1]["position"][1] + 1
            win.add_step(gnorm, lr)
            ran += 1
            rep.tick(1, {"lr": f"{lr:.2e}"})
            # logging
            if step % cfg.log.every == 0 or step == total:
                rec = win.flush(r.device, step, r.epoch)
                dt, t_last = time.time() - t_last, time.time()
                rec["frames_per_s"] = rec.pop("_real_steps") / max(dt, 1e-9)
                rec["tokens_per_s"] = rec["frames_per_s"] * r.mix.vocab.num_streams
                rec["memory_mb"] = _memory_mb(r.device)
                rec["eta_s"] = (time.time() - t_start) / ran * (total - step)
                r.counters["frames"] += rec["frames"]
                rep.record(rec)
                rep.line(_format(rec))
            # validation and checkpoints; every rank must agree on both (they run collectives)
            signalled = all_reduce_sum(float(sig.received > 0), r.device) > 0
            stop_now = signalled or bool(cfg.stop_after and ran >= cfg.stop_after)
            scheduled = step % cfg.checkpoint.every == 0 or step == total
            if cfg.log.valid_every and step % cfg.log.valid_every == 0 and not (scheduled or stop_now):
                validate(cfg, engine, r.valid_dirs, r.plan, r.device, r.world, r.rank, rep, step)
            if scheduled or stop_now:
                # a scheduled checkpoint is validated also when the run stops there (stop_after);
                # a signal's extra checkpoint is not: pre-emption leaves little time
                if cfg.data.valid and scheduled and not signalled:
                    validate(cfg, engine, r.valid_dirs, r.plan, r.device, r.world, r.rank, rep, step)
                save_checkpoint(cfg, engine, r.model, r.ckroot, step, r.epoch, r.offset, r.counters, r.rank, rep)
            # stopping early: a signal (pre-emption) or stop_after
            if stop_now:
                stop_reason = f"signal {sig.received}" if sig.received else f"stop_after={cfg.stop_after}"
                break
        if step >= total:
            _finish(cfg, r)
    finally:
        sig.restore()
        rep.close()
    if r.rank == 0:
        log.info(f"stopped at step {step} ({stop_reason})" if stop_reason else f"finished at step {step}, final lr {final_lr(cfg.schedule, cfg.optim.lr):.3g}")
    barrier()
    return {"step": step, "stopped": stop_reason, "engine": engine, "model": r.model, "final_lr": final_lr(cfg.schedule, cfg.optim.lr)}


def _accumulate(cfg: TrainConfig, r: _Run, mbs: list[dict], step: int, win: "_Window") -> bool:
    """Forward and backward of one step's micro-batches, each loss sum divided
    by the real frames of the whole global batch.  Returns False (gradients
    dropped) when some rank's loss is not finite and ``nan_policy`` is skip."""
    gframes = all_reduce_sum(sum(b["loss_frames"] for b in mbs), r.device)
    for a, b in enumerate(mbs):
        # gradients are reduced across ranks on the last micro-batch only
        with r.engine.sync_gradients(a == len(mbs) - 1):
            loss_sum, frames, stats = r.engine.forward(b)
            bad = all_reduce_sum(0.0 if torch.isfinite(loss_sum).item() else 1.0, r.device)
            if bad:
                msg = (f"non-finite loss at step {step} (micro-batch {a}) on {int(bad)} rank(s); "
                       f"rank {r.rank} batch ids {b['ids'][:8]} loss sum {loss_sum.item()}")
                log.error(msg)
                if cfg.nan_policy == "stop":
                    raise NonFiniteLoss(msg)
                r.engine.zero_grad()
                return False
            r.engine.backward(loss_sum, gframes)
        win.add_micro(loss_sum, frames, stats, b)
    return True


def _setup(cfg: TrainConfig) -> _Run:
    """Processes, data, model and engine, and the state to start from (a
    checkpoint of this run, or ``init_from``)."""
    if cfg.engine.threads:
        torch.set_num_threads(cfg.engine.threads)
    rank, world, device = init_distributed(cfg)
    ckroot = Path(cfg.exp_dir) / "checkpoints"
    if rank == 0:
        ckroot.mkdir(parents=True, exist_ok=True)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    mix, valid_dirs = _open_data(cfg)
    last = ck.latest_checkpoint(ckroot) if cfg.resume else None
    if cfg.resume and last is None and cfg.exp_dir and ckroot.exists() and any(ckroot.glob("step_*")) and rank == 0:
        log.warning(f"{ckroot}: only incomplete checkpoints (*.tmp); starting from scratch")
    if last is not None:
        ck.check_vocab(last, mix.vocab)
    model = build_model(cfg, mix.vocab)
    check_context(mix, model, cfg)
    if last is None and cfg.init_from.checkpoint:
        src = load_weights(model, str(ck.resolve_checkpoint(Path(cfg.init_from.checkpoint))), mix.vocab)
        if rank == 0:
            log.info(f"initialised weights from {src}")
    engine = build_engine(model, cfg, device, world)
    step, epoch, offset, counters = _restore(cfg, engine, last, rank, world)
    A = cfg.engine.grad_accum
    pack_len = cfg.data.pack_len
    if cfg.data.packing and not pack_len and model.max_steps:
        pack_len = min(model.max_steps, cfg.data.batch_bins // (world * A))  # packed rows may not outgrow the context
    plan = BatchPlan(mix, cfg.data.batch_bins, world, rank, A, cfg.seed, cfg.data.pool_size, cfg.data.packing, pack_len, cfg.data.max_rows)
    if rank == 0:
        log.info(
            f"data: {len(mix)} examples in {len(mix.dirs)} directories, {plan.steps_per_epoch(epoch)} steps in epoch {epoch}, "
            f"micro-batch budget {plan.micro_budget} steps x {world} ranks x {A} accumulation; "
            f"model: {model.num_parameters() / 1e6:.2f}M parameters, engine {cfg.engine.name}"
        )
    return _Run(rank, world, device, ckroot, mix, valid_dirs, model, engine, plan, step, epoch, offset, counters)


def _open_data(cfg: TrainConfig) -> tuple[Mixture, list[DataDir]]:
    dirs = []
    for i, s in enumerate(cfg.data.train):
        if not s.dir:
            raise DataError(f"data.train[{i}] has no dir")
        dirs.append(DataDir(s.dir, loss_region=cfg.data.loss_region))
    mix = Mixture(dirs, [s.ratio for s in cfg.data.train])
    # open the dev sets now: a wrong path must fail before hours of training, not at the first validation
    return mix, [DataDir(v, vocab=mix.vocab, loss_region=cfg.data.loss_region) for v in cfg.data.valid]


def _restore(cfg: TrainConfig, engine, last: Path | None, rank: int, world: int) -> tuple[int, int, int, dict]:
    """Load the checkpoint to resume from (engine, RNG states) or ``init_from``'s
    optimizer; returns (step, epoch, offset in the epoch, counters)."""
    counters = {"frames": 0.0, "steps_skipped": 0}
    if last is None:
        if cfg.init_from.checkpoint and cfg.init_from.load_optimizer:
            engine.load(ck.resolve_checkpoint(Path(cfg.init_from.checkpoint)) / "engine", load_optimizer=True)
        return 0, 0, 0, counters
    engine.load(last / "engine", load_optimizer=True)
    st = json.loads((last / "trainer_state.json").read_text())
    counters.update(st.get("counters", {}))
    rng_file = last / "rng" / f"rank{rank}.pt"
    if rng_file.exists():
        ck.set_rng_state(torch.load(rng_file, weights_only=False))
    if rank == 0:
        log.info(f"resuming from {last} (step {st['step']}, epoch {st['epoch']}, offset {st['offset']})")
        _warn_changes(last, cfg, st, world)
    return st["step"], st["epoch"], st["offset"], counters


def _loader(cfg: TrainConfig, r: _Run):
    loader = make_loader(r.plan, r.epoch, r.offset, cfg.data.num_workers, cfg.data.prefetch)
    loader.generator = torch.Generator().manual_seed(cfg.seed)  # workers' seeds must not consume the global RNG (exact resume)
    return loader


def _finish(cfg: TrainConfig, r: _Run) -> None:
    """The end of the schedule: the final learning rate, the averaged model."""
    r.engine.set_lr(final_lr(cfg.schedule, cfg.optim.lr))
    if cfg.checkpoint.average_last and r.rank == 0:
        dirs = ck.list_checkpoints(r.ckroot)[-cfg.checkpoint.average_last :]
        out = ck.average_checkpoints([d / "model" for d in dirs], Path(cfg.exp_dir) / "model_avg")
        log.info(f"averaged {len(dirs)} checkpoints into {out}")


class _Window:
    """Statistics accumulated between two log lines, reduced over ranks when flushed."""

    def __init__(self, keys):
        self.keys = keys
        self.reset()

    def reset(self):
        self.sums = np.zeros(len(self.keys))
        self.counts = np.zeros(len(self.keys))
        self.loss_sum = self.frames = self.real = self.total = 0.0
        self.gn, self.lr, self.n = [], 0.0, 0

    def add_micro(self, loss_sum, frames, stats, b):
        self.loss_sum += float(loss_sum.detach())
        self.frames += float(frames)
        for i, k in enumerate(self.keys):
            if k in stats:
                self.sums[i] += stats[k]
                self.counts[i] += 1
        self.real += b["real_steps"]
        self.total += b["steps"].shape[0] * b["steps"].shape[1]

    def add_step(self, gn, lr):
        self.gn.append(gn)
        self.lr = lr
        self.n += 1

    def flush(self, device, step, epoch) -> dict:
        v = np.concatenate([self.sums, self.counts, [self.loss_sum, self.frames, self.real, self.total]])
        t = torch.tensor(v, dtype=torch.float64, device=device)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(t)
        v = t.cpu().numpy()
        K = len(self.keys)
        rec = {"step": step, "epoch": epoch, "loss": v[2 * K] / max(v[2 * K + 1], 1), "lr": self.lr}
        finite = [g for g in self.gn if math.isfinite(g)]
        rec["grad_norm"] = float(np.mean(finite)) if finite else float("nan")
        for i, k in enumerate(self.keys):
            if v[K + i] > 0:
                rec[k] = v[i] / v[K + i]
        rec["frames"] = v[2 * K + 1]
        rec["_real_steps"] = v[2 * K + 2]
        rec["padding_fraction"] = 1.0 - v[2 * K + 2] / max(v[2 * K + 3], 1)
        self.reset()
        return rec


def _format(rec: dict) -> str:
    parts = [f"step {rec['step']}", f"epoch {rec['epoch']}", f"loss {rec['loss']:.4f}"]
    parts += [f"{k} {rec[k]:.3f}" for k in STAT_KEYS_CAT if k in rec]
    accs = [f"{rec[k]:.2f}" for k in sorted(k for k in rec if k.startswith("acc_stream"))]
    if accs:
        parts.append("acc " + "/".join(accs))
    parts += [
        f"lr {rec['lr']:.3e}", f"gnorm {rec['grad_norm']:.3f}", f"frames/s {rec['frames_per_s']:.0f}",
        f"tokens/s {rec['tokens_per_s']:.0f}", f"pad {rec['padding_fraction']:.3f}", f"mem {rec['memory_mb']:.0f}MB",
        f"eta {_hms(rec['eta_s'])}",
    ]
    return " | ".join(parts)


def _warn_changes(last: Path, cfg: TrainConfig, st: dict, world: int) -> None:
    """A resumed run is only exact with the same data, seed, schedule and batch plan."""
    import yaml

    from .config import to_dict

    f = last / "train_config.yaml"
    if f.exists():
        old = yaml.safe_load(f.read_text())
        new = yaml.safe_load(yaml.safe_dump(to_dict(cfg)))
        ignore = ("stop_after", "resume", "log", "checkpoint")

        def flat(d, pre=""):
            for k, v in d.items():
                if isinstance(v, dict):
                    yield from flat(v, f"{pre}{k}.")
                else:
                    yield f"{pre}{k}", v

        o, n = dict(flat(old)), dict(flat(new))
        changed = [k for k in sorted(set(o) | set(n)) if o.get(k) != n.get(k) and k.split(".")[0] not in ignore]
        if changed:
            log.warning(f"resuming with a changed configuration ({', '.join(changed[:8])}): the run will not be identical to an uninterrupted one")
    w0, a0 = st.get("world_size", world), st.get("grad_accum", cfg.engine.grad_accum)
    if w0 * a0 != world * cfg.engine.grad_accum:
        log.warning(
            f"the checkpoint was written with {w0} ranks x {a0} accumulation steps, this run has {world} x {cfg.engine.grad_accum}: "
            f"the batch plan differs (keep ranks x grad_accum constant to continue the same data order)"
        )


def _hms(sec: float) -> str:
    sec = int(sec)
    return f"{sec // 3600}:{sec // 60 % 60:02d}:{sec % 60:02d}"


@torch.no_grad()
def validate(cfg, engine, valid_dirs, plan, device, world, rank, rep, step) -> dict:
    engine.train(False)
    out = {}
    budget = cfg.data.valid_batch_bins or plan.micro_budget
    for d in valid_dirs:
        mbs, mix = eval_batches(d, budget, world, rank)
        # every rank runs as many forwards as rank 0, which has the most batches (FSDP and
        # ZeRO-3 gather parameters inside the forward); extra ones are not counted
        most = len(eval_batches(d, budget, world, 0)[0])
        filler = mbs[0] if mbs else eval_batches(d, budget, 1, 0)[0][0]
        tot = np.zeros(2 + len(STAT_KEYS_CAT) * 2)
        ds = BatchDataset(mix, False, 1)
        for j in range(most):
            real = j < len(mbs)
            loss_sum, frames, stats = engine.forward(ds[(0, 0, 0, mbs[j] if real else filler)])
            if real:
                tot[0] += float(loss_sum)
                tot[1] += float(frames)
                for i, k in enumerate(STAT_KEYS_CAT):
                    if k in stats:
                        tot[2 + i] += stats[k] * float(frames)
                        tot[2 + len(STAT_KEYS_CAT) + i] += float(frames)
        t = torch.tensor(tot, dtype=torch.float64, device=device)
        if world > 1:
            dist.all_reduce(t)
        t = t.cpu().numpy()
        rec = {"step": step, "set": d.path.name, "loss": t[0] / max(t[1], 1), "frames": t[1]}
        for i, k in enumerate(STAT_KEYS_CAT):
            if t[2 + len(STAT_KEYS_CAT) + i] > 0:
                rec[k] = t[2 + i] / t[2 + len(STAT_KEYS_CAT) + i]
        rep.record(rec, prefix="valid")
        rep.line(f"valid {rec['set']} step {step} | loss {rec['loss']:.4f} | " + " | ".join(f"{k} {rec[k]:.3f}" for k in STAT_KEYS_CAT if k in rec))
        out[rec["set"]] = rec
    engine.train(True)
    return out


def save_checkpoint(cfg, engine, model, ckroot: Path, step, epoch, offset, counters, rank, rep) -> Path:
    name = ck.step_dir_name(step)
    final, tmp = ckroot / name, ckroot / (name + ".tmp")
    if rank == 0:
        if tmp.exists():
            shutil.rmtree(tmp)
        (tmp / "rng").mkdir(parents=True)
    barrier()
    engine.save(tmp / "engine", rank)
    if rank == 0:
        from .. import config as cfgmod

        cfgmod.save(cfg, tmp / "train_config.yaml")
    torch.save(ck.rng_state(), tmp / "rng" / f"rank{rank}.pt")
    if cfg.checkpoint.export:
        full = engine.full_state_dict()
        if rank == 0:
            ck.export_model(tmp / "model", full, model, cfg)
    barrier()
    if rank == 0:
        state = {
            "world_size": engine.world, "grad_accum": cfg.engine.grad_accum,
            "step": step, "epoch": epoch, "offset": offset, "counters": counters, "time": time.time(),
            "next_lr": lr_at(cfg.schedule, cfg.optim.lr, step + 1) if step < cfg.schedule.total_steps else final_lr(cfg.schedule, cfg.optim.lr),
        }
        ck.write_text_atomic(tmp / "trainer_state.json", json.dumps(state, indent=1) + "\n")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        ck.write_text_atomic(ckroot / "latest", name + "\n")
        keep = max(cfg.checkpoint.keep, cfg.checkpoint.average_last, 1)
        for old in ck.list_checkpoints(ckroot)[:-keep]:
            shutil.rmtree(old)
        rep.line(f"checkpoint {final}")
        try:
            rep.plot(Path(cfg.exp_dir) / "loss.png")
        except Exception as e:  # a plot must never cost a checkpoint
            log.warning(f"loss plot failed: {e}")
    barrier()
    return final
