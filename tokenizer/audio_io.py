"""Decoding audio files into clean 16 kHz mono waveforms, or a reason why a file cannot be used.

Every problem a real corpus has (corrupt or empty files, silence, NaN samples, many
channels, hour-long recordings) becomes either a fix (downmix, cut) noted on the
utterance, or an `UnusableAudio` whose message is the reason written to the manifest.
"""
from __future__ import annotations

import errno
import os
import re
import stat
import struct
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")
MIN_SAMPLE_RATE = 4000  # below this a header is damaged or the file is not speech (telephone audio is 8 kHz)


class UnusableAudio(Exception):
    """A file that cannot become an utterance; the message is the reason shown to the user."""


def read_audio(path: Path | str, max_seconds: float = 0.0, long_files: str = "cut") -> tuple[np.ndarray, int, list[str]]:
    """Read a file as float32 [samples, channels] with soundfile (mp3 included).

    Very long files are cut to `max_seconds` without reading the rest (memory stays
    bounded) or refused when `long_files == "skip"`. Returns (samples, rate, notes).
    """
    notes: list[str] = []
    problem = file_problem(path) or _text_file(path)
    if problem:
        raise UnusableAudio(problem)
    try:
        with sf.SoundFile(str(path)) as f:
            rate, frames = f.samplerate, f.frames
            if rate < MIN_SAMPLE_RATE:
                raise UnusableAudio(f"sample rate {rate} Hz is implausible for speech (at least {MIN_SAMPLE_RATE} Hz "
                                    "expected; a damaged header?)")
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
    except Exception as e:  # libsndfile's errors are plain RuntimeErrors
        raise UnusableAudio(_decode_reason(path, e)) from None
    declared = wav_declared_frames(path)
    if declared is not None and declared > frames:
        notes.append(f"truncated: the header declares {declared / rate:.2f} s, the file holds {frames / rate:.2f} s "
                     "(kept what is there)")
    return data, rate, notes


def file_problem(path: Path | str) -> str | None:
    """Why `path` cannot be opened as a file at all (a dangling or looping symlink, a folder, a pipe,
    no bytes, no permission), in words; None when it can."""
    path = str(path)
    try:
        st = os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "symlink loop (the link leads back to itself)"
        if os.path.islink(path):
            return f"dangling symlink (points to {os.readlink(path)}, which does not exist)"
        if e.errno == errno.ENOENT:
            return "file does not exist (removed while the corpus was read?)"
        return f"cannot open: {e.strerror or e}"
    if stat.S_ISDIR(st.st_mode):
        return "a folder named like an audio file, not a file"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file (a pipe, socket or device)"
    if st.st_size == 0:
        return "empty file (0 bytes)"
    if not os.access(path, os.R_OK):
        return "cannot open: permission denied"
    return None


def _text_file(path: Path | str) -> str | None:
    """A text file (a README, a listing, an HTML error page) saved with an audio extension, said as such
    before a decoder prints its own complaints about it."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError as e:
        return f"cannot open: {e.strerror or e}"
    if head.startswith((b"RIFF", b"fLaC", b"OggS", b"ID3")):
        return None
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if text and all(c.isprintable() or c in "\r\n\t" for c in text):
        return "not audio: a text file with an audio extension"
    return None


def _decode_reason(path: Path | str, error: Exception) -> str:
    """libsndfile's message without the path (the manifest names the file)."""
    message = re.sub(r"^Error opening '.*?': ", "", str(error).strip()) or type(error).__name__
    if "possibly a pipe" in message or "System error" in message:  # libsndfile's words for "cannot parse this"
        message = "format not recognised"
    return f"cannot decode: {message.rstrip('.')}"


def wav_declared_frames(path: Path | str) -> int | None:
    """Frames a WAV header's data chunk declares (None for other formats, streamed WAVs, or no data chunk),
    so a file cut short in copying can be noted; libsndfile quietly reads what is there."""
    try:
        with open(path, "rb") as f:
            head = f.read(65536)
            size = os.fstat(f.fileno()).st_size
    except OSError:
        return None
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    pos, block_align = 12, 0
    while pos + 8 <= len(head):
        chunk, length = head[pos:pos + 4], struct.unpack("<I", head[pos + 4:pos + 8])[0]
        if chunk == b"fmt " and pos + 22 <= len(head):
            block_align = struct.unpack("<H", head[pos + 20:pos + 22])[0]
        if chunk == b"data":
            if not block_align or length in (0, 0xFFFFFFFF) or length <= size - (pos + 8):
                return None
            return length // block_align
        pos += 8 + length + (length & 1)
    return None


def to_mono_16k(data: np.ndarray, rate: int, sample_rate: int, silence_db: float,
                min_samples: int = 0) -> tuple[np.ndarray, list[str]]:
    """Check and normalise decoded samples: finite, not empty, not silent, not constant, mono, resampled,
    at least `min_samples` long at `sample_rate` (one analysis window)."""
    notes: list[str] = []
    if data.size == 0:
        raise UnusableAudio("empty (no samples)")
    if not np.isfinite(data).all():
        raise UnusableAudio("contains NaN or infinite samples")
    if data.ndim == 2 and data.shape[1] > 1:
        notes.append(f"downmixed from {data.shape[1]} channels")
        data = data.mean(axis=1)
    data = data.reshape(-1).astype(np.float32)
    if len(data) * sample_rate < min_samples * rate:
        raise UnusableAudio(f"too short ({len(data)} samples at {rate} Hz = {len(data) / rate * 1000:.1f} ms; at least "
                            f"{min_samples / sample_rate * 1000:.0f} ms, one analysis window, is needed)")
    peak = float(np.abs(data).max())
    peak_db = 20 * np.log10(peak) if peak > 0 else -np.inf
    if peak_db < silence_db:
        raise UnusableAudio(f"all silent (peak {peak_db:.1f} dBFS < silence_db {silence_db:g})")
    swing = float(np.abs(data - data.mean()).max())
    if swing <= 0 or 20 * np.log10(swing) < silence_db:
        raise UnusableAudio(f"constant (a DC level of {float(data.mean()):.3g} and no sound)")
    if rate != sample_rate:
        data = AF.resample(torch.from_numpy(data), rate, sample_rate).numpy()
    return data, notes


def load_audio(
    path: Path | str,
    sample_rate: int = 16000,
    max_seconds: float = 0.0,
    long_files: str = "cut",
    silence_db: float = -60.0,
    min_samples: int = 0,
) -> tuple[np.ndarray, list[str]]:
    """A usable mono waveform at `sample_rate` plus notes on what was fixed; raises UnusableAudio."""
    data, rate, notes = read_audio(path, max_seconds, long_files)
    wave, more = to_mono_16k(data, rate, sample_rate, silence_db, min_samples)
    return wave, notes + more


def write_wav(path: Path | str, wave: np.ndarray, sample_rate: int) -> None:
    """16-bit PCM wav, peak-limited so a loud dream does not clip into noise."""
    wave = np.asarray(wave, dtype=np.float32)
    peak = float(np.abs(wave).max()) if wave.size else 0.0
    if peak > 0.99:
        wave = wave * (0.99 / peak)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), wave, sample_rate, subtype="PCM_16")
