"""How good the tokens are: reconstruction quality and codebook health.

Accumulated utterance by utterance so evaluation streams over a split of any size.
"""
from __future__ import annotations

import math

import numpy as np

from tokenizer.tokens import TokenSpec


def lsd_db(original_db: np.ndarray, recon_db: np.ndarray) -> float:
    """Log-spectral distance in dB: per frame the RMS over mel bins of the dB difference, averaged over frames."""
    diff = np.asarray(original_db, np.float64) - np.asarray(recon_db, np.float64)
    return float(np.sqrt((diff ** 2).mean(axis=1)).mean())


def psnr(original: np.ndarray, recon: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB, the peak being the original's value range."""
    mse = float(((original - recon) ** 2).mean())
    peak = float(original.max() - original.min())
    return 10.0 * math.log10(peak ** 2 / max(mse, 1e-12))


def codebook_stats(counts: np.ndarray, steps_per_second: float, tokens_per_step: int) -> dict[str, float]:
    """Usage fraction, perplexity (exp of the code entropy), entropy in bits, dead codes, bitrate."""
    counts = np.asarray(counts, np.float64)
    size = len(counts)
    p = counts / max(counts.sum(), 1.0)
    nz = p[p > 0]
    entropy = float(-(nz * np.log(nz)).sum())
    return {
        "codebook_usage": float((counts > 0).mean()),
        "perplexity": float(math.exp(entropy)),
        "entropy_bits": entropy / math.log(2),
        "dead_codes": int((counts == 0).sum()),
        "bits_per_second": TokenSpec(size, tokens_per_step, steps_per_second).bits_per_second,
    }


class ReconstructionMeter:
    """Frame-weighted averages of MSE, PSNR, Pearson r (z-scored) and LSD (dB) over utterances.

    `lsd_db_band` is the LSD over the `band_bins` lowest mel bins only, those that carry
    signal: on band-limited audio the empty bins above the band are easy and flatter `lsd_db`.
    """

    def __init__(self, codebook_size: int, band_bins: int = 0):
        self.frames = 0
        self.band_bins = band_bins
        self.sums = {"mse": 0.0, "psnr": 0.0, "pearson": 0.0, "lsd_db": 0.0, "lsd_db_band": 0.0}
        self.counts = np.zeros(codebook_size, np.int64)

    def add(self, z: np.ndarray, z_recon: np.ndarray, mean: float, std: float, tokens: np.ndarray) -> None:
        n = len(z)
        z = np.asarray(z, np.float64)
        z_recon = np.asarray(z_recon[:n], np.float64)
        self.sums["mse"] += float(((z - z_recon) ** 2).mean()) * n
        self.sums["psnr"] += psnr(z, z_recon) * n
        r = np.corrcoef(z.ravel(), z_recon.ravel())[0, 1]
        self.sums["pearson"] += (float(r) if np.isfinite(r) else 0.0) * n
        self.sums["lsd_db"] += lsd_db(z * std + mean, z_recon * std + mean) * n
        band = slice(0, self.band_bins or z.shape[1])
        self.sums["lsd_db_band"] += lsd_db(z[:, band] * std + mean, z_recon[:, band] * std + mean) * n
        self.counts += np.bincount(np.asarray(tokens).ravel(), minlength=len(self.counts))
        self.frames += n

    def result(self, steps_per_second: float, tokens_per_step: int) -> dict[str, float]:
        if self.frames == 0:
            raise ValueError("no utterances were evaluated")
        out = {k: v / self.frames for k, v in self.sums.items()}
        out.update(codebook_stats(self.counts, steps_per_second, tokens_per_step))
        return out
