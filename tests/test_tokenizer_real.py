"""The tokenizer on real-speech conditions: collapse-prone corpora, band-limited audio,
short clips, and encoding that does not depend on the batch."""
import numpy as np
import pytest
import torch
from scipy import signal

from tokenizer.codec import tokenize
from tokenizer.encode import short_drop_warnings
from runtime.config import load_config
from tokenizer.features import MelSettings, log_mel_features, mel_bin_hz
from tokenizer.shards import ShardWriter
from tokenizer.train import CropSampler
from tokenizer.vqvae import VQVAE, VectorQuantizer


def _collapse_corpus(n: int, g: torch.Generator) -> torch.Tensor:
    """98% one exact vector (padding, digital silence), 2% four spread clusters (a few spectra)."""
    centres = torch.randn(4, 8, generator=torch.Generator().manual_seed(1)) * 3
    speech = centres[torch.randint(4, (n // 50,), generator=g)] + torch.randn(n // 50, 8, generator=g)
    return torch.cat([torch.full((n - n // 50, 8), -2.0), speech])


def _codes_used_on_speech(reservoir_size: int) -> int:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    q = VectorQuantizer(128, 8, reservoir_size=reservoir_size)
    q.train()
    for _ in range(60):
        q(_collapse_corpus(1024, g))
    q.eval()
    _, idx, _ = q(_collapse_corpus(50000, g)[-1000:])
    return len(idx.unique())


def test_reservoir_restarts_keep_usage_up_on_a_collapse_prone_corpus():
    from_batch = _codes_used_on_speech(reservoir_size=0)
    from_reservoir = _codes_used_on_speech(reservoir_size=4096)
    assert from_reservoir >= 64, from_reservoir  # half the codebook or more lives on the speech vectors
    assert from_reservoir > 1.5 * from_batch, (from_reservoir, from_batch)


def test_valid_mask_keeps_padding_out_of_the_codebook():
    q = VectorQuantizer(16, 4, reservoir_size=64, restart_window=2)
    q.train()
    z = torch.randn(2, 50, 4)
    z[:, 30:] = 100.0  # padding
    valid = torch.zeros(2, 50, dtype=torch.bool)
    valid[:, :30] = True
    for _ in range(4):
        q(z, valid)
    assert q.codebook.abs().max() < 50 and q.reservoir.abs().max() < 50


def _noise(seconds: float, rate: int = 16000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    envelope = np.repeat(rng.uniform(0.2, 1.0, int(seconds * 10)), rate // 10)  # some loud and quiet frames
    return (0.1 * rng.standard_normal(len(envelope)) * envelope).astype(np.float32)


def test_bandwidth_of_a_signal_low_passed_at_4khz():
    s = MelSettings.from_conf(load_config())
    wide = _noise(2.0)
    narrow = signal.sosfiltfilt(signal.butter(16, 3900, fs=16000, output="sos"), wide).astype(np.float32)
    hz = mel_bin_hz(s)
    f_wide = log_mel_features(wide, s, -35.0, band_margin_db=30.0)
    f_narrow = log_mel_features(narrow, s, -35.0, band_margin_db=30.0)
    assert f_wide["band_bins"] == s.n_mels
    assert 3800 <= hz[f_narrow["band_bins"] - 1] <= 4700, hz[f_narrow["band_bins"] - 1]


def test_short_drop_warning_names_the_setting():
    lines = short_drop_warnings({"train": 10, "val": 0, "test": 5}, {"train": 90, "val": 10, "test": 0},
                                min_steps=20, max_fraction=0.2, steps_per_second=25.0)
    assert len(lines) == 2
    assert "dropped 90 of 100 train" in lines[0] and "--min_steps" in lines[0] and "max_short_drop_fraction" in lines[0]
    assert "leaving no val utterance" in lines[1]
    assert short_drop_warnings({"train": 90}, {"train": 10}, 20, 0.2, 25.0) == []


def _trained_model() -> VQVAE:
    torch.manual_seed(0)
    m = VQVAE(channels=32, code_dim=8, codebook_size=64, tokens_per_step=2, time_downsample=4, res_blocks=1)
    m.train()
    for _ in range(3):
        m(torch.randn(8, 64, 80))
    return m.eval()


def test_encoding_does_not_depend_on_the_batch():
    m = _trained_model()
    rng = np.random.default_rng(0)
    utts = [{"mel": rng.standard_normal((n, 80)).astype(np.float32)} for n in (5, 13, 37, 50, 64, 120, 3)]
    alone = [m.encode(torch.from_numpy(u["mel"])[None])[0].numpy() for u in utts]
    one_by_one = {id(u): t for u, t, _ in tokenize(m, utts, torch.device("cpu"), max_frames=1)}
    together = {id(u): (t, r) for u, t, r in tokenize(m, utts, torch.device("cpu"), max_frames=10**6, reconstruct=True)}
    for u, a in zip(utts, alone):
        assert np.array_equal(one_by_one[id(u)], a) and np.array_equal(together[id(u)][0], a), len(u["mel"])
        recon_alone = m.decode(torch.from_numpy(a)[None])[0, : len(u["mel"])].detach().numpy()
        np.testing.assert_allclose(together[id(u)][1], recon_alone, atol=1e-4)


@pytest.mark.parametrize("pack", [True, False])
def test_crops_of_short_utterances_are_packed_not_padded(tmp_path, pack):
    with ShardWriter(tmp_path / "mels", max_rows=10**6) as writer:
        for i in range(20):  # 12-frame clips, every row distinct and never flat across bins
            rows = (100 * i + np.arange(12)[:, None] + np.linspace(0, 1, 80)[None]).astype(np.float16)
            writer.add(per_step={"mel": rows}, per_utterance={"utterance_id": f"u{i}"})
    crops = next(CropSampler(tmp_path / "mels", segment=64, batch_size=8, seed=0, pack=pack)).numpy()
    assert crops.shape == (8, 64, 80)
    flat_rows = np.ptp(crops, axis=2) == 0  # padding repeats one value across the bins
    assert (not flat_rows.any()) if pack else flat_rows.any()
