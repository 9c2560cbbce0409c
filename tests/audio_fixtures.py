"""Speech-like test audio made on the spot: voiced syllables (harmonics under formant-like
envelopes) separated by pauses, so tests need no recordings and no network."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf


def speechlike(seconds: float = 2.0, rate: int = 16000, seed: int = 0, pitch: float = 140.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    out = np.zeros(n, np.float32)
    t = 0
    while t < n:
        dur = int(rate * rng.uniform(0.12, 0.3))
        seg = np.arange(min(dur, n - t)) / rate
        f0 = pitch * rng.uniform(0.85, 1.2)
        wave = sum(np.sin(2 * np.pi * f0 * k * seg) / k * np.exp(-((f0 * k - rng.uniform(300, 2500)) / 900) ** 2)
                   for k in range(1, 30))
        env = np.hanning(len(seg))
        out[t:t + len(seg)] = 0.3 * wave * env
        t += len(seg) + int(rate * rng.uniform(0.03, 0.15))
    out += 1e-3 * rng.standard_normal(n).astype(np.float32)
    return out.astype(np.float32)


def write_clip(path: Path, seconds: float = 2.0, seed: int = 0, rate: int = 16000, channels: int = 1,
               fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    wave = speechlike(seconds, rate, seed, pitch=100 + 15 * (seed % 8))
    data = np.stack([wave] * channels, axis=1) if channels > 1 else wave
    sf.write(str(path), data, rate, format=fmt)
    return path
