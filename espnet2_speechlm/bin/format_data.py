"""Check a Kaldi data directory and filter it by length (the recipe's stage 2).

    python -m espnet2_speechlm.bin.format_data --in_dir data/train --out_dir dump/raw/train \\
        --min_seconds 0.5 --max_seconds 20

Checks, each failure naming the file and the line: every file is UTF-8;
every ``wav.scp`` entry that is a plain path exists; ``text`` has no empty
transcript; the utterance ids of ``wav.scp`` (or ``segments``), ``text`` and
``utt2spk`` agree; no id is duplicated; every segment ends after it starts
and lies inside its recording (an end up to ``SEGMENT_OVERSHOOT`` seconds
past the recording's end, as rounded times give, is cut to it).  Then each
utterance's duration is measured (headers for plain files; pipes and arks
are decoded) and utterances outside ``[min_seconds, max_seconds]`` are
dropped and listed in ``dropped_utts``.

Writes ``wav.scp``, ``text``, ``utt2spk``, ``segments`` (filtered copies),
``utt2dur`` and ``.done`` into ``out_dir``; the files are written to
temporary names first, and ``.done`` last.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


class DataError(ValueError):
    pass


SEGMENT_OVERSHOOT = 0.5  # seconds a segment may end past its recording (cut to the recording's end)


def log(msg: str) -> None:
    print(f"[format_data] {msg}", file=sys.stderr, flush=True)


def _table(path: Path, allow_empty_value: bool = False):
    from ..tokenizers.audio import DataDirError, read_table

    try:
        rows = read_table(path, min_fields=1)
    except DataDirError as e:
        raise DataError(str(e)) from None
    if not allow_empty_value:
        for key, val, lineno in rows:
            if not val.strip():
                raise DataError(f"{path}: line {lineno}: utterance {key!r} has an empty value")
    return rows


def check_ids(name_a: Path, ids_a: dict, name_b: Path, ids_b: dict) -> None:
    only_a = [k for k in ids_a if k not in ids_b]
    only_b = [k for k in ids_b if k not in ids_a]
    if only_a or only_b:
        parts = []
        if only_a:
            k = only_a[0]
            parts.append(f"{name_a}: line {ids_a[k]}: utterance {k!r} is not in {name_b} ({len(only_a)} such)")
        if only_b:
            k = only_b[0]
            parts.append(f"{name_b}: line {ids_b[k]}: utterance {k!r} is not in {name_a} ({len(only_b)} such)")
        raise DataError("; ".join(parts))


def duration(item) -> float:
    """Seconds of one utterance: from the file header, or by decoding."""
    import soundfile as sf

    from ..tokenizers.audio import SAMPLE_RATE, load_item

    spec = item.spec.strip()
    if not spec.endswith("|") and os.path.exists(spec):
        info = sf.info(spec)
        return info.frames / info.samplerate - item.start
    return len(load_item(item)) / SAMPLE_RATE


def segment_durations(seg_path: Path, wav_scp: Path, wav_rows) -> dict[str, float]:
    """Seconds of each segment, checked against its recording: a segment that
    ends before it starts, or starts (or ends) past the end of its recording,
    is an error naming the segments file and line, not an utterance dropped
    by length here or a failure in the token dump."""
    from ..tokenizers.audio import AudioError, AudioItem

    recs = {k: (v, n) for k, v, n in wav_rows}
    rec_len: dict[str, float] = {}
    out = {}
    for utt, rest, lineno in _table(seg_path):
        rec, s, e = rest.split()  # the format was checked by read_data_dir
        start, end = float(s), float(e)
        where = f"{seg_path}: line {lineno}: segment {utt!r}"
        if start < 0:
            raise DataError(f"{where} starts at {start} s, before the recording")
        if end >= 0 and end <= start:
            raise DataError(f"{where} ends at {end} s, not after its start ({start} s)")
        if rec not in rec_len:
            spec, n = recs[rec]
            try:
                rec_len[rec] = duration(AudioItem(rec, spec))
            except AudioError as err:
                raise DataError(f"{wav_scp}: line {n}: {err}") from None
            except Exception as err:
                raise DataError(f"{wav_scp}: line {n}: recording {rec!r}: cannot read audio: {err}") from None
        length = rec_len[rec]
        if start >= length or end > length + SEGMENT_OVERSHOOT:
            raise DataError(f"{where} [{start}, {end}] s lies past the end of recording {rec!r} "
                            f"({length:.3f} s, {wav_scp}: line {recs[rec][1]})")
        out[utt] = (length if end < 0 else min(end, length)) - start
    return out


def format_dir(in_dir: Path, out_dir: Path, min_seconds: float, max_seconds: float, need_text: bool = True) -> dict:
    from ..tokenizers.audio import AudioError, DataDirError, read_data_dir

    t0 = time.time()
    wav_scp = in_dir / "wav.scp"
    if not wav_scp.exists():
        raise DataError(f"{wav_scp}: not found (stage 1, local/data.sh, must write it)")
    wav_rows = _table(wav_scp)
    for key, spec, lineno in wav_rows:
        s = spec.strip()
        if not s.endswith("|") and not (":" in s and s.rsplit(":", 1)[1].isdigit()) and not os.path.exists(s):
            raise DataError(f"{wav_scp}: line {lineno}: audio file of utterance {key!r} not found: {s}")
    try:
        items = read_data_dir(in_dir)
    except DataDirError as e:
        raise DataError(str(e)) from None
    utt_lines = {it.utt: i + 1 for i, it in enumerate(items)}
    utt_src = in_dir / ("segments" if (in_dir / "segments").exists() else "wav.scp")
    text_rows = []
    if (in_dir / "text").exists():
        text_rows = _table(in_dir / "text")
        check_ids(utt_src, utt_lines, in_dir / "text", {k: n for k, _, n in text_rows})
    elif need_text:
        raise DataError(f"{in_dir / 'text'}: not found")
    spk_rows = []
    if (in_dir / "utt2spk").exists():
        spk_rows = _table(in_dir / "utt2spk")
        check_ids(utt_src, utt_lines, in_dir / "utt2spk", {k: n for k, _, n in spk_rows})
    seg_durs = segment_durations(in_dir / "segments", wav_scp, wav_rows) if (in_dir / "segments").exists() else {}

    durs, dropped, bad = {}, [], []
    try:
        from tqdm import tqdm

        it = tqdm(items, desc=f"durations {in_dir.name}", file=sys.stderr, mininterval=2, disable=len(items) < 200)
    except ImportError:
        it = items
    for item in it:
        try:
            d = seg_durs[item.utt] if item.utt in seg_durs else duration(item)
        except AudioError as e:
            bad.append(str(e))
            continue
        except Exception as e:
            bad.append(f"utterance {item.utt!r} ({item.spec}): cannot read audio: {e}")
            continue
        if d < min_seconds or d > max_seconds:
            dropped.append(f"{item.utt} {d:.3f}s outside [{min_seconds}, {max_seconds}]")
        else:
            durs[item.utt] = d
    if bad:
        raise DataError(f"{len(bad)} unreadable utterance(s) in {in_dir}:\n  " + "\n  ".join(bad[:20]))
    if not durs:
        raise DataError(f"{in_dir}: no utterance left after length filtering ({len(dropped)} dropped)")

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / ".done").unlink(missing_ok=True)
    keep = set(durs)

    def write(name, lines):
        tmp = out_dir / (name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            for line in lines:
                f.write(line + "\n")
        os.replace(tmp, out_dir / name)

    if (in_dir / "segments").exists():
        seg_rows = _table(in_dir / "segments")
        write("segments", [f"{k} {v}" for k, v, _ in seg_rows if k in keep])
        recs = {v.split()[0] for k, v, _ in seg_rows if k in keep}
        write("wav.scp", [f"{k} {v}" for k, v, _ in wav_rows if k in recs])
    else:
        (out_dir / "segments").unlink(missing_ok=True)
        write("wav.scp", [f"{k} {v}" for k, v, _ in wav_rows if k in keep])
    if text_rows:
        write("text", [f"{k} {v}" for k, v, _ in text_rows if k in keep])
    if spk_rows:
        write("utt2spk", [f"{k} {v}" for k, v, _ in spk_rows if k in keep])
    write("utt2dur", [f"{k} {durs[k]:.3f}" for k in sorted(keep)])
    write("dropped_utts", dropped)
    stats = {"utterances": len(keep), "dropped": len(dropped), "hours": sum(durs.values()) / 3600, "seconds": time.time() - t0}
    (out_dir / ".done").write_text(f"{stats}\n")
    return stats


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--in_dir", required=True)
    p.add_argument("--out_dir", required=True)
    p.add_argument("--min_seconds", type=float, default=0.1)
    p.add_argument("--max_seconds", type=float, default=60.0)
    p.add_argument("--no_text", action="store_true", help="a speech-only set (no text file needed)")
    args = p.parse_args(argv)
    try:
        st = format_dir(Path(args.in_dir), Path(args.out_dir), args.min_seconds, args.max_seconds, need_text=not args.no_text)
    except (DataError, FileNotFoundError) as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 1
    log(f"read {args.in_dir}, wrote {args.out_dir}: {st['utterances']} utterances ({st['hours']:.2f} h), "
        f"{st['dropped']} dropped by length, in {st['seconds']:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
