"""Benchmark of learning: how fast a model learns to read, through the toolkit's own trainer.

The synthetic probe of ``bin/learning_probe.py``: random strings of 5-12 letters, one speech frame
per letter with a fixed semantic unit, constant acoustic codes, ASR only, a random 4 x 128 Llama,
the toolkit's default loss weights, 400 steps of 1,024-step batches, the dev set (200 items)
decoded greedily every 50 steps.  One thread.

alignment_probe_steps_to_read   the first evaluated step whose dev letter error rate is below 20 %
                                (400 when never)
alignment_probe_cer_at_cap      the dev letter error rate at step 400, percent
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import Timer, log, report  # noqa: E402

from espnet2_speechlm.bin.learning_probe import ProbeData, run  # noqa: E402

CAP = 400


def main() -> int:
    opts = ProbeData(min_letters=5, max_letters=12, frames_per_letter=1, num_train=4000, num_dev=200)
    with tempfile.TemporaryDirectory() as d, Timer() as t:
        r = run(Path(d), opts, max_steps=CAP, eval_every=50, target_cer=0.2, stop_at_target=False,
                overrides=["engine.threads=1", "log.every=1000"], log=log)
    log(f"[bench_learning] dev letter error rate by step: {[(s, round(100 * c, 1)) for s, c in r['history']]} "
        f"({t.seconds:.0f} s)")
    report("alignment_probe_steps_to_read", r["steps_to_read"], "steps")
    report("alignment_probe_cer_at_cap", 100 * r["cer_at_stop"], "%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
