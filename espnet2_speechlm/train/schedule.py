"""Learning-rate schedules as pure functions of the update number.

``lr_at(cfg, peak, i)`` is the learning rate of update ``i`` (1-based).
Being a function of the step alone (no scheduler object with state) makes
resuming trivially exact and lets every engine share it.

* ``warmup_cosine`` (pretraining): linear warmup from ``peak / warmup`` to
  ``peak`` over ``warmup_steps`` updates, then a half cosine from ``peak``
  down to ``min_lr_ratio * peak`` at update ``total_steps``.
* ``linear_to_zero`` (annealing): optional warmup, then a straight line from
  ``peak`` that reaches 0 at ``total_steps``: the last update uses
  ``peak / K`` (K = total - warmup) and ``lr_at(total) ... lr_at(total + 1) = 0``,
  so the run ends at learning rate 0 without wasting an update on lr 0.
* ``constant``: warmup then ``peak``.
"""

from __future__ import annotations

import math

from .config import ScheduleConfig


def lr_at(cfg: ScheduleConfig, peak: float, i: int) -> float:
    w, T = cfg.warmup_steps, cfg.total_steps
    if w > 0 and i <= w:
        return peak * i / w
    if cfg.name == "constant":
        return peak
    if cfg.name == "warmup_cosine":
        span = max(T - w, 1)
        p = min(max(i - w, 0) / span, 1.0)
        floor = cfg.min_lr_ratio * peak
        return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * p))
    if cfg.name == "linear_to_zero":
        K = max(T - w, 1)
        return peak * max(K - (i - w - 1), 0) / K if i > w else peak
    raise ValueError(f"unknown schedule {cfg.name!r}")


def final_lr(cfg: ScheduleConfig, peak: float) -> float:
    """The learning rate after the last update (what the run 'ends at')."""
    return lr_at(cfg, peak, cfg.total_steps + 1) if cfg.name == "linear_to_zero" else lr_at(cfg, peak, cfg.total_steps)
