"""``bin.train`` with a fault injected: DDP leaves the gradients of the
parameters whose names start with ``--unsynced PREFIX[,PREFIX]`` unreduced
across ranks.  test_train_dist runs it under torchrun to show that its
equivalence test catches such a fault; the product carries no hook for it.

    torchrun --nproc_per_node=2 test/train_with_unsynced_params.py --unsynced lm.lm_head. --config ...
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from torch.nn.parallel import DistributedDataParallel as DDP  # noqa: E402

from espnet2_speechlm.bin.train import main  # noqa: E402
from espnet2_speechlm.train import engines  # noqa: E402


def _apply_ddp_leaving_out(prefixes, apply_ddp):
    def apply(model, device):
        names = [n for n, _ in model.named_parameters() if n.startswith(tuple(prefixes))]
        assert names, f"no parameter starts with {prefixes}"
        DDP._set_params_and_buffers_to_ignore_for_model(model, names)
        return apply_ddp(model, device)

    return apply


if __name__ == "__main__":
    argv = sys.argv[1:]
    i = argv.index("--unsynced")
    prefixes = argv[i + 1].split(",")
    del argv[i : i + 2]
    engines.apply_ddp = _apply_ddp_leaving_out(prefixes, engines.apply_ddp)
    sys.exit(main(argv))
