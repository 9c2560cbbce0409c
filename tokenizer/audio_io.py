"""Decoding audio files into clean 16 kHz mono waveforms, or a reason why a file cannot be used.

Every problem a real corpus has (corrupt or empty files, silence, NaN samples, many
channels, hour-long recordings) becomes either a fix (downmix, cut) noted on the
utterance, or an `UnusableAudio` whose message is the reason written to the manifest.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")


class UnusableAudio(Exception):
    """A file that cannot become an utterance; the message is the reason shown to the user."""


def read_audio(path: Path | str, max_seconds: float = 0.0, long_files: str = "cut") -> tuple[np.ndarray, int, list[str]]:
    """Read a file as float32 [samples, channels] with soundfile (mp3 included).

    Very long files are cut to `max_seconds` without reading the rest (memory stays
    bounded) or refused when `long_files == "skip"`. Returns (samples, rate, notes).
    """
    notes: list[str] = []
    try:
        with sf.SoundFile(str(path)) as f:
            rate, frames = f.samplerate, f.frames
            limit = int(max_seconds * rate) if max_seconds and max_seconds > 0 else 0
            if limit and frames > limit:
                if long_files == "skip":
                    raise UnusableAudio(f"too long ({frames / rate:.1f} s > max_seconds {max_seconds:g})")
                notes.append(f"cut from {frames / rate:.1f} s to {max_seconds:g} s")
                data = f.read(limit, dtype="float32", always_2d=True)
            else:
                data = f.read(dtype="float32", always_2d=True)
    except UnusableAudio:
        raise
    except Exception as e:  # libsndfile's errors are plain RuntimeErrors with a good message
        raise UnusableAudio(f"cannot decode: {str(e).strip() or type(e).__name__}") from None
    return data, rate, notes


def to_mono_16k(data: np.ndarray, rate: int, sample_rate: int, silence_db: float) -> tuple[np.ndarray, list[str]]:
    """Check and normalise decoded samples: finite, not empty, not silent, mono, resampled."""
    notes: list[str] = []
    if data.size == 0:
        raise UnusableAudio("empty (no samples)")
    if not np.isfinite(data).all():
        raise UnusableAudio("contains NaN or infinite samples")
    if data.ndim == 2 and data.shape[1] > 1:
        notes.append(f"downmixed from {data.shape[1]} channels")
        data = data.mean(axis=1)
    data = data.reshape(-1).astype(np.float32)
    peak = float(np.abs(data).max())
    peak_db = 20 * np.log10(peak) if peak > 0 else -np.inf
    if peak_db < silence_db:
        raise UnusableAudio(f"all silent (peak {peak_db:.1f} dBFS < silence_db {silence_db:g})")
    if rate != sample_rate:
        data = AF.resample(torch.from_numpy(data), rate, sample_rate).numpy()
    return data, notes


def load_audio(
    path: Path | str,
    sample_rate: int = 16000,
    max_seconds: float = 0.0,
    long_files: str = "cut",
    silence_db: float = -60.0,
) -> tuple[np.ndarray, list[str]]:
    """A usable mono waveform at `sample_rate` plus notes on what was fixed; raises UnusableAudio."""
    data, rate, notes = read_audio(path, max_seconds, long_files)
    wave, more = to_mono_16k(data, rate, sample_rate, silence_db)
    return wave, notes + more


def write_wav(path: Path | str, wave: np.ndarray, sample_rate: int) -> None:
    """16-bit PCM wav, peak-limited so a loud dream does not clip into noise."""
    wave = np.asarray(wave, dtype=np.float32)
    peak = float(np.abs(wave).max()) if wave.size else 0.0
    if peak > 0.99:
        wave = wave * (0.99 / peak)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), wave, sample_rate, subtype="PCM_16")
