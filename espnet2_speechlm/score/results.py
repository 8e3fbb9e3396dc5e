"""Results tables: ``RESULTS.md`` + ``results.json`` per scored directory.

Every scored decode directory gets two files written side by side:

* ``results.json``: ``{"rows": [ROW, ...]}``, the machine-readable source;
* ``RESULTS.md``: the same rows as one Markdown table.

A ROW is a dict with the keys of :data:`COLUMNS` (``task``, ``test_set``,
``metric``, ``value``, ``utterances``, ``model``, ``decode_config``) plus
optional extra keys: ``scorer`` (how the value was obtained: text
normalisation, the ASR or speaker model; shown as the last column, since a
TTS WER means little without the ASR model that produced it) and keys the
table does not show (``dir``, ``details``, ...).
There is one row per task, test set and metric.  Error rates (WER, CER)
are in percent; similarities are cosine values in [-1, 1].  A value that is
undefined (an error rate over zero reference words with insertions) is
``null`` in JSON and ``n/a`` in the table.

``collect_results(dirs)`` gathers the rows of every ``results.json`` found
under the given directories (searched recursively) into one table, sorted
by task, test set, metric (WER, CER, SPK-SIM, then others), model and
decode config, so a recipe's final
table does not depend on the order in which directories are listed.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

COLUMNS = ("task", "test_set", "metric", "value", "utterances", "model", "decode_config")
HEADERS = ("task", "test set", "metric", "value", "utterances", "model", "decode config", "scored by")
RESULTS_MD = "RESULTS.md"
RESULTS_JSON = "results.json"
# Metrics whose value is a percentage (shown with two decimals and a % unit).
PERCENT_METRICS = ("WER", "CER")


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write via a temporary file in the same directory, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def json_safe(value):
    if isinstance(value, float) and (math.isinf(value) or math.isnan(value)):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def make_row(task, test_set, metric, value, utterances, model="-", decode_config="-", **extra) -> dict:
    row = {
        "task": str(task),
        "test_set": str(test_set),
        "metric": str(metric),
        "value": None if value is None else float(value),
        "utterances": int(utterances),
        "model": str(model or "-"),
        "decode_config": str(decode_config or "-"),
    }
    row.update(extra)
    return json_safe(row)


def format_value(metric: str, value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if metric.upper() in PERCENT_METRICS:
        return f"{value:.2f}"
    return f"{value:.4f}"


def _cell(text: str) -> str:
    # A pipe would split the cell; newlines would end the row.
    return str(text).replace("|", "\\|").replace("\n", " ")


def format_table(rows: Sequence[dict]) -> str:
    """Markdown table; the metric column says the unit of error rates."""
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "|".join("---" for _ in HEADERS) + "|"]
    for r in rows:
        metric = r["metric"]
        shown = f"{metric} (%)" if metric.upper() in PERCENT_METRICS else metric
        cells = [
            r["task"],
            r["test_set"],
            shown,
            format_value(metric, r["value"]),
            str(r["utterances"]),
            r.get("model", "-"),
            r.get("decode_config", "-"),
            r.get("scorer", "-"),
        ]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def write_results(
    out_dir: str | os.PathLike,
    rows: Sequence[dict],
    title: str | None = None,
    notes: str = "",
    md_name: str = RESULTS_MD,
    json_name: str = RESULTS_JSON,
    collected: bool = False,
) -> Path:
    """Write RESULTS.md and results.json into ``out_dir``; returns the .md path.

    ``collected=True`` marks a table gathered from other directories; such a
    results.json is skipped by :func:`collect_results`, so collecting a tree
    that contains an earlier collection does not count rows twice.
    """
    out_dir = Path(out_dir)
    for r in rows:
        missing = [c for c in COLUMNS if c not in r]
        if missing:
            raise ValueError(f"result row {r} lacks {missing}")
    rows = [json_safe(dict(r)) for r in rows]
    data = {"collected": True, "rows": rows} if collected else {"rows": rows}
    atomic_write_text(out_dir / json_name, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    md = f"# {title or 'Results'}\n\n" + format_table(rows)
    if notes:
        md += "\n" + notes.rstrip() + "\n"
    atomic_write_text(out_dir / md_name, md)
    return out_dir / md_name


def _load_json(json_path: Path):
    try:
        return json.loads(json_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{json_path}:{e.lineno}: not valid JSON ({e.msg})") from None


def read_rows(json_path: str | os.PathLike) -> list[dict]:
    json_path = Path(json_path)
    data = _load_json(json_path)
    rows = data.get("rows") if isinstance(data, dict) else None
    if not isinstance(rows, list):
        raise ValueError(f"{json_path}: expected an object with a 'rows' list")
    for i, r in enumerate(rows):
        missing = [c for c in COLUMNS if not isinstance(r, dict) or c not in r]
        if missing:
            raise ValueError(f"{json_path}: row {i} lacks {missing}")
    return rows


def find_result_files(dirs: Iterable[str | os.PathLike]) -> list[Path]:
    found: list[Path] = []
    for d in dirs:
        d = Path(d)
        if d.is_file() and d.name == RESULTS_JSON:
            found.append(d)
        elif d.is_dir():
            hits = sorted(d.rglob(RESULTS_JSON))
            if not hits:
                raise FileNotFoundError(f"{d}: no {RESULTS_JSON} found (was the directory scored?)")
            found.extend(hits)
        else:
            raise FileNotFoundError(f"{d}: no such directory")
    # The same file reached through two arguments counts once.
    unique = {}
    for p in found:
        unique.setdefault(p.resolve(), p)
    return list(unique.values())


_METRIC_ORDER = {"WER": 0, "CER": 1, "SPK-SIM": 2}


def _sort_key(r: dict) -> tuple:
    # Error rates first, in the order papers report them; others by name.
    m = str(r["metric"])
    return (str(r["task"]), str(r["test_set"]), _METRIC_ORDER.get(m.upper(), 9), m, str(r["model"]),
            str(r["decode_config"]))


def collect_results(dirs: Iterable[str | os.PathLike]) -> list[dict]:
    """Rows of every results.json under ``dirs``, each tagged with its ``dir``.

    A row that repeats another's task, test set, metric, model, decode config
    and value (a base LLM's perplexity scored beside each of several models)
    is kept once; rows that disagree are all kept.
    """
    rows, seen = [], set()
    for p in find_result_files(dirs):
        data = _load_json(p)
        if isinstance(data, dict) and data.get("collected"):
            continue
        for r in read_rows(p):
            r = dict(r)
            key = (_sort_key(r), json.dumps(json_safe(r.get("value")), sort_keys=True))
            if key in seen:
                continue
            seen.add(key)
            r.setdefault("dir", str(p.parent))
            rows.append(r)
    rows.sort(key=_sort_key)
    return rows


def infer_labels(path: str | os.PathLike) -> dict:
    """Guess test set, decode config and model from a decode output path.

    The nearest enclosing directory whose name starts with ``decode`` is the
    decode config and its parent the model; a directory between it and the
    file is the test set.  This covers ESPnet's layout
    ``exp/<model>/decode_<config>/<test_set>/text`` and this toolkit's
    ``exp/<model>/decode_<task>_<test_set>/text`` (test set ``-`` there:
    the recipe passes ``--test_set``).  Without a ``decode*`` directory the
    file's directory is taken as the test set and the two above it as
    decode config and model.  Labels the path cannot give are ``-``; the
    command-line tools let every label be given explicitly.
    """
    parts = Path(os.path.abspath(path)).parts[1:-1]  # no root, no file name
    for k in range(len(parts) - 1, -1, -1):
        if parts[k].startswith("decode"):
            return {
                "test_set": parts[k + 1] if k + 1 < len(parts) else "-",
                "decode_config": parts[k],
                "model": parts[k - 1] if k >= 1 else "-",
            }
    pick = lambda n: parts[-n] if len(parts) >= n else "-"  # noqa: E731
    return {"test_set": pick(1), "decode_config": pick(2), "model": pick(3)}
