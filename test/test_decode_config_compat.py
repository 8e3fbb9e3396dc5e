"""Decode configs written before the length limits moved under ``generation`` (a packed
model's decode.yaml, a recipe's decode config, ``--override max_len=N``) still load, with
the same meaning; a limit given in both places is refused."""

import pytest
import yaml

from espnet2_speechlm.infer.api import load_decode_defaults, upgrade_decode_dict, upgrade_decode_override


def test_packed_decode_yaml_with_top_level_limits_loads(tmp_path):
    p = tmp_path / "decode.yaml"
    p.write_text(yaml.safe_dump({
        "asr": {"generation": {"text": {"greedy": True}}, "max_len": 123, "max_len_ratio": 0.5, "batch_size": 4},
        "tts": {"min_len_ratio": 2.0, "max_len": 600},
    }))
    d = load_decode_defaults(p)
    assert (d.asr.generation.max_len, d.asr.generation.max_len_ratio, d.asr.batch_size) == (123, 0.5, 4)
    assert d.asr.generation.text.greedy
    assert (d.tts.generation.min_len_ratio, d.tts.generation.max_len) == (2.0, 600)
    # what the file does not say keeps its default
    assert d.textlm.generation.max_len == 100


def test_limit_given_twice_is_refused_naming_the_file():
    with pytest.raises(ValueError, match=r"conf/x.yaml.*max_len.*both"):
        upgrade_decode_dict({"max_len": 5, "generation": {"max_len": 6}}, "conf/x.yaml")


def test_old_override_spelling_is_moved_and_others_are_kept():
    assert upgrade_decode_override("max_len=3") == "generation.max_len=3"
    assert upgrade_decode_override("generation.max_len=3") == "generation.max_len=3"
    assert upgrade_decode_override("batch_size=2") == "batch_size=2"
