"""Perceptual speech-quality metrics, offline, each behind an optional package.

Intrusive, on a (reference, degraded) pair, e.g. a clip and its copy synthesis through the
VQ-VAE and vocoder: ``pesq_wb`` (ITU-T P.862.2 wideband, package ``pesq``), ``stoi`` and
``estoi`` (``pystoi``), ``visqol`` (ViSQOL v3 speech mode, MOS-LQO, ``visqol-python``).
Non-intrusive, on a clip alone, e.g. an imagined one: ``dnsmos`` (DNSMOS P.835 SIG/BAK/OVRL,
not personalised, ``speechmos`` on ``onnxruntime``).

Every metric runs at 16 kHz: other rates are resampled with soxr; pairs are cut to the shorter.
What a clip needs, else it is skipped (the summaries) or raises (the per-clip functions):

* ``pesq_wb``: >= 0.25 s, and an utterance PESQ's own VAD finds (silence raises NoUtterancesError);
  PESQ and ViSQOL cannot score a silent *degraded* clip either, so they skip it;
* ``stoi``/``estoi``: ~0.4 s of reference within 40 dB of its loudest frame (pystoi returns a
  1e-5 placeholder otherwise, which we refuse); a silent degraded clip scores ~0, as it should;
* ``visqol``: >= ~0.7 s (one 20-frame patch with voice activity, else an IndexError inside);
  the polynomial speech mapping (C++ ``--use_lattice_model=false``) is pinned so the score does
  not depend on whether the optional TFLite runtime is installed (the lattice one scores lower);
* ``dnsmos``: >= ``DNSMOS_MIN_SECONDS``; the model reads 9.01 s windows and speechmos doubles a
  shorter clip until it fills one (a 1 s clip is scored on 7 windows of itself, a 3 s on 3);
  samples are clipped to [-1, 1] (speechmos refuses others), the level is not normalised.

A reference (or a DNSMOS clip) whose peak is below ``SILENT_PEAK`` is skipped by every metric.
ONNX sessions and numba use one thread, or torch's count where torch is loaded: the machines
are shared. Imports are lazy: importing this module never fails, ``available()`` says why not.
"""
from __future__ import annotations

import functools
import math
import os
import sys
import warnings
from collections.abc import Callable, Sequence

import numpy as np

SR = 16000
SILENT_PEAK = 1e-4  # -80 dBFS
DNSMOS_MIN_SECONDS = 0.5
INTRUSIVE = ("pesq_wb", "stoi", "estoi", "visqol")
_NEEDS = {"pesq_wb": "pesq", "stoi": "pystoi", "estoi": "pystoi", "visqol": "visqol",
          "dnsmos": "speechmos.dnsmos"}
_PIP = {"pesq": "pesq", "pystoi": "pystoi", "visqol": "visqol-python", "speechmos": "speechmos"}


def _threads() -> int:
    """Torch's thread count where torch is already loaded (never import it just to ask), else 1."""
    torch = sys.modules.get("torch")
    return max(1, int(torch.get_num_threads())) if torch is not None else 1


def available() -> dict[str, str | None]:
    """Per metric None if it can run, else one line saying why not, for callers to show."""
    out: dict[str, str | None] = {}
    for metric, module in _NEEDS.items():
        try:
            __import__(module)
            out[metric] = None
        except ImportError as e:
            name = (e.name or module).split(".")[0]
            out[metric] = f"{metric}: {name} is not installed (pip install {_PIP.get(name, name)})"
        except Exception as e:  # a broken binary, a bad install: still one line, never a traceback
            first = (str(e).splitlines() or [""])[0]
            out[metric] = f"{metric}: cannot import {module}: {type(e).__name__}: {first}"
    return out


def notes() -> list[str]:
    """The one-line notes of the metrics that cannot run here."""
    return [note for note in available().values() if note]


def _mono16k(wave: np.ndarray, sr: int) -> np.ndarray:
    x = np.asarray(wave, dtype=np.float64).squeeze()
    if x.ndim != 1:
        raise ValueError(f"expected a mono wave, got shape {np.shape(wave)}")
    if sr != SR:
        import soxr

        x = soxr.resample(x, sr, SR)
    return x


def _pair(ref: np.ndarray, deg: np.ndarray, sr: int) -> tuple[np.ndarray, np.ndarray]:
    """Both at 16 kHz, cut to the shorter; a silent or non-finite reference cannot be scored."""
    ref, deg = _mono16k(ref, sr), _mono16k(deg, sr)
    n = min(len(ref), len(deg))
    ref, deg = ref[:n], deg[:n]
    if not (np.all(np.isfinite(ref)) and np.all(np.isfinite(deg))):
        raise ValueError("non-finite samples")
    if n == 0 or np.max(np.abs(ref)) < SILENT_PEAK:
        raise ValueError("silent or empty reference")
    return ref, deg


def pesq_wb(ref: np.ndarray, deg: np.ndarray, sr: int) -> float:
    """P.862.2 wideband MOS-LQO (about 1.0-4.64): the usual codec-quality number."""
    from pesq import pesq

    ref, deg = _pair(ref, deg, sr)
    return float(pesq(SR, ref, deg, "wb"))


def _stoi(ref: np.ndarray, deg: np.ndarray, sr: int, extended: bool) -> float:
    from pystoi import stoi as pystoi

    ref, deg = _pair(ref, deg, sr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        score = float(pystoi(ref, deg, SR, extended=extended))
    if score == 1e-5:  # pystoi's placeholder for "fewer than 30 frames of speech"
        raise ValueError("too little speech for STOI (~0.4 s needed)")
    return score


def stoi(ref: np.ndarray, deg: np.ndarray, sr: int) -> float:
    """Short-time objective intelligibility (0-1): intelligibility, not quality."""
    return _stoi(ref, deg, sr, extended=False)


def estoi(ref: np.ndarray, deg: np.ndarray, sr: int) -> float:
    """Extended STOI (about 0-1): also sensitive to modulated (non-stationary) distortion."""
    return _stoi(ref, deg, sr, extended=True)


@functools.cache
def _visqol_api():
    from visqol import VisqolApi

    api = VisqolApi()
    api.create(mode="speech", use_lattice_model=False)
    return api


def visqol(ref: np.ndarray, deg: np.ndarray, sr: int) -> float:
    """ViSQOL v3 speech-mode MOS-LQO (1-5): a second, spectro-temporal opinion beside PESQ."""
    ref, deg = _pair(ref, deg, sr)
    api = _visqol_api()
    numba, torch = sys.modules.get("numba"), sys.modules.get("torch")
    threads = _threads()
    try:
        if numba is not None:
            numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            score = float(api.measure_from_arrays(ref, deg, SR).moslqo)
    finally:
        # numba's OpenMP layer shares torch's thread pool: setting numba's count back to its default (all cores)
        # also moved torch's, and a process sharing 2 cores with others then ran 30x slower. Keep both at ours.
        if torch is not None and torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
    if not math.isfinite(score):
        raise ValueError("ViSQOL found no speech to score")
    return score


@functools.cache
def _dnsmos_model():
    """speechmos's own DNSMOS (its features, windows and polynomials) on sessions we make,
    since it builds them with onnxruntime's default of one thread per core."""
    import onnxruntime as ort
    from speechmos import dnsmos as sm

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = _threads()
    models = os.path.join(os.path.dirname(os.path.abspath(sm.__file__)), "dnsmos_models")

    def session(name: str):
        return ort.InferenceSession(os.path.join(models, name), options, providers=["CPUExecutionProvider"])

    model = sm.DNSMOS.__new__(sm.DNSMOS)  # its __init__ would make sessions with default options
    model.primary_model_path = os.path.join(models, "sig_bak_ovr.onnx")  # not personalised
    model.onnx_sess, model.p808_onnx_sess = session("sig_bak_ovr.onnx"), session("model_v8.onnx")
    return model


def dnsmos(wave: np.ndarray, sr: int) -> dict[str, float]:
    """DNSMOS P.835 (1-5) of speech signal, background noise and overall: needs no reference,
    so it scores imagined clips too."""
    x = _mono16k(wave, sr)
    if not np.all(np.isfinite(x)):
        raise ValueError("non-finite samples")
    if len(x) < DNSMOS_MIN_SECONDS * SR or np.max(np.abs(x)) < SILENT_PEAK:
        raise ValueError(f"silent or shorter than {DNSMOS_MIN_SECONDS} s")
    out = _dnsmos_model()(np.clip(x, -1.0, 1.0).astype(np.float32), SR, False)
    return {"sig": float(out["sig_mos"]), "bak": float(out["bak_mos"]), "ovrl": float(out["ovrl_mos"])}


def _score_or_none(fn: Callable[..., float], *args) -> float | None:
    try:
        value = fn(*args)
        return value if math.isfinite(value) else None
    except Exception:  # a clip this metric cannot score is left out, never the whole summary
        return None


def _median(values: Sequence[float | None]) -> float:
    kept = [v for v in values if v is not None]
    return float(np.median(kept)) if kept else math.nan


def copy_synthesis(refs: list[np.ndarray], degs: list[np.ndarray], sr: int) -> dict[str, float]:
    """Median over clips of every intrusive metric that can run here (NaN where no clip could be
    scored), and ``n`` the number of pairs; a metric that cannot run is absent (see ``notes()``)."""
    if len(refs) != len(degs):
        raise ValueError(f"{len(refs)} references but {len(degs)} degraded clips")
    can = available()
    fns = {"pesq_wb": pesq_wb, "stoi": stoi, "estoi": estoi, "visqol": visqol}
    out: dict[str, float] = {
        m: _median([_score_or_none(fns[m], r, d, sr) for r, d in zip(refs, degs)])
        for m in INTRUSIVE
        if can[m] is None
    }
    out["n"] = len(refs)
    return out


def dnsmos_summary(waves: list[np.ndarray], sr: int) -> dict[str, float]:
    """Medians of DNSMOS SIG/BAK/OVRL over the clips it can score; empty where it cannot run."""
    if available()["dnsmos"] is not None:
        return {}
    per_clip = []
    for wave in waves:
        try:
            per_clip.append(dnsmos(wave, sr))
        except Exception:
            continue
    return {f"dnsmos_{k}": _median([s[k] for s in per_clip]) for k in ("sig", "bak", "ovrl")}
