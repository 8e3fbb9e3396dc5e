"""Helpers of the recipe integration tests: a recipe copied to a temp dir, shell runs."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def copy_recipe(src: Path, dst: Path) -> Path:
    """A copy of a recipe outside the repository, linked back to TEMPLATE and utils (absolute links)."""
    dst.mkdir(parents=True)
    for name in ("run.sh", "cmd.sh", "conf", "local"):
        s = src / name
        if s.exists():
            (shutil.copytree if s.is_dir() else shutil.copy)(s, dst / name)
    os.symlink(ROOT / "egs2/TEMPLATE/speechlm1/speechlm.sh", dst / "speechlm.sh")
    os.symlink(ROOT / "egs2/TEMPLATE/speechlm1/path.sh", dst / "path.sh")
    os.symlink(ROOT / "utils", dst / "utils")
    return dst


def sh(cwd, *args, check=True, env=None):
    """Run a command with bash in cwd (the recipe's path.sh sets PYTHONPATH)."""
    e = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    e.update(env or {})
    r = subprocess.run(["bash", *args], cwd=cwd, capture_output=True, text=True, env=e)
    if check and r.returncode != 0:
        raise AssertionError(f"{args} failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}")
    return r
