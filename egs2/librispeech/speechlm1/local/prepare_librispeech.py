#!/usr/bin/env python3
"""Kaldi data dirs from an extracted LibriSpeech tree (openslr resource 12).

Layout read (as the openslr archives extract)::

    <root>/<part>/<speaker>/<chapter>/<speaker>-<chapter>-<NNNN>.flac
    <root>/<part>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt   lines "<utt> <TEXT>"

Writes ``<data>/<name>/{wav.scp,text,utt2spk,spk2utt}`` per part (``dev-clean``
-> ``dev_clean``) and, with ``--combine NAME PART...``, one dir holding the
union of several parts (``train_960``).  ``wav.scp`` lists the flac files by
absolute path (libsndfile reads FLAC; no pipes, no conversion).  Transcripts
are kept as released (upper case, no punctuation).  A malformed transcript
line, an utterance without audio or audio without a transcript stops the
preparation with the file and the line.  Files are written under temporary
names and renamed.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path


class PrepError(Exception):
    pass


def read_part(part_dir: Path) -> list[tuple[str, str, str, Path]]:
    """(utt, speaker, text, flac) of one part, sorted by utterance id."""
    trans = sorted(part_dir.glob("*/*/*.trans.txt"))
    if not trans:
        raise PrepError(f"{part_dir}: no <speaker>/<chapter>/*.trans.txt (is this an extracted LibriSpeech part?)")
    out = []
    for t in trans:
        spk, chapter = t.parent.parent.name, t.parent.name
        prefix = f"{spk}-{chapter}-"
        listed = set()
        for n, line in enumerate(t.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            m = re.fullmatch(r"(\S+)\s+(\S.*)", line.strip())
            if m is None:
                raise PrepError(f"{t}: line {n}: expected '<utterance id> <transcript>', got {line.strip()[:80]!r}")
            utt, text = m.group(1), " ".join(m.group(2).split())
            if not utt.startswith(prefix):
                raise PrepError(f"{t}: line {n}: utterance id {utt!r} does not start with {prefix!r}")
            flac = t.parent / f"{utt}.flac"
            if not flac.is_file():
                raise PrepError(f"{t}: line {n}: audio {flac} not found")
            listed.add(utt)
            out.append((utt, spk, text, flac.resolve()))
        for flac in sorted(t.parent.glob("*.flac")):
            if flac.stem not in listed:
                raise PrepError(f"{flac}: no transcript in {t}")
    out.sort()
    for a, b in zip(out, out[1:]):
        if a[0] == b[0]:
            raise PrepError(f"{part_dir}: utterance {a[0]!r} listed twice")
    return out


def write_dir(d: Path, utts) -> None:
    d.mkdir(parents=True, exist_ok=True)
    spk2utt: dict[str, list[str]] = {}
    for utt, spk, _, _ in utts:
        spk2utt.setdefault(spk, []).append(utt)
    files = {
        "wav.scp": [f"{u} {w}" for u, _, _, w in utts],
        "text": [f"{u} {t}" for u, _, t, _ in utts],
        "utt2spk": [f"{u} {s}" for u, s, _, _ in utts],
        "spk2utt": [f"{s} {' '.join(us)}" for s, us in sorted(spk2utt.items())],
    }
    for name, rows in files.items():
        tmp = d / (name + ".tmp")
        tmp.write_text("".join(r + "\n" for r in rows))
        os.replace(tmp, d / name)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True, help="the extracted LibriSpeech directory (holding dev-clean/ ...)")
    p.add_argument("--data", default="data")
    p.add_argument("--parts", nargs="+", required=True, help="e.g. dev-clean test-clean test-other train-clean-100")
    p.add_argument("--combine", nargs="+", action="append", default=[], metavar=("NAME", "PART"),
                   help="also write data/NAME as the union of these parts (repeatable)")
    a = p.parse_args(argv)
    root, data = Path(a.root), Path(a.data)
    parts = {}
    try:
        for part in dict.fromkeys(a.parts + [x for c in a.combine for x in c[1:]]):
            if not (root / part).is_dir():
                raise PrepError(f"{root / part}: not found (download it first, or give --librispeech_dir)")
            parts[part] = read_part(root / part)
    except PrepError as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 1
    for part in a.parts:
        write_dir(data / part.replace("-", "_"), parts[part])
        print(f"[prepare_librispeech] {root / part} -> {data / part.replace('-', '_')}: {len(parts[part])} utterances",
              file=sys.stderr)
    for name, *members in a.combine:
        utts = sorted(u for m in members for u in parts[m])
        write_dir(data / name, utts)
        print(f"[prepare_librispeech] {' + '.join(members)} -> {data / name}: {len(utts)} utterances", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
