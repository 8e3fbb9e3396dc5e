import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from espnet2_speechlm.vocab import JointVocab, VocabError


def test_released_layout():
    v = JointVocab.build({"text": 49152, "acoustic": 8 * 1024, "semantic": 5000})
    assert [(b.name, b.start) for b in v.blocks] == [("semantic", 256), ("acoustic", 5256), ("text", 13448)]
    assert v.size == 13448 + 49152 and v.num_streams == 9
    assert v.acoustic_stream_range(1) == (5256, 6280) and v.acoustic_stream_range(8) == (5256 + 7 * 1024, 13448)
    assert v.special("<sos/eos>") == 5 and v.special("<codec_ssl_start/end>") == 34
    assert v.special("<text_bpe_start/end>") == 35 and v.special("<spk_start/end>") == 37
    assert [v.special(t) for t in ("<textlm_task>", "<asr_task>", "<tts_task>", "<plain_tts_task>", "<audiolm_task>")] == [64, 80, 81, 82, 83]


@given(
    st.dictionaries(
        st.sampled_from(["semantic", "acoustic", "text", "phone", "emotion"]),
        st.integers(1, 40).map(lambda k: 8 * k),
        min_size=1,
    ),
    st.randoms(),
)
def test_stable_under_input_order(blocks, rnd):
    items = list(blocks.items())
    shuffled = items[:]
    rnd.shuffle(shuffled)
    a = JointVocab.build(dict(items))
    b = JointVocab.build(shuffled)
    assert a.to_dict() == b.to_dict()
    assert a.fingerprint() == b.fingerprint()


def test_save_load_round_trip(tmp_path):
    v = JointVocab.build({"semantic": 5000, "acoustic": 8192, "text": 49152})
    p = v.save(tmp_path)
    assert p.name == "vocab.json"
    w = JointVocab.load(tmp_path)
    assert w.to_dict() == v.to_dict()
    assert not list(tmp_path.glob("*.tmp"))


def test_loaded_layout_is_read_not_recomputed(tmp_path):
    # a (hypothetical) checkpoint whose text block comes first: loading must
    # keep its ids, not lay the blocks out again in canonical order
    from espnet2_speechlm.vocab import SPECIALS, Block

    v = JointVocab((Block("text", 256, 10), Block("semantic", 266, 16), Block("acoustic", 282, 32, 8)), 9, dict(SPECIALS))
    v.save(tmp_path)
    w = JointVocab.load(tmp_path)
    assert w.block("text").start == 256 and w.block("semantic").start == 266
    assert w.fingerprint() == v.fingerprint()
    assert w.fingerprint() != JointVocab.build({"text": 10, "semantic": 16, "acoustic": 32}).fingerprint()


def test_edited_file_is_refused(tmp_path):
    v = JointVocab.build({"semantic": 16, "acoustic": 8 * 4, "text": 10})
    d = v.to_dict()
    d["blocks"][-1]["start"] += 5  # e.g. a hand-edited text offset
    (tmp_path / "vocab.json").write_text(json.dumps(d))
    with pytest.raises(VocabError, match="fingerprint"):
        JointVocab.load(tmp_path)
    (tmp_path / "vocab.json").write_text("{\n  \"size\": 3,\n  oops\n}")
    with pytest.raises(VocabError, match="line 3"):
        JointVocab.load(tmp_path)
    with pytest.raises(FileNotFoundError):
        JointVocab.load(tmp_path / "missing.json")


def test_check_matches_names_the_difference():
    a = JointVocab.build({"semantic": 16, "acoustic": 8 * 4, "text": 10})
    b = JointVocab.build({"semantic": 17, "acoustic": 8 * 4, "text": 10})
    a.check_matches(JointVocab.build({"text": 10, "semantic": 16, "acoustic": 32}))
    with pytest.raises(VocabError, match="semantic"):
        a.check_matches(b)


def test_local_global_maps_and_names(small_vocab):
    v = small_vocab
    codes = np.array([[3, 0, 1, 2, 3, 4, 5, 6, 15]])
    g = v.audio_to_global(codes)
    np.testing.assert_array_equal(v.audio_to_local(g), codes)
    assert v.token_name(g[0, 0]) == "<ssl_3>" and v.token_name(g[0, 8]) == "<codec_7_15>"
    assert v.modality_of(int(v.text_to_global([7])[0])) == "text"
    with pytest.raises(VocabError):
        v.audio_to_global(np.array([[50, 0, 0, 0, 0, 0, 0, 0, 0]]))
    with pytest.raises(VocabError):
        v.audio_to_global(np.zeros((2, 3)))
    with pytest.raises(VocabError, match="split"):
        JointVocab.build({"acoustic": 10})


def test_semantic_unit_zero_as_pad(tmp_path):
    """Vocabularies imported from the released OpusLM models write unit 0 as <pad>; the flag is part of the
    file and of the fingerprint, and every other vocabulary keeps the fingerprint it always had."""
    import dataclasses

    v = JointVocab.build({"semantic": 5000, "acoustic": 8192, "text": 49152})
    assert v.fingerprint() == "59ba80f89f0c5d1a" and "semantic0_is_pad" not in v.to_dict()
    r = dataclasses.replace(v, semantic0_is_pad=True)
    assert r.fingerprint() != v.fingerprint()
    frames = np.array([[0, 1, 2, 3, 4, 5, 6, 7, 8], [7, 0, 0, 0, 0, 0, 0, 0, 1023]])
    g = r.audio_to_global(frames)
    assert g[:, 0].tolist() == [0, 263] and v.audio_to_global(frames)[0, 0] == 256
    assert np.array_equal(r.audio_to_local(g), frames)
    back = JointVocab.load(r.save(tmp_path))
    assert back.semantic0_is_pad and back.fingerprint() == r.fingerprint()
    with pytest.raises(VocabError, match="semantic unit 0 written as <pad>: False vs True"):
        v.check_matches(r)
