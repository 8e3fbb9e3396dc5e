"""precision: auto picks bf16 only where the hardware computes it natively."""

import pytest

from espnet2_speechlm.config import ConfigError
from espnet2_speechlm.train import config as train_config
from espnet2_speechlm.train import precision


def test_explicit_precisions_are_kept():
    assert precision.resolve_precision("fp32", "cpu") == "fp32"
    assert precision.resolve_precision("bf16", "cpu") == "bf16"


@pytest.mark.parametrize("native", [True, False])
def test_auto_follows_the_cpu(monkeypatch, native):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    assert precision.resolve_precision("auto", "cpu") == ("bf16" if native else "fp32")


def test_cpu_probe_agrees_with_cpuinfo_flags():
    flags = set()
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    assert precision.cpu_has_native_bf16() == bool(flags & {"avx512_bf16", "amx_bf16"})


def test_unknown_precision_is_refused(tmp_path):
    with pytest.raises(ValueError, match="fp16"):
        precision.resolve_precision("fp16")
    p = tmp_path / "t.yaml"
    p.write_text("engine: {precision: fp16}\n")
    with pytest.raises(ConfigError, match="engine.precision"):
        train_config.load(p)
