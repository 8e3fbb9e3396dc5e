"""Train (or anneal) a speech LM.

    python -m espnet2_speechlm.bin.train --config conf/train.yaml [key=value ...]
    torchrun --nproc_per_node=8 -m espnet2_speechlm.bin.train --config ... engine.name=fsdp2
    deepspeed --num_gpus=8 -m espnet2_speechlm.bin.train --config ... engine.name=deepspeed

Overrides are dotted keys (``optim.lr=1e-4``); an unknown key is an error
naming it.  Starting the same command again resumes from the last
checkpoint in ``exp_dir``.  Exit status: 0 done or stopped cleanly by a
signal (a checkpoint was written), 2 bad configuration or data, 3 a
non-finite loss with ``nan_policy: stop``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="training YAML")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)  # DeepSpeed launcher
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    a = p.parse_args(argv)
    rank = int(os.environ.get("RANK", 0))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s [rank{rank}] %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    from ..config import ConfigError
    from ..data.loader import DataError
    from ..data.datadir import SpliceError
    from ..model.speechlm import ContextLengthError
    from ..train import config as tc
    from ..train.trainer import NonFiniteLoss, train
    from ..vocab import VocabError

    try:
        cfg = tc.load(a.config, a.overrides)
        train(cfg)
    except (ConfigError, DataError, SpliceError, VocabError, ContextLengthError, FileNotFoundError) as e:
        logging.getLogger("espnet2_speechlm.train").error(f"{type(e).__name__}: {e}")
        return 2
    except NonFiniteLoss as e:
        logging.getLogger("espnet2_speechlm.train").error(str(e))
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
