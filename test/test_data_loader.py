"""Frame-budget batch plans, per-rank shards, the loader, and packing."""

import numpy as np
import pytest
import torch
from train_helpers import TINY_BODY, make_data_dirs

from espnet2_speechlm.data.collate import collate, collate_packed
from espnet2_speechlm.data.loader import BatchPlan, DataError, Mixture, make_loader
from espnet2_speechlm.data.datadir import DataDir


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("loader")
    return make_data_dirs(root, tasks=("asr", "tts"), n_utt=40, seed=1)


def _mix(dirs, ratios=(1.0, 1.0)):
    return Mixture([DataDir(dirs["asr"]), DataDir(dirs["tts"])], list(ratios))


def test_plan_is_deterministic_budgeted_and_sharded_equally(dirs):
    mix = _mix(dirs)
    W, A, bins = 2, 2, 1200
    plans = [BatchPlan(mix, bins, W, r, A, seed=5, pool_size=32) for r in range(W)]
    one = BatchPlan(mix, bins, 1, 0, W * A, seed=5, pool_size=32)  # one rank accumulating W*A micro-batches
    for epoch in (0, 1):
        steps = plans[0].epoch(epoch)
        assert steps == BatchPlan(mix, bins, W, 0, A, seed=5, pool_size=32).epoch(epoch)  # same seed, same plan
        per_rank = [[mb for st in p.epoch(epoch) for mb in p.rank_micro_batches(st)] for p in plans]
        assert len(per_rank[0]) == len(per_rank[1]) == len(steps) * A  # equal batch counts on every rank
        for st in steps:
            assert len(st) == W * A
            for mb in st:
                assert len(mb) * max(mix.steps[r[0]] for r in mb) <= bins // (W * A)
        # the union of the ranks' micro-batches of a step is the 1-rank step
        for s, s1 in zip(steps, one.epoch(epoch), strict=True):
            assert sum((p.rank_micro_batches(s) for p in plans), []) == s1
    seen = sorted(g for st in plans[0].epoch(0) for mb in st for r in mb for g in r)
    assert len(seen) == len(set(seen)) and len(seen) > 0.8 * len(mix)  # each example at most once per epoch
    assert plans[0].epoch(0) != plans[0].epoch(1)  # new order every epoch
    assert BatchPlan(mix, bins, W, 0, A, seed=6, pool_size=32).epoch(0) != plans[0].epoch(0)


def test_sampling_ratios(dirs):
    mix = _mix(dirs, (2.0, 0.25))
    ex = mix.epoch_examples(seed=0, epoch=0)
    n_asr = int((ex < mix.offsets[1]).sum())
    assert n_asr == 2 * 40 and len(ex) - n_asr == 10
    with pytest.raises(DataError, match="empty"):
        Mixture([])


def test_too_long_example_is_a_clear_error(dirs):
    mix = _mix(dirs)
    with pytest.raises(DataError, match=r"example splice_\w+:spk.* steps, more than the micro-batch budget"):
        BatchPlan(mix, 50, 1, 0, 1)


def test_loader_with_workers_gives_the_same_batches_from_any_position(dirs):
    mix = _mix(dirs)
    plan = BatchPlan(mix, 900, 1, 0, 1, seed=2, pool_size=16)
    it0 = iter(make_loader(plan, 0, 0, num_workers=0))
    ref = [next(it0) for _ in range(plan.steps_per_epoch(0) + 3)]  # crosses into epoch 1
    it2 = iter(make_loader(plan, 0, 2, num_workers=2))
    for b in ref[2:]:
        got = next(it2)
        assert got["ids"] == b["ids"] and got["position"] == b["position"]
        assert torch.equal(got["steps"], b["steps"]) and torch.equal(got["loss_mask"], b["loss_mask"])
    assert ref[-1]["position"][0] == 1


def test_packing_keeps_attention_inside_each_example(dirs, small_vocab):
    from espnet2_speechlm.model.build import random_body

    dd = DataDir(dirs["asr"])
    model = random_body(dict(TINY_BODY), dd.vocab, seed=0).eval()
    seqs = [dd.build(i) for i in range(3)]
    with torch.no_grad():
        sep = [model(**{k: collate([s])[k] for k in ("steps", "loss_mask", "attention_mask")}) for s in seqs]
        b = collate_packed([seqs], row_len=sum(len(s) + 8 for s in seqs) + 5)
        loss_sum, frames, _ = model(b["steps"], b["loss_mask"], None, b["position_ids"])
    assert int(frames) == sum(int(s[1]) for s in sep)
    torch.testing.assert_close(loss_sum, sum(s[0] for s in sep), rtol=1e-5, atol=1e-4)
    # control: the same packed row with ordinary positions lets examples see each other
    with torch.no_grad():
        loss_sum2, _, _ = model(b["steps"], b["loss_mask"], None, torch.arange(b["steps"].shape[1])[None])
    assert abs(float(loss_sum2) - float(loss_sum)) > 1e-3


def test_packing_plan_has_little_padding(dirs):
    mix = _mix(dirs)
    plan = BatchPlan(mix, 1200, 1, 0, 1, seed=0, pool_size=80, packing=True, pack_len=400)
    rows = [r for st in plan.epoch(0) for mb in st for r in mb]
    used = sum(int(mix.steps[list(r)].sum()) for r in rows)
    assert all(mix.steps[list(r)].sum() <= 400 for r in rows)
    assert 1 - used / (len(rows) * 400) < 0.1
