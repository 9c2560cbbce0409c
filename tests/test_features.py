import numpy as np

from runtime.config import load_config

from audio_fixtures import speechlike
from tokenizer.features import MelSettings, log_mel_features, mel_db_to_audio, save_spectrogram_png, unzscore
from tokenizer.metrics import codebook_stats, lsd_db


def test_log_mel_shapes_zscore_and_undo():
    s = MelSettings.from_conf(load_config())
    f = log_mel_features(speechlike(2.0), s, vad_db=-35)
    assert f["mel"].shape == (201, 80) and f["voice"].shape == (201,)
    assert abs(f["mel"].mean()) < 1e-4 and abs(f["mel"].std() - 1) < 1e-3
    db = unzscore(f["mel"], f["mean"], f["std"])
    assert db.max() - db.min() <= s.top_db + 1e-3  # floored top_db below the peak
    assert 0.2 < f["voice"].mean() < 0.95  # speech-like audio has pauses


def test_griffin_lim_returns_audio_of_the_right_length(tmp_path):
    s = MelSettings.from_conf(load_config())
    f = log_mel_features(speechlike(1.0), s, -35)
    wave = mel_db_to_audio(unzscore(f["mel"], f["mean"], f["std"]), s, n_iter=4)
    assert abs(len(wave) - 16000) <= s.hop_length and np.isfinite(wave).all()
    save_spectrogram_png(tmp_path / "a.png", {"real": f["mel"]}, s.frames_per_second)
    assert (tmp_path / "a.png").stat().st_size > 1000


def test_lsd_and_codebook_stats():
    a = np.zeros((5, 80))
    assert lsd_db(a, a + 3.0) == 3.0
    uniform = codebook_stats(np.ones(1024), 25.0, 4)
    assert uniform["codebook_usage"] == 1.0 and abs(uniform["perplexity"] - 1024) < 1e-6
    assert uniform["bits_per_second"] == 1000.0
    half = codebook_stats(np.r_[np.ones(512), np.zeros(512)], 25.0, 4)
    assert half["dead_codes"] == 512 and abs(half["perplexity"] - 512) < 1e-6
