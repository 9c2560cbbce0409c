"""Log-mel features, the band of them that carries signal, and their way back to sound.

The log-mel is in dB (floored `top_db` below the utterance's peak), z-scored per utterance
with its mean and std kept, so it can be undone exactly for listening (Griffin-Lim) and
for metrics in dB (log-spectral distance). With `mel_norm: corpus` the tokenizer re-z-scores
it with the train split's statistics (`renormalize`), so no utterance-wide level enters a token.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torchaudio.transforms as T


@dataclass(frozen=True)
class MelSettings:
    """The feature settings of a corpus (from the config; kept in the tokenizer checkpoint and token meta)."""

    sample_rate: int
    n_fft: int
    win_length: int
    hop_length: int
    n_mels: int
    top_db: float

    @classmethod
    def from_conf(cls, conf: Mapping[str, Any]) -> "MelSettings":
        return cls(**{k: conf[k] for k in cls.__dataclass_fields__})

    @property
    def frames_per_second(self) -> float:
        return self.sample_rate / self.hop_length


@lru_cache(maxsize=4)
def _mel_transform(s: MelSettings) -> T.MelSpectrogram:
    return T.MelSpectrogram(
        sample_rate=s.sample_rate, n_fft=s.n_fft, win_length=s.win_length, hop_length=s.hop_length,
        n_mels=s.n_mels, power=2.0, norm="slaney", mel_scale="slaney",
    )


def mel_power(wave: np.ndarray, s: MelSettings) -> np.ndarray:
    """Mel power spectrogram [frames, n_mels]."""
    with torch.no_grad():
        m = _mel_transform(s)(torch.as_tensor(wave, dtype=torch.float32))
    return m.T.numpy()


def power_to_db(power: np.ndarray, top_db: float) -> np.ndarray:
    """10*log10(power), floored `top_db` below the peak (the floor keeps silence finite)."""
    db = 10.0 * np.log10(np.maximum(power, 1e-10))
    return np.maximum(db, db.max() - top_db).astype(np.float32)


def zscore(db: np.ndarray) -> tuple[np.ndarray, float, float]:
    mean, std = float(db.mean()), float(db.std())
    std = max(std, 1e-3)
    return ((db - mean) / std).astype(np.float32), mean, std


def unzscore(z: np.ndarray, mean: float, std: float) -> np.ndarray:
    return z * std + mean


def mel_norm_kind(conf: Mapping[str, Any]) -> str:
    """'utterance' or 'corpus': `mel_norm: auto` is corpus for a causal tokenizer (an utterance's own
    mean and std would carry its future into every token), else utterance (as before the key)."""
    kind = conf.get("mel_norm", "auto")
    if kind == "auto":
        return "corpus" if conf.get("vq_causal", False) else "utterance"
    return str(kind)


def pooled_stats(lengths: np.ndarray, means: np.ndarray, stds: np.ndarray) -> tuple[float, float]:
    """The mean and std (dB) of many utterances' frames together, from each one's frame count, mean and std:
    a corpus' statistics without reading its log-mels again."""
    n = np.asarray(lengths, np.float64)
    m, s = np.asarray(means, np.float64), np.asarray(stds, np.float64)
    if n.sum() <= 0:
        raise ValueError("no frames to compute statistics from")
    mean = float((n * m).sum() / n.sum())
    var = float((n * (s ** 2 + m ** 2)).sum() / n.sum()) - mean ** 2
    return mean, max(float(np.sqrt(max(var, 0.0))), 1e-3)


def renormalize(z: np.ndarray, mean: np.ndarray | float, std: np.ndarray | float,
                stats: tuple[float, float]) -> np.ndarray:
    """A log-mel stored z-scored with its utterance's own `mean`, `std` (per row arrays [F, 1] allowed),
    z-scored with fixed corpus `stats` instead: the same dB, no utterance-wide statistic in it."""
    db = np.asarray(z, np.float32) * np.asarray(std, np.float32) + np.asarray(mean, np.float32)
    return ((db - np.float32(stats[0])) / np.float32(stats[1])).astype(np.float32)


def voice_activity(db: np.ndarray, vad_db: float) -> np.ndarray:
    """1.0 for frames whose energy is within `vad_db` dB of the loudest frame, else 0.0.

    This is the environment's reward later: a forecast of voice activity is a forecast of speech.
    """
    energy = 10.0 * np.log10(np.maximum((10.0 ** (db / 10.0)).sum(axis=1), 1e-10))
    return (energy > energy.max() + vad_db).astype(np.float32)


def band_bins(db: np.ndarray, margin_db: float, top_db: float) -> int:
    """How many mel bins, from the bottom, carry signal: up to the highest bin whose loud
    frames (95th percentile) rise `margin_db` above the utterance's floor (`top_db` below its peak).

    Band-limited sources (8 kHz telephone or digit recordings, low-passed mp3) resampled to
    16 kHz leave the bins above their Nyquist at the floor; those bins are easy to
    reconstruct and would flatter the metrics, so they are measured and set apart.
    """
    loud = np.percentile(np.asarray(db, np.float64), 95, axis=0)
    above = np.nonzero(loud > float(np.max(db)) - top_db + margin_db)[0]
    return int(above[-1]) + 1 if len(above) else 0


def mel_bin_hz(s: MelSettings) -> np.ndarray:
    """Upper edge (Hz) of each mel bin's triangle (slaney scale, as the features use)."""
    import librosa

    return librosa.mel_frequencies(s.n_mels + 2, fmin=0.0, fmax=s.sample_rate / 2, htk=False)[2:]


def log_mel_features(wave: np.ndarray, s: MelSettings, vad_db: float, band_margin_db: float = 30.0) -> dict[str, Any]:
    """Everything prepare keeps for one utterance (and its signal band, for the manifest)."""
    db = power_to_db(mel_power(wave, s), s.top_db)
    z, mean, std = zscore(db)
    return {"mel": z, "mean": mean, "std": std, "voice": voice_activity(db, vad_db),
            "band_bins": band_bins(db, band_margin_db, s.top_db)}


def bandwidth_summary(band_counts: list[int], settings: MelSettings, margin_db: float) -> dict[str, Any]:
    """The corpus' effective bandwidth: the median utterance's count of mel bins carrying signal.

    Train weighs the bins above it down and evaluate reports `lsd_db_band` over the bins below it.
    """
    bins = int(np.median(band_counts)) if band_counts else settings.n_mels
    bins = max(1, bins)
    edges = mel_bin_hz(settings)
    return {
        "signal_mel_bins": bins,
        "n_mels": settings.n_mels,
        "effective_hz": round(float(edges[bins - 1]), 1),
        "band_limited": bins < settings.n_mels,
        "utterances_band_limited": round(float(np.mean(np.asarray(band_counts) < settings.n_mels)), 4) if band_counts else 0.0,
        "rule": f"a mel bin carries signal when its 95th-percentile level is {margin_db:g} dB above the utterance's floor "
                "(band_margin_db); the corpus value is the median over utterances",
    }


def signal_mel_bins(manifest: Mapping[str, Any], n_mels: int) -> int:
    """The prepared corpus' signal bins (all of them for a manifest written before bandwidth was measured)."""
    return int(manifest.get("bandwidth", {}).get("signal_mel_bins", n_mels))


@lru_cache(maxsize=4)
def _inverse(s: MelSettings, n_iter: int) -> tuple[T.InverseMelScale, T.GriffinLim]:
    inv = T.InverseMelScale(n_stft=s.n_fft // 2 + 1, n_mels=s.n_mels, sample_rate=s.sample_rate, norm="slaney", mel_scale="slaney")
    gl = T.GriffinLim(n_fft=s.n_fft, win_length=s.win_length, hop_length=s.hop_length, power=2.0, n_iter=n_iter)
    return inv, gl


def mel_db_to_audio(db: np.ndarray, s: MelSettings, n_iter: int = 64) -> np.ndarray:
    """Listen to a log-mel [frames, n_mels] in dB: inverse mel filterbank, then Griffin-Lim."""
    inv, gl = _inverse(s, n_iter)
    torch.manual_seed(0)  # Griffin-Lim starts from random phases: keep the output reproducible
    with torch.no_grad():
        power = torch.from_numpy((10.0 ** (np.asarray(db, dtype=np.float32) / 10.0)).T.copy())
        wave = gl(inv(power))
    return wave.numpy()


def save_spectrogram_png(path: Path | str, panels: Mapping[str, np.ndarray], frames_per_second: float, title: str = "") -> None:
    """One PNG with a row per named log-mel [frames, n_mels] (e.g. real vs reconstructed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 2.4 * len(panels)), squeeze=False)
    for ax, (name, mel) in zip(axes[:, 0], panels.items()):
        seconds = len(mel) / frames_per_second
        im = ax.imshow(np.asarray(mel, dtype=np.float32).T, origin="lower", aspect="auto", extent=(0, seconds, 0, mel.shape[1]), cmap="magma")
        ax.set_ylabel(f"{name}\nmel bin")
        fig.colorbar(im, ax=ax, pad=0.01)
    axes[-1, 0].set_xlabel("seconds")
    if title:
        axes[0, 0].set_title(title)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
