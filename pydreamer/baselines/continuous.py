"""Continuous baselines for log-mel world models: the floor a forecast of mel steps must beat.

An utterance is ``steps [T, D]`` float: step t is ``time_downsample`` log-mel frames of ``n_mels``
bins flattened frame by frame (``D = frames * n_mels``), in one fixed unit (z-scored or dB: the
ridge and the order tie are relative to the data's scale, so nothing here depends on it). A cell is
(utterance, start t, horizon h): forecast ``x[t+h]`` having read steps ``0..t``.

* ``copy_last``    -- ``x[t+h] := x[t]``.
* ``running_mean`` -- ``x[t+h] := mean(x[0..t])``, the utterance's own level so far.
* ``ar``           -- seed 003's autoregression ``X_t = sum_{i=1..p} phi_i X_{t-i} + eps_t``, taken
  per dimension (each of the D coordinates its own ``phi_{d,1..p}`` over its own past) and with an
  intercept ``c_d``: ``x[t, d] = c_d + sum_i phi_{d,i} x[t-i, d] + eps``. Why this form: seed 003
  writes a scalar AR, and the per-dimension one is that formula D times, a floor that costs almost
  nothing; a full cross-dimension AR (``p D x D`` least squares) is too slow for the machine. The
  intercept is seed 003's form applied to ``x - mu_d`` (``c_d = mu_d (1 - sum phi)``): seed
  003's series has mean zero and ours does not (dB levels are far from 0; the z-score is one
  mean and std per utterance or corpus, not per bin), so without it every bin would be pulled
  towards 0. For ``h > 1`` the recursion is iterated on its own forecasts (the mean forecast, as
  eps has mean zero); lags before step 0 are step 0.

Fitting: per order p, least squares on train rows ``t >= p`` of each utterance (shorter ones give
no row), at most ``max_rows`` rows drawn with ``seed``, solved for all D at once through the
``(p+1) x (p+1)`` normal equations per dimension, on data centred by the train mean per dimension
(conditioning), with a tiny ridge on the lag coefficients (which keeps collinear lags, e.g. on
constant data, solvable). The order is the one with the lowest val
MSE at h = 1 over every val step ``t+1`` (t = 0..T-2, padded as in forecasting, so every order
is judged on the same cells); orders within ``ORDER_TIE`` of the best, relative to the val
targets' mean square (rounding noise, e.g. on data an AR fits exactly), go to the smaller order.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)

MEL_BASELINES: tuple[str, ...] = ("copy_last", "running_mean", "ar")
RIDGE = 1e-9  # times the mean diagonal of the (centred) lag block, per dimension
ORDER_TIE = 1e-9  # val MSE gap, over the val targets' mean square, within which the smaller order wins
_CHUNK = 4096  # train rows per normal-equation update: keeps the lag array ~[D, p+2, 4096]


def _as_steps(x: np.ndarray, dim: int | None, what: str) -> np.ndarray:
    """A finite float ``[T, D]`` array (D checked against ``dim`` when given)."""
    a = np.asarray(x)
    if a.ndim != 2 or (dim is not None and a.shape[1] != dim):
        raise ValueError(f"{what} must be [T, D={dim if dim is not None else 'D'}], got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.floating):
        a = a.astype(np.float64)
    if not np.isfinite(a).all():
        raise ValueError(f"{what} holds non-finite values")
    return a


def _ar_forecast(steps: np.ndarray, starts: np.ndarray, horizon: int, coef: np.ndarray,
                 intercept: np.ndarray) -> np.ndarray:
    """``[N, horizon, D]``: the AR iterated on its own forecasts from each start (lags < 0 are step 0)."""
    p = coef.shape[1]
    hist = np.stack([steps[np.maximum(starts - j, 0)] for j in range(p)], axis=1).astype(np.float64)  # [N, p, D]
    out = np.empty((len(starts), horizon, steps.shape[1]))
    for h in range(horizon):
        pred = intercept + np.einsum("npd,dp->nd", hist, coef)
        out[:, h] = pred
        hist = np.concatenate([pred[:, None], hist[:, :-1]], axis=1)
    return out


def _fit_order(x: np.ndarray, lengths: np.ndarray, p: int, max_rows: int,
               seed: int) -> tuple[np.ndarray, np.ndarray, int] | None:
    """Per-dimension AR(p) with intercept by least squares on the utterances of lengths ``lengths`` stacked in
    ``x [sum T, D]``: ``(coef [D, p], intercept [D], rows)``; None where no utterance has p+1 steps."""
    ends = np.cumsum(lengths)
    rows = np.concatenate([np.arange(e - n + p, e) for n, e in zip(lengths, ends) if n > p] or [np.zeros(0, int)])
    if not len(rows):
        return None  # targets with p lags inside their own utterance: none
    if len(rows) > max_rows:
        rows = np.sort(np.random.default_rng(seed).choice(rows, size=max_rows, replace=False))
    D = x.shape[1]
    mu = x.mean(0, dtype=np.float64)[:, None]
    M = np.zeros((D, p + 2, p + 2))  # per dimension, the Gram matrix of [lag 1..p, 1, target]
    for lo in range(0, len(rows), _CHUNK):
        r = rows[lo:lo + _CHUNK]
        L = np.empty((D, p + 2, len(r)))  # lag-major, so one BLAS product per dimension
        for i in range(1, p + 1):
            L[:, i - 1] = x[r - i].T - mu
        L[:, p], L[:, p + 1] = 1.0, x[r].T - mu
        M += L @ L.transpose(0, 2, 1)
    A, b = M[:, :p + 1, :p + 1], M[:, :p + 1, p + 1]
    diag = np.einsum("dii->di", A[:, :p, :p])
    lam = RIDGE * diag.mean(1) + 1e-12 * len(rows)
    A[:, np.arange(p), np.arange(p)] += lam[:, None]
    w = np.linalg.solve(A, b[:, :, None])[:, :, 0]
    coef = w[:, :p]
    return coef, w[:, p] + mu[:, 0] * (1.0 - coef.sum(1)), len(rows)  # the intercept back in x's own unit


def _val_mse(val: list[np.ndarray], coef: np.ndarray, intercept: np.ndarray) -> float:
    """Mean squared h = 1 error over every val step t+1, t = 0..T-2 (nan without one)."""
    sq, n = 0.0, 0
    for u in val:
        if len(u) < 2:
            continue
        pred = _ar_forecast(u, np.arange(len(u) - 1), 1, coef, intercept)[:, 0]
        sq += float(((pred - u[1:]) ** 2).sum())
        n += pred.size
    return sq / n if n else float("nan")


@dataclass
class ContinuousBaselines:
    """copy_last, running_mean and a per-dimension AR(p) fitted on train, p chosen on val."""

    order: int  # AR order p, chosen on val
    coef: np.ndarray  # [D, p]: coef[:, i-1] multiplies step t+1-i in the forecast of t+1
    intercept: np.ndarray  # [D]
    val_mse: dict[int, float] = field(default_factory=dict)  # h = 1, per order tried (nan: not fitted/no val)
    train_rows: int = 0  # rows the chosen order was fitted on

    @property
    def dim(self) -> int:
        return int(self.coef.shape[0])

    @classmethod
    def fit(cls, train: Sequence[np.ndarray], val: Sequence[np.ndarray], orders: Sequence[int] = (1, 2, 3, 4, 6, 8),
            max_rows: int = 200_000, seed: int = 0) -> "ContinuousBaselines":
        """train/val: utterances, each [T, D] float. Fit the AR of each order on train by least squares (rows
        subsampled with `seed` to at most max_rows), pick the order with the lowest val MSE at h = 1."""
        if len(train) == 0:
            raise ValueError("no train utterances")
        orders = sorted({int(p) for p in orders})
        if not orders or orders[0] < 1:
            raise ValueError(f"orders must be a non-empty set of integers >= 1, got {orders}")
        if max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {max_rows}")
        first = _as_steps(train[0], None, "train utterance 0")
        D = first.shape[1]
        train = [first] + [_as_steps(u, D, f"train utterance {i}") for i, u in enumerate(train[1:], 1)]
        val = [_as_steps(u, D, f"val utterance {i}") for i, u in enumerate(val)]
        x, lengths = np.concatenate(train), np.array([len(u) for u in train])
        fits, val_mse = {}, {}
        for p in orders:
            fitted = _fit_order(x, lengths, p, max_rows, seed)
            if fitted is None:
                log.info("continuous baselines: no train utterance longer than %d steps; AR(%d) skipped", p, p)
                val_mse[p] = float("nan")
                continue
            fits[p] = fitted
            val_mse[p] = _val_mse(val, fitted[0], fitted[1])
        if not fits:
            raise ValueError(f"no train utterance has more than {orders[0]} steps: cannot fit any AR order {orders}")
        scored = {p: m for p, m in val_mse.items() if p in fits and np.isfinite(m)}
        if scored:
            targets = [u[1:] for u in val if len(u) > 1]
            energy = float(np.mean([np.mean(np.square(u, dtype=np.float64)) for u in targets]))
            best = min(scored.values())
            order = min(p for p, m in scored.items() if m <= best + ORDER_TIE * (best + energy))
        else:  # no val step: no evidence, so the smallest order fitted
            order = min(fits)
            log.warning("continuous baselines: no val step to choose the AR order; took %d", order)
        coef, intercept, rows = fits[order]
        log.info("continuous baselines: AR order %d from %s (val MSE at h=1 per order), %d train rows",
                 order, {p: round(m, 5) for p, m in val_mse.items()}, rows)
        return cls(order, coef, intercept, val_mse, rows)

    def forecast(self, steps: np.ndarray, starts: np.ndarray, horizon: int) -> dict[str, np.ndarray]:
        """After reading steps 0..t of one utterance (steps [T, D]) for each start t in `starts` [N], the mean
        forecasts [N, horizon, D] of steps t+1..t+horizon, one array per name in MEL_BASELINES:
        copy_last = steps[t] repeated; running_mean = mean of steps[0..t]; ar = the AR recursion iterated on its
        own forecasts for h > 1 (lags before step 0 padded with step 0)."""
        if int(horizon) != horizon or horizon < 1:
            raise ValueError(f"horizon must be an integer >= 1, got {horizon}")
        horizon = int(horizon)
        x = _as_steps(steps, self.dim, "steps")
        t = np.asarray(starts).ravel()
        if t.size and not np.issubdtype(t.dtype, np.integer):
            raise ValueError(f"starts must be integers, got dtype {t.dtype}")
        t = t.astype(np.int64)
        if t.size and (t.min() < 0 or t.max() >= len(x)):
            raise ValueError(f"starts must lie in [0, {len(x)}) for an utterance of {len(x)} steps")
        shape = (len(t), horizon, self.dim)
        mean = np.cumsum(x, axis=0, dtype=np.float64)[t] / (t[:, None] + 1.0)
        return {
            "copy_last": np.broadcast_to(x[t].astype(np.float64)[:, None], shape).copy(),
            "running_mean": np.broadcast_to(mean[:, None], shape).copy(),
            "ar": _ar_forecast(x, t, horizon, self.coef, self.intercept),
        }

    def to_dict(self) -> dict:
        """JSON-ready record: the order, the val MSE per order tried (None: not fitted or no val), the AR itself."""
        return {
            "order": self.order,
            "val_mse": {str(p): (float(m) if np.isfinite(m) else None) for p, m in self.val_mse.items()},
            "train_rows": self.train_rows,
            "coef": self.coef.tolist(),
            "intercept": self.intercept.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "ContinuousBaselines":
        """The inverse of ``to_dict``, so a fit can be cached as JSON."""
        val_mse = {int(p): (float("nan") if m is None else float(m)) for p, m in d.get("val_mse", {}).items()}
        return cls(int(d["order"]), np.asarray(d["coef"], np.float64), np.asarray(d["intercept"], np.float64),
                   val_mse, int(d.get("train_rows", 0)))


def mel_step_errors(pred: np.ndarray, true: np.ndarray, n_mels: int) -> tuple[np.ndarray, np.ndarray]:
    """pred, true [..., D] in dB (D = frames_per_step * n_mels): per step, the mean squared error over its D values
    (dB^2) and the log-spectral distance (dB): per frame sqrt(mean over the n_mels bins of the squared difference),
    averaged over the step's frames. Returns two arrays of shape [...]."""
    p, y = np.asarray(pred, np.float64), np.asarray(true, np.float64)
    if p.shape != y.shape:
        raise ValueError(f"pred and true must have the same shape, got {p.shape} and {y.shape}")
    if n_mels < 1 or p.ndim == 0 or p.shape[-1] == 0 or p.shape[-1] % n_mels:
        raise ValueError(f"last dimension {p.shape[-1:]} must be a positive multiple of n_mels={n_mels}")
    sq = (p - y) ** 2
    frames = sq.reshape(*sq.shape[:-1], sq.shape[-1] // n_mels, n_mels)
    return sq.mean(-1), np.sqrt(frames.mean(-1)).mean(-1)
