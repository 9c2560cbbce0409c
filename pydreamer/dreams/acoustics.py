"""Acoustic metrics of clips, and how generated clips compare with real ones.

Per clip (a mono float waveform at sample rate ``sr``), after the evaluation of
SoundStorm-style generators of environmental sound: a blind SNR, zero-crossing rate, RMS,
spectral entropy, centroid and roll-off. Per (reference, generated) pair: spectral
convergence and log-spectral distance, over the whole overlap or per window of horizon.
Over two sets of clips: median, IQR, relative difference of the medians and the two-sample
Kolmogorov-Smirnov test per metric, as a markdown table or a CSV.

Beside these, the *structure* of speech (``STRUCTURE``, measured in ``structure.py``): voiced
fraction, harmonicity, syllable rate and strength, pause and speech-segment durations.

Framing: frames of ``n_fft`` samples every ``hop_length``, uncentred (no edge padding to
bias a stationary signal). A clip shorter than one frame is zero-padded to one frame, an
empty clip is one frame of silence, non-finite samples count as 0, so every metric is
finite. Silence and near-silence:

* a frame is *silent* when its RMS is below ``SILENT_RMS`` (1e-5, -100 dBFS); spectral
  entropy, centroid and roll-off are means over the non-silent frames only, and 0.0 for a
  clip with none (a silent frame has no spectrum to describe);
* ZCR and RMS are means over all frames (they are well defined on silence: 0);
* powers are floored at ``POWER_FLOOR`` (1e-10) before any log, so a silent clip has
  SNR 0 dB and two silent clips have LSD 0 dB.
"""
from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import librosa
import numpy as np
from scipy import stats

METRICS: tuple[str, ...] = (
    "snr_db",
    "zero_crossing_rate",
    "rms",
    "spectral_entropy",
    "spectral_centroid",
    "spectral_rolloff",
)
STRUCTURE: tuple[str, ...] = (
    "voiced_fraction",
    "harmonicity",
    "syllable_rate_hz",
    "syllable_strength",
    "pause_median_s",
    "speech_median_s",
)
N_FFT = 1024  # 64 ms at 16 kHz
HOP_LENGTH = 256
SILENT_RMS = 1e-5
POWER_FLOOR = 1e-10
NORM_FLOOR = 1e-8  # denominator floor of the spectral convergence: a silent reference gives a huge, finite value


# -- framing -----------------------------------------------------------------------------


def _waveform(y: np.ndarray, n_fft: int) -> np.ndarray:
    """Mono float64, non-finite samples zeroed, zero-padded to at least one frame."""
    y = np.asarray(y, np.float64)
    if y.ndim > 1:
        y = librosa.to_mono(y)
    y = np.nan_to_num(y.ravel(), nan=0.0, posinf=0.0, neginf=0.0)
    if len(y) < n_fft:
        y = np.pad(y, (0, n_fft - len(y)))
    return y


def _magnitude(y: np.ndarray, n_fft: int, hop_length: int) -> np.ndarray:
    """Magnitude STFT ``[1 + n_fft // 2, frames]`` of an already prepared waveform."""
    return np.abs(librosa.stft(y, n_fft=n_fft, hop_length=hop_length, center=False))


def _frame_rms(y: np.ndarray, n_fft: int, hop_length: int) -> np.ndarray:
    return librosa.feature.rms(y=y, frame_length=n_fft, hop_length=hop_length, center=False)[0]


# -- per-clip metrics --------------------------------------------------------------------


def snr_db(y: np.ndarray, n_fft: int = N_FFT, hop_length: int = HOP_LENGTH, fraction: float = 0.1) -> float:
    """Blind SNR in dB: mean power of the loudest ``fraction`` of frames over that of the quietest ``fraction``.

    No clean reference exists for a generated clip, so the quietest frames stand for the
    noise floor and the loudest for the signal. A stationary clip (a tone, steady noise)
    reads about 0 dB; a clip with pauses reads high. At least one frame on each side.
    """
    power = np.sort(_frame_rms(_waveform(y, n_fft), n_fft, hop_length) ** 2)
    k = max(1, math.ceil(fraction * len(power)))
    return float(10.0 * np.log10((power[-k:].mean() + POWER_FLOOR) / (power[:k].mean() + POWER_FLOOR)))


def zero_crossing_rate(y: np.ndarray, n_fft: int = N_FFT, hop_length: int = HOP_LENGTH) -> float:
    """Mean over frames of the fraction of samples where the sign changes (a tone at f0: 2 f0 / sr)."""
    y = _waveform(y, n_fft)
    return float(librosa.feature.zero_crossing_rate(y, frame_length=n_fft, hop_length=hop_length, center=False).mean())


def rms(y: np.ndarray, n_fft: int = N_FFT, hop_length: int = HOP_LENGTH) -> float:
    """Mean over frames of the frame RMS (a sine of amplitude a: a / sqrt(2))."""
    return float(_frame_rms(_waveform(y, n_fft), n_fft, hop_length).mean())


def _spectral(y: np.ndarray, sr: float, n_fft: int, hop_length: int) -> dict[str, float]:
    """Entropy, centroid and roll-off, means over the non-silent frames (0.0 each when none)."""
    y = _waveform(y, n_fft)
    mag = _magnitude(y, n_fft, hop_length)
    active = _frame_rms(y, n_fft, hop_length) >= SILENT_RMS
    active &= mag.sum(axis=0) > 0
    if not active.any():
        return {"spectral_entropy": 0.0, "spectral_centroid": 0.0, "spectral_rolloff": 0.0}
    mag = mag[:, active]
    entropy = stats.entropy(mag**2, base=2, axis=0) / np.log2(mag.shape[0])
    centroid = librosa.feature.spectral_centroid(S=mag, sr=sr, n_fft=n_fft)
    rolloff = librosa.feature.spectral_rolloff(S=mag, sr=sr, n_fft=n_fft, roll_percent=0.85)
    return {
        "spectral_entropy": float(entropy.mean()),
        "spectral_centroid": float(centroid.mean()),
        "spectral_rolloff": float(rolloff.mean()),
    }


def spectral_entropy(y: np.ndarray, sr: float, n_fft: int = N_FFT, hop_length: int = HOP_LENGTH) -> float:
    """Shannon entropy (bits) of each frame's normalised power spectrum over log2(n_bins): in [0, 1], mean over frames.

    0 for a pure tone, near 1 for flat noise (a single-frame periodogram of white noise
    fluctuates, so it reads about 1 - 0.6 / log2(n_bins), 0.93 at n_fft = 1024).
    """
    return _spectral(y, sr, n_fft, hop_length)["spectral_entropy"]


def spectral_centroid(y: np.ndarray, sr: float, n_fft: int = N_FFT, hop_length: int = HOP_LENGTH) -> float:
    """Mean over frames of the magnitude-weighted mean frequency, Hz (brightness)."""
    return _spectral(y, sr, n_fft, hop_length)["spectral_centroid"]


def spectral_rolloff(y: np.ndarray, sr: float, n_fft: int = N_FFT, hop_length: int = HOP_LENGTH) -> float:
    """Mean over frames of the frequency below which 85% of the magnitude lies, Hz."""
    return _spectral(y, sr, n_fft, hop_length)["spectral_rolloff"]


def clip_metrics(y: np.ndarray, sr: float, n_fft: int = N_FFT, hop_length: int = HOP_LENGTH) -> dict[str, float]:
    """All of ``METRICS`` for one clip."""
    return {
        "snr_db": snr_db(y, n_fft, hop_length),
        "zero_crossing_rate": zero_crossing_rate(y, n_fft, hop_length),
        "rms": rms(y, n_fft, hop_length),
        **_spectral(y, sr, n_fft, hop_length),
    }


def describe_clips(
    clips: Iterable[np.ndarray], sr: float, n_fft: int = N_FFT, hop_length: int = HOP_LENGTH
) -> list[dict[str, float]]:
    """``clip_metrics`` of each clip: the input of ``compare_real_generated``."""
    return [clip_metrics(y, sr, n_fft, hop_length) for y in clips]


# -- generated against reference -------------------------------------------------------


def _overlap_spectra(
    reference: np.ndarray, generated: np.ndarray, n_fft: int, hop_length: int
) -> tuple[np.ndarray, np.ndarray]:
    """Magnitude STFTs of both clips cut to their common length."""
    ref, gen = np.asarray(reference, np.float64).ravel(), np.asarray(generated, np.float64).ravel()
    n = min(len(ref), len(gen))
    ref, gen = _waveform(ref[:n], n_fft), _waveform(gen[:n], n_fft)
    return _magnitude(ref, n_fft, hop_length), _magnitude(gen, n_fft, hop_length)


def _convergence(s_ref: np.ndarray, s_gen: np.ndarray) -> float:
    num = float(np.linalg.norm(s_ref - s_gen))
    return 0.0 if num == 0.0 else num / max(float(np.linalg.norm(s_ref)), NORM_FLOOR)


def _lsd(s_ref: np.ndarray, s_gen: np.ndarray) -> float:
    db = [librosa.power_to_db(s**2, ref=1.0, amin=POWER_FLOOR, top_db=None) for s in (s_ref, s_gen)]
    return float(np.sqrt(((db[0] - db[1]) ** 2).mean(axis=0)).mean())


def spectral_convergence(
    reference: np.ndarray, generated: np.ndarray, n_fft: int = N_FFT, hop_length: int = HOP_LENGTH
) -> float:
    """``||S_ref - S_gen||_F / ||S_ref||_F`` on magnitude STFTs over the overlap: 0 for identical clips."""
    return _convergence(*_overlap_spectra(reference, generated, n_fft, hop_length))


def log_spectral_distance(
    reference: np.ndarray, generated: np.ndarray, n_fft: int = N_FFT, hop_length: int = HOP_LENGTH
) -> float:
    """LSD in dB: per frame the RMS over STFT bins of the 10 log10 power difference, mean over frames of the overlap."""
    return _lsd(*_overlap_spectra(reference, generated, n_fft, hop_length))


def similarity_by_horizon(
    reference: np.ndarray,
    generated: np.ndarray,
    sr: float,
    window_s: float = 0.5,
    n_fft: int = N_FFT,
    hop_length: int = HOP_LENGTH,
    edges: Sequence[float] | None = None,
) -> dict[str, np.ndarray]:
    """LSD and spectral convergence per consecutive window of ``window_s`` seconds of the overlap.

    A frame belongs to the window holding its centre, so row k covers horizon
    ``[k window_s, (k + 1) window_s)``: report LSD at 0.5 s, 1 s, ... of a rollout started
    at the clips' first sample. Windows holding no frame centre are left out.
    With ``edges`` (ascending seconds, from 0), row k covers ``[edges[k], edges[k + 1])`` instead and its
    ``end_s`` is ``edges[k + 1]`` itself (a fixed name for the window, also where the overlap ends inside it);
    frames past the last edge are left out.
    Returns arrays ``start_s``, ``end_s``, ``frames``, ``log_spectral_distance``, ``spectral_convergence``.
    """
    bounds = np.asarray(edges, np.float64) if edges is not None else None
    narrowest = float(np.min(np.diff(bounds))) if bounds is not None else window_s
    if narrowest * sr < hop_length:
        raise ValueError(f"window of {narrowest} s is shorter than one hop ({hop_length} samples)")
    s_ref, s_gen = _overlap_spectra(reference, generated, n_fft, hop_length)
    duration = max(min(len(np.ravel(reference)), len(np.ravel(generated))), n_fft) / sr
    centres = (np.arange(s_ref.shape[1]) * hop_length + n_fft / 2) / sr
    if bounds is None:
        slot = np.floor(centres / window_s).astype(np.int64)
        span = [(k * window_s, min((k + 1) * window_s, duration)) for k in range(int(slot.max()) + 1)]
    else:
        slot = np.searchsorted(bounds, centres, side="right") - 1
        slot[slot >= len(bounds) - 1] = -1
        span = list(zip(bounds[:-1], bounds[1:]))
    rows = []
    for k in np.unique(slot[slot >= 0]):
        sel = slot == k
        rows.append((*span[k], sel.sum(), _lsd(s_ref[:, sel], s_gen[:, sel]), _convergence(s_ref[:, sel], s_gen[:, sel])))
    cols = list(zip(*rows)) if rows else [[]] * 5
    return {
        "start_s": np.array(cols[0], np.float64),
        "end_s": np.array(cols[1], np.float64),
        "frames": np.array(cols[2], np.int64),
        "log_spectral_distance": np.array(cols[3], np.float64),
        "spectral_convergence": np.array(cols[4], np.float64),
    }


# -- real against generated, over sets of clips -------------------------------------------


@dataclass(frozen=True)
class MetricComparison:
    """One metric's distribution over real clips against generated ones."""

    metric: str
    real_median: float
    real_iqr: float
    generated_median: float
    generated_iqr: float
    relative_difference: float  # (generated - real) / |real| of the medians; 0 if both 0, +-inf if only real is 0
    ks_statistic: float
    ks_pvalue: float
    n_real: int
    n_generated: int


def _relative_difference(real: float, generated: float) -> float:
    if real == 0.0:
        return 0.0 if generated == 0.0 else math.copysign(math.inf, generated)
    return (generated - real) / abs(real)


def compare_real_generated(
    real: Sequence[Mapping[str, float]],
    generated: Sequence[Mapping[str, float]],
    metrics: Sequence[str] | None = None,
) -> list[MetricComparison]:
    """Per metric: medians, IQRs, relative difference of the medians and the two-sample KS test.

    ``real`` and ``generated`` are per-clip metric dicts (``describe_clips``). Non-finite
    values are dropped; a metric left with no value on either side raises ``ValueError``.
    ``metrics`` defaults to ``METRICS`` and ``STRUCTURE`` present in both, then any other shared keys; of
    those, a metric with no finite value on one side is left out (a metric asked for raises instead).
    """
    asked = metrics is not None
    if metrics is None:
        shared = set(real[0]) & set(generated[0]) if real and generated else set()
        known = METRICS + STRUCTURE
        metrics = [m for m in known if m in shared] + sorted(shared - set(known))
    rows = []
    for m in metrics:
        a = np.array([c[m] for c in real], np.float64)
        b = np.array([c[m] for c in generated], np.float64)
        a, b = a[np.isfinite(a)], b[np.isfinite(b)]
        if not len(a) or not len(b):
            if not asked:  # e.g. no clip long enough for a syllable rate: the row is left out, not the table
                continue
            raise ValueError(f"no finite value of {m!r} among the real or the generated clips")
        ks = stats.ks_2samp(a, b)
        med_a, med_b = float(np.median(a)), float(np.median(b))
        rows.append(
            MetricComparison(
                metric=m,
                real_median=med_a,
                real_iqr=float(stats.iqr(a)),
                generated_median=med_b,
                generated_iqr=float(stats.iqr(b)),
                relative_difference=_relative_difference(med_a, med_b),
                ks_statistic=float(ks.statistic),
                ks_pvalue=float(ks.pvalue),
                n_real=len(a),
                n_generated=len(b),
            )
        )
    return rows


def comparison_markdown(rows: Sequence[MetricComparison]) -> str:
    """A markdown table, one metric per line."""
    head = ["metric", "real median", "real IQR", "generated median", "generated IQR", "rel. diff", "KS D", "KS p"]
    head += ["n real", "n gen"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append(
            f"| {r.metric} | {r.real_median:.4g} | {r.real_iqr:.4g} | {r.generated_median:.4g} | {r.generated_iqr:.4g}"
            f" | {r.relative_difference:+.1%} | {r.ks_statistic:.3f} | {r.ks_pvalue:.3g}"
            f" | {r.n_real} | {r.n_generated} |"
        )
    return "\n".join(lines) + "\n"


def write_comparison_csv(rows: Sequence[MetricComparison], path: str | Path) -> Path:
    """The table as CSV, one metric per row, columns named as ``MetricComparison``'s fields."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[fl.name for fl in fields(MetricComparison)])
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)
    return path
