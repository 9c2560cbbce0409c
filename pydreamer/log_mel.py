"""Forecasts scored as log-mel (dB): one scale on which every world model, token or continuous, can be compared.

Token NLLs only compare models over the same tokens. Here each forecast of step t+h after steps 0..t becomes the
step's `time_downsample` log-mel frames and is scored against the true frames (the prepared `mels/` shards, in
dB): per step the mean squared error over its frames and bins (dB^2) and the log-spectral distance (dB: per frame
the root mean square over the mel bins, averaged over the step's frames). A token model's forecast is the mean of
`samples` (8) draws of its tokens (each step from its forecast distribution), each decoded by the run's own
VQ-VAE with the utterance's true tokens up to t before them (`context` steps, what the decoder's convolutions
see) and the draw's last step repeated after them: the expectation over its samples, as a log-mel model's
forecast is its mean (both what LSD and MSE reward; a single sharp spectrum that is slightly off scores worse
than a blur). Its most probable tokens decoded the same way are shown beside (`most_probable_tokens`). Beside
it, on the very same cells: the continuous baselines (`baselines/continuous.py`: copy-last step, the
utterance's running mean, a per-bin autoregression fitted on train with its order chosen on val) and, as a
floor no token model can pass, the true tokens decoded the same way (`true_tokens`: the tokenizer's own error).
Margins are against the best baseline per horizon, with the bootstrap interval over utterances of `margins.py`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from pydreamer.baselines.continuous import MEL_BASELINES, ContinuousBaselines, mel_step_errors
from pydreamer.forecast import CellSums
from pydreamer.margins import best_baselines, margin
from pydreamer.models.functions import sample_index

MEASURES = ("lsd", "mse")
FLOOR = "true_tokens"
MOST_PROBABLE = "most_probable_tokens"  # a token model's sharp forecast, shown beside its mean; not a baseline
NOT_BASELINES = ("model", FLOOR, MOST_PROBABLE)


def true_steps(db: np.ndarray, n_steps: int, frames_per_step: int) -> np.ndarray:
    """An utterance's log-mel (dB) [F, n_mels] as steps [n_steps, frames_per_step * n_mels] (the last frame
    repeated where the last step is short, as the tokenizer pads it)."""
    frames = n_steps * frames_per_step
    db = np.asarray(db, np.float32)[:frames]
    if len(db) < frames:
        db = np.concatenate([db, np.repeat(db[-1:], frames - len(db), 0)])
    return db.reshape(n_steps, -1)


@dataclass
class LogMelScorer:
    """Collects per utterance and horizon the summed errors of the model, the baselines and the floor."""

    codec: object  # tokenizer.codec.TokenCodec: decodes token steps to z-scored log-mel
    baselines: ContinuousBaselines
    horizons: int
    n_utterances: int
    context: int = 8
    samples: int = 8
    seed: int = 0
    names: list[str] = field(default_factory=lambda: ["model", *MEL_BASELINES, FLOOR, MOST_PROBABLE])

    def __post_init__(self):
        self.generator = torch.Generator().manual_seed(self.seed)
        self.scored: set[str] = set()  # the predictors this scorer has seen (a log-mel model has no most probable tokens)
        shape = (len(MEASURES), len(self.names), self.n_utterances, self.horizons)
        self.errors = np.zeros(shape)
        self.cells = np.zeros((self.n_utterances, self.horizons))

    def _decode(self, left: np.ndarray, ahead: np.ndarray, norm: tuple[float, float]) -> np.ndarray:
        """Steps `ahead` [N, H, G] after `left` [N, C, G], decoded to dB steps [N, H, ds * n_mels]."""
        N, H, _ = ahead.shape
        right = np.repeat(ahead[:, -1:], self.context, 1)
        z = self.codec.decode(np.concatenate([left, ahead, right], 1))  # [N, L * ds, n_mels]
        ds = self.codec.frames_per_step
        z = z[:, left.shape[1] * ds:(left.shape[1] + H) * ds]
        return self.codec.to_db(z, *norm).reshape(N, H, -1)

    def add(self, u: int, tokens: np.ndarray, db: np.ndarray, norm: tuple[float, float], starts: np.ndarray,
            probs=None, predicted: np.ndarray | None = None) -> None:
        """Utterance u: its tokens [T, G], true log-mel (dB) [F, n_mels], the (mean, std) that un-z-scores its
        decoded mel, the start steps, and the model's forecasts from them: token distributions [N, H, G, K] (a
        tensor: its most probable tokens are decoded) or, from a model of log-mel, the steps in dB [N, H, D]."""
        T, H, C = len(tokens), self.horizons, self.context
        truth = true_steps(db, T, self.codec.frames_per_step)  # [T, D]
        target = starts[:, None] + np.arange(1, H + 1)[None]  # [N, H]
        valid = target < T
        true = truth[np.minimum(target, T - 1)]  # [N, H, D]
        lag = np.clip(starts[:, None] - C + 1 + np.arange(C)[None], 0, T - 1)
        left = tokens[lag]
        if predicted is not None:
            predictions = {"model": np.asarray(predicted, np.float32).reshape(len(starts), H, -1)}
        else:  # the mean of `samples` token draws decoded (what LSD and MSE reward), and the most probable tokens
            probs = probs.float().cpu()
            draws = [self._decode(left, sample_index(probs, self.generator).numpy(), norm) for _ in range(self.samples)]
            predictions = {"model": np.mean(draws, 0),
                           MOST_PROBABLE: self._decode(left, probs.argmax(-1).numpy(), norm)}
        predictions.update(self.baselines.forecast(truth, starts, H))
        predictions[FLOOR] = self._decode(left, tokens[np.minimum(target, T - 1)], norm)
        n_mels = self.codec.settings.n_mels
        for p, name in enumerate(self.names):
            if name not in predictions:  # a model of log-mel steps has no most probable tokens
                continue
            self.scored.add(name)
            mse, lsd = mel_step_errors(predictions[name], true, n_mels)
            for m, err in enumerate((lsd, mse)):
                self.errors[m, p, u] += np.where(valid, err, 0.0).sum(0)
        self.cells[u] += valid.sum(0)

    def sums(self, measure: str) -> CellSums:
        """One measure as the cell sums `margins.py` reads (its `bits`: summed dB or dB^2; the floor left out)."""
        m = MEASURES.index(measure)
        keep = [i for i, n in enumerate(self.names) if n not in NOT_BASELINES[1:]]
        errors = self.errors[m][keep]
        empty = np.zeros_like(errors)
        return CellSums([self.names[i] for i in keep], errors, empty, self.cells, empty, empty, np.zeros_like(self.cells))

    def report(self, seed: int = 0) -> dict:
        """Per measure and horizon: each predictor's mean error, the best baseline, the model's margin to it
        (best baseline's error minus the model's: positive when the model is closer) with its 95% interval."""
        out: dict = {"horizons": list(range(1, self.horizons + 1)), "cells": self.cells.sum(0).tolist(),
                     "baselines": self.baselines.to_dict(), "context_steps": self.context}
        with np.errstate(invalid="ignore", divide="ignore"):
            for m, measure in enumerate(MEASURES):
                means = {n: (self.errors[m, p].sum(0) / self.cells.sum(0)) for p, n in enumerate(self.names)
                         if n in self.scored}
                sums = self.sums(measure)
                table = {n: {"nll": means[n]} for n in sums.names}
                best = best_baselines(table)
                mg = margin(sums, best, seed=seed)
                out[measure] = {"mean": {n: v.tolist() for n, v in means.items()}, "best": best,
                                "margin": mg["margin"].tolist(), "lo": mg["lo"].tolist(), "hi": mg["hi"].tolist()}
        return out


def log_mel_metrics(report: dict, split: str) -> dict[str, float]:
    """`{split}/log_mel/{lsd,mse}_h{h}` of the model, `.../{name}/...` of the baselines and the floor, and the
    margins to the best baseline: what MLflow lines up across runs, token and continuous models alike."""
    metrics = {}
    for measure in MEASURES:
        for name, values in report[measure]["mean"].items():
            prefix = f"{split}/log_mel" if name == "model" else f"{split}/log_mel/{name}"
            metrics.update({f"{prefix}/{measure}_h{h}": v for h, v in zip(report["horizons"], values)
                            if np.isfinite(v)})
        for part, values in (("margin", report[measure]["margin"]), ("margin_lo", report[measure]["lo"]),
                             ("margin_hi", report[measure]["hi"])):
            metrics.update({f"{split}/log_mel/{part}/{measure}_h{h}": v
                            for h, v in zip(report["horizons"], values) if np.isfinite(v)})
    return metrics


def log_mel_table(report: dict, horizons: tuple[int, ...] = (1, 2, 5, 10, 15)) -> str:
    """The report as markdown: LSD and MSE per horizon of the model, each baseline and the floor."""
    hs = [h for h in horizons if h <= len(report["horizons"])]
    lines = ["| predictor | " + " | ".join(f"LSD h = {h}" for h in hs) + " | " +
             " | ".join(f"MSE h = {h}" for h in hs) + " |", "|---" * (1 + 2 * len(hs)) + "|"]
    for name in report["lsd"]["mean"]:
        cells = [f"{report[m]['mean'][name][h - 1]:.2f}" for m in MEASURES for h in hs]
        label = {"model": "**model** (mean forecast)", FLOOR: "true tokens decoded (the tokenizer's floor)",
                 MOST_PROBABLE: "model's most probable tokens (a sharp forecast)"}.get(name, name)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    for m in MEASURES:
        r = report[m]
        cells = [f"{r['margin'][h - 1]:+.2f} [{r['lo'][h - 1]:+.2f}, {r['hi'][h - 1]:+.2f}] vs {r['best'][h - 1]}"
                 for h in hs]
        lines.append(f"| margin {m.upper()} (best baseline - model, 95% CI) | "
                     + " | ".join(cells if m == "lsd" else [""] * len(hs)) + " | "
                     + " | ".join([""] * len(hs) if m == "lsd" else cells) + " |")
    return "\n".join(lines)
