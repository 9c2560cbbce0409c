import numpy as np
import pytest
import soundfile as sf

from audio_fixtures import speechlike, write_clip
from tokenizer.audio_io import UnusableAudio, load_audio


def test_resamples_to_16k_mono(tmp_path):
    path = write_clip(tmp_path / "a.wav", seconds=1.0, rate=44100, channels=2)
    wave, notes = load_audio(path, 16000)
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert abs(len(wave) - 16000) <= 2
    assert any("downmixed from 2 channels" in n for n in notes)


def test_mp3_and_flac_decode(tmp_path):
    for name, fmt in (("a.mp3", "MP3"), ("a.flac", "FLAC"), ("a.ogg", "OGG")):
        wave, _ = load_audio(write_clip(tmp_path / name, seconds=1.0, fmt=fmt), 16000)
        assert 0.9 * 16000 < len(wave) < 1.2 * 16000


def test_wrong_extension_still_decodes_by_content(tmp_path):
    wave, _ = load_audio(write_clip(tmp_path / "really_flac.wav", seconds=1.0, fmt="FLAC"), 16000)
    assert len(wave) > 15000


@pytest.mark.parametrize("kind, reason", [
    ("corrupt", "cannot decode"), ("empty", "empty"), ("silent", "all silent"), ("nan", "NaN"), ("zero_bytes", "0 bytes"),
])
def test_bad_files_give_a_reason(tmp_path, kind, reason):
    path = tmp_path / f"{kind}.wav"
    if kind == "corrupt":
        path.write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt garbage" * 3)
    elif kind == "zero_bytes":
        path.write_bytes(b"")
    elif kind == "empty":
        sf.write(str(path), np.zeros((0,), np.float32), 16000)
    elif kind == "silent":
        sf.write(str(path), np.zeros(16000, np.float32), 16000)
    elif kind == "nan":
        x = speechlike(1.0)
        x[100] = np.nan
        sf.write(str(path), x, 16000, subtype="FLOAT")
    with pytest.raises(UnusableAudio, match=reason):
        load_audio(path, 16000)


def test_truncated_file_keeps_what_is_there(tmp_path):
    path = write_clip(tmp_path / "t.wav", seconds=2.0)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    wave, _ = load_audio(path, 16000)
    assert 0.8 * 16000 < len(wave) < 1.2 * 16000


def test_long_files_are_cut_or_skipped(tmp_path):
    path = write_clip(tmp_path / "long.wav", seconds=5.0)
    wave, notes = load_audio(path, 16000, max_seconds=2.0, long_files="cut")
    assert len(wave) == 32000 and "cut from 5.0 s" in notes[0]
    with pytest.raises(UnusableAudio, match="too long"):
        load_audio(path, 16000, max_seconds=2.0, long_files="skip")
