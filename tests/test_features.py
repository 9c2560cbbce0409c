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


def _write_split(layout, split, levels, frames=(30, 50)):
    """A prepared split as prepare writes it: per utterance the z-scored mel (float16) and its dB mean, std.
    Returns the dB log-mels."""
    from tokenizer.features import zscore
    from tokenizer.shards import ShardWriter

    rng, dbs = np.random.default_rng(len(split)), []
    with ShardWriter(layout.mels(split), max_rows=70) as w:
        for i, level in enumerate(levels):
            db = rng.normal(level, 5.0 + i, (frames[i % 2], 80)).astype(np.float32)
            z, mean, std = zscore(db)
            w.add(per_step={"mel": z.astype("float16"), "voice": np.ones(len(z), np.float32)},
                  per_utterance={"utterance_id": f"{split}{i}", "speaker": "s", "source": "x", "mean": mean, "std": std})
            dbs.append(db)
    return dbs


def test_corpus_norm_uses_the_train_split_statistics_only(tmp_path):
    from tokenizer.layout import DataLayout
    from tokenizer.train import CropSampler, _val_crops, train_norm_stats

    layout = DataLayout.of(tmp_path)
    train_db = np.concatenate(_write_split(layout, "train", [-30.0, -50.0, -40.0, -20.0]))
    _write_split(layout, "val", [+40.0, +10.0])
    _write_split(layout, "test", [-90.0])
    mean, std = train_norm_stats(layout)
    assert abs(mean - train_db.mean()) < 1e-3 and abs(std - train_db.std()) < 1e-3
    _write_split(layout, "val", [+80.0, 0.0])  # other val and test audio: the statistics do not move
    assert train_norm_stats(layout) == (mean, std)
    crops = next(CropSampler(layout.mels("train"), 20, 64, seed=0, norm=(mean, std))).numpy()
    assert abs(crops.mean()) < 0.3 and crops.min() < -1.0 and crops.max() > 1.0  # one scale, levels kept
    val = _val_crops(layout.mels("val"), 20, norm=(mean, std)).numpy()
    assert val.mean() > 3.0  # val's louder level stays in it (its own z-score would remove it)


def test_pooled_stats_and_renormalize_give_the_corpus_z_score():
    from tokenizer.features import pooled_stats, renormalize, zscore

    rng = np.random.default_rng(0)
    dbs = [rng.normal(m, s, (n, 80)) for m, s, n in ((-30, 4, 20), (-50, 9, 35))]
    z = [zscore(d) for d in dbs]
    stats = pooled_stats([20, 35], [m for _, m, _ in z], [s for _, _, s in z])
    both = np.concatenate(dbs)
    assert np.allclose(stats, (both.mean(), both.std()), atol=1e-6)
    again = renormalize(z[1][0], z[1][1], z[1][2], stats)
    assert np.allclose(again, (dbs[1] - stats[0]) / stats[1], atol=1e-4)


def test_a_causal_tokenizer_with_utterance_norm_is_refused_naming_the_key(capsys):
    import pytest

    from runtime.config import ConfigError, parse_args
    from tokenizer.features import mel_norm_kind

    with pytest.raises(ConfigError, match="'mel_norm' = 'utterance': vq_causal true needs mel_norm corpus"):
        load_config(["defaults"], ["--vq_causal", "true", "--mel_norm", "utterance"])
    with pytest.raises(SystemExit) as e:
        parse_args(["--vq_causal", "true", "--mel_norm", "utterance"])
    assert e.value.code == 2 and "mel_norm" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="'mel_norm' = 'global': must be one of auto, utterance, corpus"):
        load_config(["defaults"], ["--mel_norm", "global"])
    assert mel_norm_kind(load_config()) == "utterance"  # the default: as before
    assert mel_norm_kind(load_config(["defaults"], ["--vq_causal", "true"])) == "corpus"
    assert mel_norm_kind(load_config(["defaults"], ["--mel_norm", "corpus"])) == "corpus"
