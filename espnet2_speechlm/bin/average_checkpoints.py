"""Average the weights of the last K checkpoints of a run (or given model dirs).

    python -m espnet2_speechlm.bin.average_checkpoints --exp exp/speechlm --last 3 --out exp/speechlm/model_avg
    python -m espnet2_speechlm.bin.average_checkpoints --out avg dir1 dir2 ...
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..train.checkpoint import average_checkpoints, list_checkpoints


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--exp", help="experiment directory (uses exp/checkpoints/step_*)")
    p.add_argument("--last", type=int, default=3)
    p.add_argument("--out", required=True)
    p.add_argument("dirs", nargs="*", help="checkpoint or model directories")
    a = p.parse_args(argv)
    dirs = [Path(d) for d in a.dirs]
    if a.exp:
        found = list_checkpoints(Path(a.exp) / "checkpoints")
        if not found:
            print(f"average_checkpoints: error: no checkpoints in {a.exp}/checkpoints", file=sys.stderr)
            return 2
        dirs += found[-a.last :]
    try:
        out = average_checkpoints(dirs, Path(a.out))
    except (ValueError, FileNotFoundError) as e:
        print(f"average_checkpoints: error: {e}", file=sys.stderr)
        return 2
    print(f"averaged {len(dirs)} checkpoints into {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
