"""lm-evaluation-harness with the speech LM registered as ``--model espnet2_speechlm``.

    python -m espnet2_speechlm.bin.lm_eval --model espnet2_speechlm \\
        --model_args pretrained=exp/packed --tasks mmlu --num_fewshot 5 --output_path exp/mmlu

All arguments are lm_eval's own (see ``--help``); this entry point only
registers the model class first.
"""

from __future__ import annotations

import sys


def main() -> int:
    from ..eval import lm_eval_adapter  # noqa: F401  (registers the model)
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
