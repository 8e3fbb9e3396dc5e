"""Write safetensors files tensor by tensor, sharded as Hugging Face shards them.

A 7B checkpoint is 15 GB: building each file in memory first (what
``safetensors.torch.save_file`` does) would hold a whole shard twice.  Here the
header is computed from shapes alone, then every tensor's bytes are written
straight from its (memory-mapped) storage, and the pages of a memory-mapped
source are handed back to the kernel as soon as they are written, so the
resident memory stays near one tensor whatever the checkpoint's size.

Layout of a sharded directory (what ``MultiStreamLM.from_pretrained`` reads)::

    model-00001-of-00003.safetensors ... model-00003-of-00003.safetensors
    model.safetensors.index.json      {"metadata": {"total_size": N}, "weight_map": {name: file}}

One shard is written as ``model.safetensors`` with no index.
"""

from __future__ import annotations

import ctypes
import json
import os
import struct
from pathlib import Path
from typing import Callable, Iterable

import torch

DTYPE_NAMES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL",
}
INDEX_FILE = "model.safetensors.index.json"
MADV_DONTNEED = 4


class _PageReleaser:
    """Drop the resident pages of tensors that live in a private mapping of a file.

    Only ranges inside a private (copy-on-write) mapping of ``path``, found in
    /proc/self/maps, are touched: ``torch.load(mmap=True)`` maps the file so,
    and the import never writes to those tensors, so the kernel simply reads
    the pages again from the file if they are used later.  Anywhere else the
    call would discard memory, so nothing else is ever passed to madvise."""

    def __init__(self, path: str | os.PathLike | None):
        self.ranges: list[tuple[int, int]] = []
        self.page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        self.libc = None
        if path is None or not Path("/proc/self/maps").exists():
            return
        real = os.path.realpath(path)
        for line in Path("/proc/self/maps").read_text().splitlines():
            parts = line.split(maxsplit=5)
            if len(parts) == 6 and parts[5] == real and parts[1].endswith("p"):
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                self.ranges.append((lo, hi))
        if self.ranges:
            try:
                self.libc = ctypes.CDLL(None, use_errno=True)
                self.libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
            except (OSError, AttributeError):  # pragma: no cover - not Linux
                self.libc = None

    def __call__(self, t: torch.Tensor) -> None:
        if self.libc is None or t.device.type != "cpu" or not t.numel():
            return
        start, end = t.data_ptr(), t.data_ptr() + t.numel() * t.element_size()
        for lo, hi in self.ranges:
            if lo <= start and end <= hi:
                a = max(lo, start - start % self.page)
                self.libc.madvise(a, end - a, MADV_DONTNEED)
                return


def _header(items: list[tuple[str, torch.Tensor]], metadata: dict[str, str]) -> bytes:
    head, off = {}, 0
    for name, t in items:
        if t.dtype not in DTYPE_NAMES:
            raise TypeError(f"{name}: dtype {t.dtype} cannot be written to safetensors here")
        n = t.numel() * t.element_size()
        head[name] = {"dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [off, off + n]}
        off += n
    head["__metadata__"] = metadata
    raw = json.dumps(head, separators=(",", ":")).encode()
    return raw + b" " * (-len(raw) % 8)  # the data starts 8-byte aligned


def write_safetensors(path: Path, items: list[tuple[str, torch.Tensor]], release_pages: Callable = lambda t: None,
                      metadata: dict[str, str] | None = None) -> int:
    """Write one safetensors file (to ``path`` directly; the caller writes into a
    temporary directory).  Returns the number of data bytes."""
    head = _header(items, metadata or {"format": "pt"})
    total = 0
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for _, t in items:
            src = t.detach()
            flat = src.reshape(-1) if src.is_contiguous() else src.contiguous().reshape(-1)
            if flat.numel():
                f.write(memoryview(flat.view(torch.uint8).numpy()))
            total += flat.numel() * flat.element_size()
            release_pages(src)
            del flat
    return total


def plan_shards(items: Iterable[tuple[str, torch.Tensor]], max_shard_bytes: int) -> list[list[tuple[str, torch.Tensor]]]:
    """Consecutive groups of at most ``max_shard_bytes`` (a larger tensor gets a shard of its own)."""
    shards, cur, size = [], [], 0
    for name, t in items:
        n = t.numel() * t.element_size()
        if cur and size + n > max_shard_bytes:
            shards.append(cur)
            cur, size = [], 0
        cur.append((name, t))
        size += n
    if cur:
        shards.append(cur)
    return shards


def write_sharded(out_dir: Path, items: list[tuple[str, torch.Tensor]], max_shard_bytes: int,
                  source_file: str | os.PathLike | None = None, log: Callable[[str], None] = lambda m: None) -> list[Path]:
    """``model.safetensors``, or ``model-0000k-of-0000n.safetensors`` and the index.

    ``source_file``: the file the tensors are memory-mapped from, whose pages are
    released after writing (see :class:`_PageReleaser`)."""
    out_dir = Path(out_dir)
    release = _PageReleaser(source_file)
    shards = plan_shards(items, max_shard_bytes)
    if len(shards) <= 1:
        p = out_dir / "model.safetensors"
        write_safetensors(p, shards[0] if shards else [], release)
        log(f"wrote {p.name}")
        return [p]
    n = len(shards)
    weight_map, files, total = {}, [], 0
    for k, shard in enumerate(shards, 1):
        name = f"model-{k:05d}-of-{n:05d}.safetensors"
        total += write_safetensors(out_dir / name, shard, release)
        weight_map.update({t: name for t, _ in shard})
        files.append(out_dir / name)
        log(f"wrote {name} ({sum(t.numel() * t.element_size() for _, t in shard) / 1e9:.2f} GB)")
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (out_dir / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    return files
