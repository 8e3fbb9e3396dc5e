"""k-means in torch: mini-batch fitting, chunked assignment, residual stacks.

Thousands of clusters on hundreds of thousands of frames must fit in minutes:
fitting runs in mini-batches (Sculley's per-centre learning rate 1/count) on
whatever device is given (a GPU when present), and a batch as large as the
data gives plain Lloyd iterations.  Centres that win no frame in an epoch are
moved onto the frames that are currently worst explained, so no code is
wasted.  Everything is seeded: the same data and seed give the same centres.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import torch


def _sqdist(x: torch.Tensor, c: torch.Tensor, c_sq: torch.Tensor) -> torch.Tensor:
    return (x * x).sum(1, keepdim=True) - 2.0 * (x @ c.T) + c_sq[None, :]


def assign(x: torch.Tensor, centers: torch.Tensor, chunk: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centre of each row of ``x``: (indices int64, squared distances)."""
    c_sq = (centers * centers).sum(1)
    idx, dist = [], []
    for s in range(0, x.shape[0], chunk):
        d = _sqdist(x[s : s + chunk], centers, c_sq)
        m, i = d.min(1)
        idx.append(i)
        dist.append(m.clamp_min(0))
    if not idx:
        return torch.zeros(0, dtype=torch.long, device=x.device), torch.zeros(0, device=x.device)
    return torch.cat(idx), torch.cat(dist)


def _kmeanspp_init(x: torch.Tensor, k: int, gen: torch.Generator, max_points: int) -> torch.Tensor:
    """k-means++ seeding on a random subset of at most ``max_points`` rows."""
    n = x.shape[0]
    if n > max_points:
        x = x[torch.randperm(n, generator=gen, device="cpu")[:max_points].to(x.device)]
        n = max_points
    first = int(torch.randint(n, (1,), generator=gen))
    centers = [x[first]]
    best = ((x - x[first]) ** 2).sum(1)
    for _ in range(1, k):
        total = float(best.sum())
        if total <= 0:  # fewer distinct points than clusters: duplicate a random point
            j = int(torch.randint(n, (1,), generator=gen))
        else:
            probs = (best / total).double().cpu()
            j = int(torch.multinomial(probs, 1, generator=gen))
        centers.append(x[j])
        best = torch.minimum(best, ((x - x[j]) ** 2).sum(1))
    return torch.stack(centers)


def fit_kmeans(
    data: np.ndarray | torch.Tensor,
    k: int,
    epochs: int = 20,
    batch_size: int = 20000,
    seed: int = 0,
    device: str | torch.device = "cpu",
    init_points: int | None = None,
    tol: float = 1e-4,
    verbose: bool = False,
) -> torch.Tensor:
    """Centres ``[k, D]`` (float32, on CPU) of ``data`` ``[N, D]``."""
    x = torch.as_tensor(np.asarray(data, dtype=np.float32) if not torch.is_tensor(data) else data, dtype=torch.float32)
    x = x.to(device)
    n = x.shape[0]
    if n < k:
        raise ValueError(f"k-means: {n} training frames for {k} clusters; give at least as many frames as clusters")
    gen = torch.Generator().manual_seed(seed)
    init_points = init_points or min(n, max(20 * k, 10000))
    centers = _kmeanspp_init(x, k, gen, init_points).clone()
    counts = torch.zeros(k, device=x.device)
    full = batch_size >= n
    prev = math.inf
    for ep in range(epochs):
        order = torch.randperm(n, generator=gen).to(x.device) if not full else torch.arange(n, device=x.device)
        if full:
            counts.zero_()  # full batch: each epoch is one Lloyd step
        wins = torch.zeros(k, device=x.device)
        for s in range(0, n, batch_size):
            xb = x[order[s : s + batch_size]]
            idx, _ = assign(xb, centers)
            m = torch.bincount(idx, minlength=k).float()
            sums = torch.zeros_like(centers).index_add_(0, idx, xb)
            counts += m
            wins += m
            hit = m > 0
            centers[hit] += (sums[hit] - m[hit, None] * centers[hit]) / counts[hit, None]
        _, dist = assign(x, centers)
        inertia = float(dist.mean())
        dead = (wins == 0).nonzero().flatten()
        if len(dead):
            # reseed dead centres on the worst-explained frames
            worst = dist.topk(min(len(dead), n)).indices
            centers[dead[: len(worst)]] = x[worst]
            counts[dead] = 0
        if verbose:
            print(f"[kmeans] k={k} epoch {ep + 1}/{epochs}: mean sq. error {inertia:.5f}, {len(dead)} dead centres reseeded", file=sys.stderr)
        if not len(dead) and prev - inertia <= tol * max(prev, 1e-12) and prev < math.inf:
            break
        prev = inertia
    return centers.float().cpu()


def fit_residual_kmeans(data, num_codebooks: int, k: int, verbose: bool = False, **kw) -> torch.Tensor:
    """Residual vector quantiser: codebook j quantises what codebooks < j left over.  ``[num_codebooks, k, D]``."""
    device = kw.get("device", "cpu")
    x = torch.as_tensor(np.asarray(data, dtype=np.float32)).to(device)
    books = []
    for j in range(num_codebooks):
        c = fit_kmeans(x, k, verbose=verbose, **kw).to(device)
        idx, dist = assign(x, c)
        x = x - c[idx]
        if verbose:
            print(f"[rvq] codebook {j + 1}/{num_codebooks}: residual mean sq. error {float(dist.mean()):.5f}", file=sys.stderr)
        books.append(c.cpu())
    return torch.stack(books)


def rvq_encode(x: torch.Tensor, books: torch.Tensor) -> torch.Tensor:
    """``[T, D]`` -> codes ``[T, num_codebooks]`` int64 (greedy residual)."""
    codes = []
    r = x
    for c in books:
        idx, _ = assign(r, c)
        codes.append(idx)
        r = r - c[idx]
    return torch.stack(codes, 1) if codes else torch.zeros(x.shape[0], 0, dtype=torch.long)


def rvq_decode(codes: torch.Tensor, books: torch.Tensor) -> torch.Tensor:
    """codes ``[T, num_codebooks]`` -> ``[T, D]`` (sum of the chosen centres)."""
    out = torch.zeros(codes.shape[0], books.shape[-1], dtype=books.dtype, device=books.device)
    for j in range(codes.shape[1]):
        out += books[j][codes[:, j]]
    return out


def save_centers(path: str | Path, centers: torch.Tensor | np.ndarray) -> Path:
    """Write ``.npy`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npy")
    np.save(tmp, np.asarray(centers.cpu() if torch.is_tensor(centers) else centers, dtype=np.float32))
    tmp.replace(path)
    return path


def load_centers(path: str | Path) -> torch.Tensor:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"k-means model not found: {path}")
    return torch.from_numpy(np.load(path)).float()
