"""Collect the results of scored directories into one RESULTS.md table.

    python -m espnet2_speechlm.bin.collect_results exp/*/decode_*/*/score_* --out exp/RESULTS.md

Each argument is a directory searched recursively for ``results.json``
(written beside every ``RESULTS.md`` by score_asr / score_tts) or such a
file itself.  Rows are sorted by task, test set, metric, model and decode
config.  The rows also go to a JSON file beside ``--out`` with the same
stem (``RESULTS.md`` -> ``RESULTS.json``), marked as a collection so that
a later collection over the same tree skips it.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from espnet2_speechlm.score.results import collect_results, write_results


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dirs", nargs="+", help="scored directories (or results.json files)")
    p.add_argument("--out", required=True, help="output Markdown file (results.json goes beside it)")
    p.add_argument("--title", default="Results", help="table title")
    return p


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [collect_results] %(message)s")
    args = get_parser().parse_args(argv)
    out = Path(args.out)
    if out.suffix.lower() != ".md":
        print(f"collect_results: error: --out must be a .md file, got {out}", file=sys.stderr)
        return 2
    try:
        rows = collect_results(args.dirs)
    except (FileNotFoundError, ValueError) as e:
        print(f"collect_results: error: {e}", file=sys.stderr)
        return 2
    # Collected tables are marked and skipped by collect_results, so an
    # earlier collection under one of the searched directories is not
    # counted again.
    write_results(out.parent, rows, title=args.title, md_name=out.name, json_name=out.stem + ".json",
                  collected=True, notes="Collected from: " + ", ".join(sorted({str(r["dir"]) for r in rows})))
    logging.info("collected %d rows from %d directories into %s", len(rows), len({r['dir'] for r in rows}), out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
