"""Reporting on rank 0: log lines, a JSON-lines history, TensorBoard, a loss plot, a progress bar.

``exp_dir/log/train.jsonl`` holds one record per logged step (and per
validation); on resume it is cut back to the checkpoint's step, so the
history of a resumed run reads like that of an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

log = logging.getLogger("espnet2_speechlm.train")


class Reporter:
    def __init__(self, exp_dir: Path, enabled: bool, tensorboard: bool, plot: bool, progress_bar: bool, total: int, start: int):
        self.enabled = enabled
        self.dir = Path(exp_dir) / "log"
        self.plot_enabled = plot
        self.tb = None
        self.bar = None
        if not enabled:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        self.hist_path = self.dir / "train.jsonl"
        self._truncate(start)
        self.hist = open(self.hist_path, "a")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(self.dir / "tensorboard"), purge_step=start + 1)
            except ImportError:  # pragma: no cover
                log.warning("tensorboard is not installed: no TensorBoard scalars")
        if progress_bar and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, desc="train", unit="step", dynamic_ncols=True)

    def _truncate(self, step: int) -> None:
        if not self.hist_path.exists():
            return
        keep = []
        for line in self.hist_path.read_text().splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    keep.append(line)
            except json.JSONDecodeError:
                pass  # a line cut by a kill
        self.hist_path.write_text("".join(x + "\n" for x in keep))

    def record(self, rec: dict, prefix: str = "train") -> None:
        if not self.enabled:
            return
        self.hist.write(json.dumps({"kind": prefix, **rec}) + "\n")
        self.hist.flush()
        if self.tb is not None:
            for k, v in rec.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(f"{prefix}/{k}", v, rec["step"])

    def line(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            log.info(text)

    def tick(self, n: int = 1, postfix: dict | None = None) -> None:
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)

    def plot(self, out: Path) -> None:
        """PNG of the loss curves (total and per modality; validation as markers)."""
        if not (self.enabled and self.plot_enabled):
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        recs = [json.loads(x) for x in self.hist_path.read_text().splitlines() if x.strip()]
        fig, ax = plt.subplots(figsize=(8, 5))
        tr = [r for r in recs if r["kind"] == "train"]
        for key in ["loss"] + sorted({k for r in tr for k in r if k.startswith("loss_")}):
            pts = [(r["step"], r[key]) for r in tr if key in r]
            if pts:
                ax.plot(*zip(*pts), label=key, lw=1.5 if key == "loss" else 0.8)
        for name in sorted({r.get("set") for r in recs if r["kind"] == "valid"}):
            pts = [(r["step"], r["loss"]) for r in recs if r["kind"] == "valid" and r.get("set") == name]
            ax.plot(*zip(*pts), "o--", label=f"valid {name}")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        tmp = Path(str(out) + ".tmp.png")
        fig.savefig(tmp, dpi=100)
        plt.close(fig)
        tmp.replace(out)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()
        if self.enabled:
            self.hist.close()
