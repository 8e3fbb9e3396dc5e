"""Audio reading for the dump: wav.scp forms, formats, resampling, bad input."""

import shutil

import numpy as np
import pytest
import soundfile as sf

from espnet2_speechlm.tokenizers.audio import AudioError, AudioItem, DataDirError, iter_audio, load_item, read_data_dir


def tone(sr, seconds, f=440.0):
    t = np.arange(int(sr * seconds)) / sr
    return (0.3 * np.sin(2 * np.pi * f * t)).astype(np.float32)


@pytest.mark.parametrize("fmt,sr", [("wav", 8000), ("flac", 22050), ("ogg", 44100), ("mp3", 16000), ("wav", 48000)])
def test_formats_and_resampling(tmp_path, fmt, sr):
    p = tmp_path / f"a.{fmt}"
    sf.write(p, tone(sr, 1.5), sr)
    wav = load_item(AudioItem("u", str(p)))
    assert wav.dtype == np.float32 and wav.ndim == 1
    # mp3 encoders add some priming samples; otherwise the length is exact
    assert abs(len(wav) - 24000) <= (2000 if fmt == "mp3" else 1)
    # the 440 Hz tone survives resampling: its spectral peak is where it should be
    spec = np.abs(np.fft.rfft(wav[2000:18000]))
    assert abs(np.argmax(spec) * 16000 / 16000 - 440) < 3


def test_stereo_is_mixed_down(tmp_path):
    p = tmp_path / "s.wav"
    sf.write(p, np.stack([tone(16000, 1), -tone(16000, 1) * 0 + 0.1], 1), 16000)
    wav = load_item(AudioItem("u", str(p)))
    assert wav.shape == (16000,)


@pytest.mark.skipif(shutil.which("sox") is None, reason="sox not installed")
def test_pipe_and_segments(tmp_path):
    src = tmp_path / "rec.wav"
    sf.write(src, tone(8000, 3.0), 8000)
    d = tmp_path / "data"
    d.mkdir()
    (d / "wav.scp").write_text(f"rec1 sox {src} -t wav - |\nrec2 {src}\n")
    (d / "segments").write_text("s1 rec1 0.5 1.5\ns2 rec2 1.0 -1\n")
    items = read_data_dir(d)
    assert [i.utt for i in items] == ["s1", "s2"]
    out = dict((it.utt, w) for it, w in iter_audio(items))
    assert len(out["s1"]) == 16000 and len(out["s2"]) == 32000


def test_bad_inputs_name_utterance_and_file(tmp_path):
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, np.float32), 16000)
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"this is not audio")
    short = tmp_path / "short.wav"
    sf.write(short, tone(16000, 0.01), 16000)
    cases = {"e": (empty, "empty"), "g": (garbage, "cannot read"), "m": (tmp_path / "missing.wav", "cannot read"), "s": (short, "too short")}
    for utt, (path, reason) in cases.items():
        with pytest.raises(AudioError, match=reason) as ei:
            load_item(AudioItem(utt, str(path)), min_seconds=0.05)
        assert ei.value.utt == utt and str(path) in str(ei.value)
    with pytest.raises(AudioError, match="exited with"):
        load_item(AudioItem("p", "false |"))


def test_data_dir_errors_name_file_and_line(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "wav.scp").write_text("a /x.wav\nb /y.wav\na /z.wav\n")
    with pytest.raises(DataDirError, match=r"wav.scp: line 3: duplicate id 'a'"):
        read_data_dir(d)
    (d / "wav.scp").write_text("a /x.wav\nb\n")
    with pytest.raises(DataDirError, match="line 2"):
        read_data_dir(d)
    (d / "wav.scp").write_text("a /x.wav\n")
    (d / "segments").write_text("s1 a 0 1\ns2 nosuchrec 0 1\n")
    with pytest.raises(DataDirError, match=r"segments: line 2: recording 'nosuchrec'"):
        read_data_dir(d)
    with pytest.raises(FileNotFoundError):
        read_data_dir(tmp_path / "nodir")
