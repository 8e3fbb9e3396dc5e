"""Training data: a mixture of data directories, frame-budget batches, per-rank shards.

Batches are planned once per epoch from (seed, epoch) alone, so the order is
the same on every rank, after a restart, and whatever the number of loader
workers:

1. **Mixture.**  Each data directory ``d`` with ratio ``r`` contributes
   ``round(r * len(d))`` examples per epoch (all of them ``floor(r)`` times,
   plus a random subset for the fraction), drawn with ``rng(seed, epoch, d)``.
2. **Pools.**  The epoch's examples are shuffled and cut into pools of
   ``pool_size`` examples.  *Bucketing*: a pool is sorted by length and cut
   greedily into micro-batches whose padded size ``rows x longest`` (in LM
   steps, i.e. frames + N - 1) stays within the micro-batch budget.
   *Packing*: a pool is packed best-fit-decreasing into rows of
   ``pack_len`` steps, and rows are grouped into micro-batches.
3. **Global steps.**  One optimizer step consumes ``world_size x grad_accum``
   micro-batches (the micro-batch budget is ``batch_bins / (world_size x
   grad_accum)``, so ``batch_bins`` is the global batch in steps, as in the
   paper's ~1M frames per step).  Consecutive micro-batches form a step, the
   last incomplete step of an epoch is dropped (every rank gets the same
   number of batches), and the order of steps is shuffled.  Rank ``r`` takes
   micro-batches ``r*A .. r*A + A - 1`` of every step.

A micro-batch with one rank and ``A`` accumulation steps is thus made of
exactly the examples that ``A`` ranks with one step each see: the
equivalence that the distributed tests check.
"""

from __future__ import annotations

import bisect
import math
from typing import Iterator, Sequence

import numpy as np
from torch.utils.data import DataLoader, Dataset, Sampler

from ..interleave import delayed_length, loss_frames
from ..vocab import PAD, JointVocab
from .collate import collate, collate_packed
from .datadir import DataDir, SpliceError


class DataError(ValueError):
    pass


class Mixture:
    """Several data directories behind one global example index."""

    def __init__(self, dirs: Sequence[DataDir], ratios: Sequence[float] | None = None):
        if not dirs:
            raise DataError("no training data: the data list is empty (config data.train)")
        self.dirs = list(dirs)
        self.ratios = list(ratios) if ratios is not None else [1.0] * len(dirs)
        for d, r in zip(self.dirs, self.ratios):
            if r < 0:
                raise DataError(f"{d.path}: sampling ratio {r} is negative")
        v0 = self.dirs[0].vocab
        for d in self.dirs[1:]:
            v0.check_matches(d.vocab, f"data directory {d.path} (vs {self.dirs[0].path})")
        self.vocab: JointVocab = v0
        self.offsets = np.cumsum([0] + [len(d) for d in self.dirs])
        # lengths in LM steps, what the batch budget counts
        self.steps = delayed_length(np.concatenate([d.lengths for d in self.dirs]), v0.num_streams)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, g: int) -> tuple[DataDir, int]:
        k = int(np.searchsorted(self.offsets, g, side="right") - 1)
        return self.dirs[k], int(g - self.offsets[k])

    def example_id(self, g: int) -> str:
        d, i = self.locate(g)
        return f"{d.path.name}:{d.examples[i]['id']}"

    def build(self, g: int):
        d, i = self.locate(g)
        return d.build(i)

    def epoch_examples(self, seed: int, epoch: int) -> np.ndarray:
        out = []
        for k, (d, r) in enumerate(zip(self.dirs, self.ratios)):
            rng = np.random.default_rng([seed, epoch, k, 1])
            n = len(d)
            whole, frac = int(math.floor(r)), r - math.floor(r)
            idx = [np.arange(n)] * whole
            extra = int(round(frac * n))
            if extra:
                idx.append(rng.permutation(n)[:extra])
            if idx:
                out.append(np.concatenate(idx) + self.offsets[k])
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


class BatchPlan:
    """Deterministic plan of global steps for one rank (see module docstring)."""

    def __init__(
        self,
        mixture: Mixture,
        batch_bins: int,
        world_size: int = 1,
        rank: int = 0,
        grad_accum: int = 1,
        seed: int = 0,
        pool_size: int = 4096,
        packing: bool = False,
        pack_len: int = 0,
        max_rows: int = 0,
        shuffle: bool = True,
    ):
        self.mix = mixture
        self.world_size, self.rank, self.grad_accum = world_size, rank, grad_accum
        self.per_step = world_size * grad_accum
        self.micro_budget = batch_bins // self.per_step
        self.seed, self.pool_size, self.packing, self.shuffle = seed, pool_size, packing, shuffle
        self.pack_len = pack_len or self.micro_budget
        self.max_rows = max_rows
        longest = int(mixture.steps.max())
        if longest > self.micro_budget and not packing:
            g = int(np.argmax(mixture.steps))
            raise DataError(
                f"example {mixture.example_id(g)} has {longest} steps, more than the micro-batch budget "
                f"batch_bins/(world_size*grad_accum) = {batch_bins}/{self.per_step} = {self.micro_budget}; raise batch_bins or set max_len when splicing"
            )
        if packing and longest > self.pack_len:
            g = int(np.argmax(mixture.steps))
            raise DataError(f"example {mixture.example_id(g)} has {longest} steps, more than pack_len {self.pack_len}")
        self._cache: dict[int, list] = {}

    # ------------------------------------------------------------ planning
    def _micro_batches(self, pool: np.ndarray) -> list[tuple]:
        L = self.mix.steps
        out = []
        if not self.packing:
            order = pool[np.argsort(-L[pool], kind="stable")]
            cur: list = []
            for g in order:
                longest = L[cur[0]] if cur else L[g]
                if cur and ((len(cur) + 1) * longest > self.micro_budget or (self.max_rows and len(cur) >= self.max_rows)):
                    out.append(tuple((int(x),) for x in cur))
                    cur = []
                cur.append(g)
            if cur:
                out.append(tuple((int(x),) for x in cur))
            return out
        # best-fit decreasing into rows of pack_len steps: each example goes to the row
        # with the least room that still fits it (bisect on the sorted free space, so a
        # pool costs O(n log n) rather than O(n x rows))
        order = pool[np.argsort(-L[pool], kind="stable")]
        rows: list[list[int]] = []
        free: list[tuple[int, int]] = []  # sorted (free steps, row index)
        for g in order:
            need = int(L[g])
            j = bisect.bisect_left(free, (need, -1))
            if j < len(free):
                room, r = free.pop(j)
                rows[r].append(int(g))
                bisect.insort(free, (room - need, r))
            else:
                rows.append([int(g)])
                bisect.insort(free, (self.pack_len - need, len(rows) - 1))
        per_mb = max(1, self.micro_budget // self.pack_len)
        for i in range(0, len(rows), per_mb):
            out.append(tuple(tuple(r) for r in rows[i : i + per_mb]))
        return out

    def epoch(self, epoch: int) -> list[list[tuple]]:
        """All global steps of ``epoch``: each a list of ``world_size * grad_accum`` micro-batches."""
        if epoch in self._cache:
            return self._cache[epoch]
        rng = np.random.default_rng([self.seed, epoch, 2])
        ex = self.mix.epoch_examples(self.seed, epoch)
        if self.shuffle:
            ex = rng.permutation(ex)
        mbs: list[tuple] = []
        for i in range(0, len(ex), self.pool_size):
            mbs.extend(self._micro_batches(ex[i : i + self.pool_size]))
        steps = [mbs[i : i + self.per_step] for i in range(0, len(mbs) - self.per_step + 1, self.per_step)]
        if self.shuffle:
            steps = [steps[i] for i in rng.permutation(len(steps))]
        if not steps:
            raise DataError(
                f"epoch {epoch} has no complete step: {len(mbs)} micro-batches for {self.per_step} per step "
                f"(world_size*grad_accum); lower batch_bins or add data"
            )
        self._cache = {epoch: steps}
        return steps

    def steps_per_epoch(self, epoch: int = 0) -> int:
        return len(self.epoch(epoch))

    def rank_micro_batches(self, step_mbs: list[tuple]) -> list[tuple]:
        a = self.grad_accum
        return step_mbs[self.rank * a : (self.rank + 1) * a]

    def iterate(self, epoch: int, offset: int) -> Iterator[tuple[int, int, int, tuple]]:
        """-> (epoch, offset_in_epoch, accum_index, micro-batch) from a position on, forever."""
        while True:
            steps = self.epoch(epoch)
            for o in range(offset, len(steps)):
                for a, mb in enumerate(self.rank_micro_batches(steps[o])):
                    yield epoch, o, a, mb
            epoch, offset = epoch + 1, 0


class BatchDataset(Dataset):
    def __init__(self, mix: Mixture, packing: bool, pad_to_multiple: int):
        self.mix, self.packing, self.pad_to_multiple = mix, packing, pad_to_multiple

    def __getitem__(self, item):
        epoch, offset, accum, mb = item
        rows = [[self.mix.build(g) for g in row] for row in mb]
        if self.packing:
            batch = collate_packed(rows)
        else:
            batch = collate([r[0] for r in rows], self.pad_to_multiple)
        batch["ids"] = [self.mix.example_id(g) for row in mb for g in row]
        batch["position"] = (epoch, offset, accum)
        # the frames the model's loss counts, known before the forward so that the
        # trainer can normalise every rank's loss by the count of the global batch
        batch["loss_frames"] = int(loss_frames(batch["steps"], batch["loss_mask"], batch["attention_mask"], PAD))
        batch["real_steps"] = int(batch["attention_mask"].sum())
        return batch

    def __len__(self):  # pragma: no cover - sized by the sampler
        raise TypeError


class _PlanSampler(Sampler):
    def __init__(self, plan: BatchPlan, epoch: int, offset: int):
        self.plan, self.epoch, self.offset = plan, epoch, offset

    def __iter__(self):
        return self.plan.iterate(self.epoch, self.offset)


def _identity(x):
    return x


def make_loader(plan: BatchPlan, epoch: int, offset: int, num_workers: int = 0, prefetch: int = 4, pad_to_multiple: int = 1) -> DataLoader:
    """An endless loader of this rank's micro-batches from (epoch, offset) on."""
    ds = BatchDataset(plan.mix, plan.packing, pad_to_multiple)
    kw = dict(prefetch_factor=prefetch, persistent_workers=False) if num_workers > 0 else {}
    return DataLoader(ds, batch_size=None, sampler=_PlanSampler(plan, epoch, offset), num_workers=num_workers, collate_fn=_identity, **kw)


def eval_batches(d: DataDir, batch_bins: int, world_size: int = 1, rank: int = 0) -> list[tuple]:
    """Validation micro-batches for this rank (length-sorted, every example once;
    ranks take every world_size-th batch, so some ranks may get one fewer)."""
    mix = Mixture([d])
    plan = BatchPlan(mix, batch_bins, seed=0, pool_size=len(mix), shuffle=False)
    mbs = plan._micro_batches(np.arange(len(mix)))
    return [mbs[i] for i in range(rank, len(mbs), world_size)], mix


__all__ = ["BatchDataset", "BatchPlan", "DataDir", "DataError", "Mixture", "SpliceError", "make_loader", "eval_batches"]
