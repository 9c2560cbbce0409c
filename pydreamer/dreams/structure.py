"""The structure of speech in a clip, what spectral mush lacks: voicing, harmonicity, syllable rhythm, pauses.

Per clip: the fraction of frames a pitch tracker (pYIN) calls voiced, harmonicity (the height of
the normalised autocorrelation peak in the pitch-lag range, on the clip's active frames), the
syllable-rate peak of the envelope's modulation spectrum (2-8 Hz) and how strong it is, and the
median pause and speech-segment durations of voice activity. ``envelope_period`` measures a clip's
repetition period (autocorrelation of its energy envelope), for asking whether a completion keeps its
prompt's rhythm; ``speech_span`` cuts a clip's leading and trailing silence.
"""
from __future__ import annotations

import math

import librosa
import numpy as np

from pydreamer.dreams.acoustics import HOP_LENGTH, N_FFT, POWER_FLOOR, SILENT_RMS, _frame_rms, _waveform

FMIN_HZ, FMAX_HZ = 60.0, 500.0  # the pitch range searched (voices of the built-in corpus and of LibriSpeech)
VAD_DB = -35.0  # a frame is speech within this many dB of the clip's loudest frame (the corpus' vad_db)
SILENT_CLIP_DB = -50.0  # a clip whose loudest 10 ms frame is below this (dBFS RMS) has no speech at all
MIN_PAUSE_S = 0.08  # shorter gaps in voice activity are inside a syllable (stop closures), not pauses
MIN_SEGMENT_S = 0.03  # shorter bursts of activity are clicks, not speech
SYLLABLE_BAND_HZ = (2.0, 8.0)  # syllable rates of speech
ENVELOPE_BAND_HZ = (0.5, 25.0)  # the envelope modulations the syllable strength is a share of


def _envelope_db(y: np.ndarray, sr: float) -> tuple[np.ndarray, float]:
    """Frame energy in dBFS every 10 ms (25 ms frames), and the frame rate: the voice-activity envelope."""
    hop = max(1, int(round(sr / 100)))
    frame = max(hop, int(round(0.025 * sr)))
    energy = _frame_rms(_waveform(y, frame), frame, hop)
    return 20.0 * np.log10(np.maximum(energy, SILENT_RMS)), sr / hop


def voice_activity(y: np.ndarray, sr: float, vad_db: float = VAD_DB) -> tuple[np.ndarray, float]:
    """Per 10 ms frame, speech or not: within `vad_db` of the loudest frame (and the clip not silent), with
    gaps under `MIN_PAUSE_S` filled and bursts under `MIN_SEGMENT_S` dropped. Returns (mask, frame rate)."""
    env, fps = _envelope_db(y, sr)
    if env.max() < SILENT_CLIP_DB:
        return np.zeros(len(env), bool), fps
    active = env > env.max() + vad_db
    for value, shortest in ((False, MIN_PAUSE_S), (True, MIN_SEGMENT_S)):
        for start, end in _runs(active, value):
            inner = start > 0 and end < len(active)  # a gap is a pause only between speech
            if end - start < shortest * fps and (value or inner):
                active[start:end] = not value
    return active, fps


def _runs(mask: np.ndarray, value: bool) -> list[tuple[int, int]]:
    """[start, end) of every run of `value` in a boolean sequence."""
    padded = np.concatenate([[0], (np.asarray(mask) == value).astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(padded))
    return list(zip(edges[::2], edges[1::2]))


def speech_span(y: np.ndarray, sr: float, vad_db: float = VAD_DB) -> tuple[int, int]:
    """[first, last) sample of voice activity: the clip without its leading and trailing silence; (0, 0) when
    the clip has no speech."""
    active, fps = voice_activity(y, sr, vad_db)
    if not active.any():
        return 0, 0
    idx = np.flatnonzero(active)
    hop = sr / fps
    return int(idx[0] * hop), min(len(np.ravel(y)), int(round((idx[-1] + 1) * hop + 0.015 * sr)))


def pause_and_speech(y: np.ndarray, sr: float, vad_db: float = VAD_DB) -> dict[str, float]:
    """Median duration (s) of the pauses between speech segments (0.0 when there is none) and of the speech
    segments (0.0 for a silent clip)."""
    active, fps = voice_activity(y, sr, vad_db)
    speech = [(e - s) / fps for s, e in _runs(active, True)]
    pauses = [(e - s) / fps for s, e in _runs(active, False) if s > 0 and e < len(active)]
    return {"pause_median_s": float(np.median(pauses)) if pauses else 0.0,
            "speech_median_s": float(np.median(speech)) if speech else 0.0}


def voiced_fraction(y: np.ndarray, sr: float, n_fft: int = N_FFT, hop_length: int = HOP_LENGTH) -> float:
    """Fraction of frames pYIN calls voiced (pitch between `FMIN_HZ` and `FMAX_HZ`): ~1 for a sung vowel, 0 for
    noise and silence."""
    y = _waveform(y, n_fft)
    if np.abs(y).max() == 0:
        return 0.0
    _, voiced, _ = librosa.pyin(y, fmin=FMIN_HZ, fmax=FMAX_HZ, sr=sr, frame_length=n_fft, hop_length=hop_length,
                                center=False)
    return float(np.mean(voiced))


def harmonicity(y: np.ndarray, sr: float, n_fft: int = N_FFT, hop_length: int = HOP_LENGTH,
                vad_db: float = VAD_DB) -> float:
    """Mean over active frames (within `vad_db` of the loudest) of the normalised autocorrelation's highest peak
    at a pitch lag (1/`FMAX_HZ` .. 1/`FMIN_HZ`): ~1 for a periodic sound, near 0 for noise; 0.0 for silence."""
    y = _waveform(y, n_fft)
    frames = librosa.util.frame(y, frame_length=n_fft, hop_length=hop_length).T  # [n, n_fft]
    energy = (frames**2).sum(1)
    keep = energy > max(energy.max() * 10 ** (vad_db / 10), SILENT_RMS**2 * n_fft)
    if not keep.any():
        return 0.0
    frames = frames[keep] - frames[keep].mean(1, keepdims=True)
    frames = frames * np.hanning(n_fft)
    spec = np.fft.rfft(frames, 2 * n_fft)
    ac = np.fft.irfft(np.abs(spec) ** 2)[:, :n_fft]
    window_ac = np.fft.irfft(np.abs(np.fft.rfft(np.hanning(n_fft), 2 * n_fft)) ** 2)[:n_fft]
    ac = ac / np.maximum(ac[:, :1], POWER_FLOOR) / np.maximum(window_ac / window_ac[0], 1e-3)  # unbias the taper
    lo, hi = int(sr / FMAX_HZ), min(n_fft // 2, int(sr / FMIN_HZ) + 1)
    return float(np.clip(ac[:, lo:hi].max(1), 0.0, 1.0).mean())


def syllable_rhythm(y: np.ndarray, sr: float) -> dict[str, float]:
    """The syllable-rate peak of the envelope's modulation spectrum: its frequency in `SYLLABLE_BAND_HZ` (Hz) and
    the band's share of the envelope's modulation power in `ENVELOPE_BAND_HZ` (its strength, 0..1). NaN rate for
    a clip under 0.5 s or without modulation (no rhythm to read)."""
    env, fps = _envelope_db(y, sr)
    amp = 10 ** (env.astype(np.float64) / 20)
    if len(amp) < 0.5 * fps or amp.max() == amp.min():  # exact: a float32 std of equal values need not be 0
        return {"syllable_rate_hz": math.nan, "syllable_strength": 0.0}
    amp = (amp - amp.mean()) * np.hanning(len(amp))
    n = max(len(amp), int(20 * fps))  # zero-padded to 0.05 Hz bins
    power = np.abs(np.fft.rfft(amp, n)) ** 2
    freqs = np.fft.rfftfreq(n, 1 / fps)
    band = (freqs >= SYLLABLE_BAND_HZ[0]) & (freqs <= SYLLABLE_BAND_HZ[1])
    wide = (freqs >= ENVELOPE_BAND_HZ[0]) & (freqs <= ENVELOPE_BAND_HZ[1])
    total = power[wide].sum()
    return {"syllable_rate_hz": float(freqs[band][np.argmax(power[band])]),
            "syllable_strength": float(power[band].sum() / total) if total > 0 else 0.0}


def structure_metrics(y: np.ndarray, sr: float, n_fft: int = N_FFT, hop_length: int = HOP_LENGTH) -> dict[str, float]:
    """All of ``STRUCTURE`` for one clip."""
    return {"voiced_fraction": voiced_fraction(y, sr, n_fft, hop_length),
            "harmonicity": harmonicity(y, sr, n_fft, hop_length),
            **syllable_rhythm(y, sr), **pause_and_speech(y, sr)}


def envelope_period(y: np.ndarray, sr: float, shortest_s: float = 0.12, longest_s: float = 1.0,
                    threshold: float = 0.3) -> float:
    """The repetition period (s) of a clip's energy envelope: the lag of the highest autocorrelation peak
    between `shortest_s` and `longest_s`, NaN when that peak is below `threshold` (no steady rhythm) or the
    clip is under two longest periods. A syllable said every 0.3 s reads 0.3."""
    env, fps = _envelope_db(y, sr)
    env = np.maximum(env, env.max() - 60.0)  # silence at a floor, not at -100 dB
    if len(env) < 2 * longest_s * fps or env.std() == 0:
        return math.nan
    x = env - env.mean()
    ac = np.correlate(x, x, "full")[len(x) - 1:]
    ac = ac / ac[0] * len(x) / (len(x) - np.arange(len(x)))  # unbiased: long lags are not penalised
    lo, hi = int(shortest_s * fps), int(longest_s * fps) + 1
    peaks = [k for k in range(max(lo, 1), min(hi, len(ac) - 1)) if ac[k] >= ac[k - 1] and ac[k] >= ac[k + 1]]
    if not peaks:
        return math.nan
    top = max(ac[k] for k in peaks)
    if top < threshold:
        return math.nan
    return next(k for k in peaks if ac[k] >= 0.9 * top) / fps  # the shortest lag as good as the best: not a multiple


def keeps_period(reference_s: float, generated_s: float, tolerance: float = 0.15) -> bool:
    """Whether a generated clip's period is within `tolerance` (relative) of the reference's, or of twice or half
    it (a rhythm counted over two syllables is the same rhythm); False when either has none."""
    if not (math.isfinite(reference_s) and math.isfinite(generated_s)):
        return False
    return any(abs(generated_s - m * reference_s) <= tolerance * m * reference_s for m in (0.5, 1.0, 2.0))


