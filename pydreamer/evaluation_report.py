"""What `evaluate` shows and logs: the per-horizon table, its picture, the MLflow metrics and summary.json.

One owner for the evaluation's names: `{split}/nll_h{h}`, `{split}/baseline/{name}/nll_h{h}`,
`{split}/best_baseline/nll_h{h}`, `{split}/margin_h{h}` (+ `_lo`, `_hi`), `{split}/bits_per_second_h{h}`,
and the same under `{split}/voiced/` for the cells whose target step is voiced. Every per-horizon family is also
a curve, `horizon_curves`: `{split}/nll_by_horizon` with the horizon as its step, so MLflow draws NLL against
horizon and overlays runs (the `_h{h}` scalars stay, for filtering and sorting runs).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from pydreamer.forecast import CellSums
from pydreamer.margins import best_baselines, curves, margin

SHOW = (1, 5, 15)
_PER_HORIZON = re.compile(r"^(.+)_h(\d+)$")


def horizon_curves(metrics: dict[str, float]) -> dict[str, dict[int, float]]:
    """Every `{family}_h{h}` metric as the curve `{family}_by_horizon`: {h: value}, h the step MLflow draws it at
    (`test/nll_h3` -> `test/nll_by_horizon` at step 3, `test/baseline/bigram/nll_h3` ->
    `test/baseline/bigram/nll_by_horizon`, `test/log_mel/lsd_h3` -> `test/log_mel/lsd_by_horizon`)."""
    curves: dict[str, dict[int, float]] = {}
    for key, value in metrics.items():
        m = _PER_HORIZON.match(key)
        if m:
            curves.setdefault(f"{m.group(1)}_by_horizon", {})[int(m.group(2))] = value
    return curves


class Scores:
    """All cells and voiced cells: the curves of every predictor, the best baseline and the margin to it."""

    def __init__(self, sums: CellSums, seed: int = 0):
        self.horizons = sums.cells.shape[1]
        self.parts = {}
        for voiced in (False, True):
            table = curves(sums, voiced)
            best = best_baselines(table)
            self.parts[voiced] = (table, best, margin(sums, best, voiced, seed=seed))

    def metrics(self, split: str, bits_per_step: float, steps_per_second: float) -> dict[str, float]:
        out = {}
        for voiced, (table, best, m) in self.parts.items():
            pre = f"{split}/voiced" if voiced else split
            for h in range(self.horizons):
                k = h + 1
                out[f"{pre}/nll_h{k}"] = table["model"]["nll"][h]
                out[f"{pre}/acc_h{k}"] = table["model"]["acc"][h]
                for name, r in table.items():
                    if name != "model":
                        out[f"{pre}/baseline/{name}/nll_h{k}"] = r["nll"][h]
                        out[f"{pre}/baseline/{name}/acc_h{k}"] = r["acc"][h]
                if best[h]:
                    out[f"{pre}/best_baseline/nll_h{k}"] = table[best[h]]["nll"][h]
                out[f"{pre}/margin_h{k}"] = m["margin"][h]
                out[f"{pre}/margin_lo_h{k}"] = m["lo"][h]
                out[f"{pre}/margin_hi_h{k}"] = m["hi"][h]
                if not voiced:
                    out[f"{pre}/bits_per_second_h{k}"] = table["model"]["nll"][h] * bits_per_step * steps_per_second
        return {k: float(v) for k, v in out.items() if np.isfinite(v)}

    def summary(self, bits_per_step: float, steps_per_second: float) -> dict:
        """JSON-ready: every curve, the best baseline and margin per horizon, also in bits per second."""
        out = {}
        for voiced, (table, best, m) in self.parts.items():
            rate = bits_per_step * steps_per_second
            out["voiced" if voiced else "all"] = {
                "results": {n: {k: [float(x) for x in v] for k, v in r.items()} for n, r in table.items()},
                "best_baseline": list(best),
                "margin": {k: [float(x) for x in m[k]] for k in ("margin", "lo", "hi")},
                "model_bits_per_second": [float(x) * rate for x in table["model"]["nll"]],
            }
        return out

    def csv(self) -> str:
        table, best, m = self.parts[False]
        vt, vbest, vm = self.parts[True]
        head = ["horizon"] + [f"{n}_{q}" for n in table for q in ("nll", "acc")] + \
            ["best_baseline", "margin", "margin_lo", "margin_hi", "voiced_model_nll", "voiced_best_baseline",
             "voiced_margin", "voiced_margin_lo", "voiced_margin_hi", "cells", "voiced_cells"]
        rows = [",".join(head)]
        for h in range(self.horizons):
            vals = [str(h + 1)] + [f"{r[q][h]:.4f}" for r in table.values() for q in ("nll", "acc")]
            vals += [best[h]] + [f"{m[k][h]:.4f}" for k in ("margin", "lo", "hi")]
            vals += [f"{vt['model']['nll'][h]:.4f}", vbest[h]] + [f"{vm[k][h]:.4f}" for k in ("margin", "lo", "hi")]
            vals += [str(int(table["model"]["cells"][h])), str(int(vt["model"]["cells"][h]))]
            rows.append(",".join(vals))
        return "\n".join(rows) + "\n"

    def table(self, voiced: bool = False, rate: float | None = None) -> str:
        """Markdown: every predictor, the best baseline and the model's margin to it with its interval."""
        table, best, m = self.parts[voiced]
        hs = [h for h in SHOW if h <= self.horizons] or [self.horizons]
        lines = ["| predictor | " + " | ".join(f"NLL h={h} | acc h={h}" for h in hs) + " |",
                 "|---|" + "---|---|" * len(hs)]
        def row(label: str, cells) -> str:
            return f"| {label} | " + " | ".join(c for h in hs for c in cells(h - 1)) + " |"

        for name, r in table.items():
            lines.append(row(name, lambda i, r=r: (f"{r['nll'][i]:.3f}", f"{r['acc'][i]:.3f}")))
        lines.append(row("best baseline", lambda i: (f"{table[best[i]]['nll'][i]:.3f} ({best[i]})",
                                                     f"{table[best[i]]['acc'][i]:.3f}") if best[i] else ("-", "-")))
        lines.append(row("margin to best, 95% CI", lambda i: (
            f"{m['margin'][i]:+.3f} [{m['lo'][i]:+.3f}, {m['hi'][i]:+.3f}]", "")))
        if rate is not None:
            lines.append(row("model, bits per second", lambda i: (f"{table['model']['nll'][i] * rate:.0f}", "")))
        return "\n".join(lines)

    def plot(self, path: Path, title: str) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        table, best, m = self.parts[False]
        _, _, vm = self.parts[True]
        h = np.arange(1, self.horizons + 1)
        fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
        for name, r in table.items():
            style = dict(lw=2.5, color="k") if name == "model" else dict(lw=1.2, ls="--")
            axes[0].plot(h, r["nll"], label=name, **style)
            axes[1].plot(h, r["acc"], label=name, **style)
        best_nll = [table[b]["nll"][i] if b else np.nan for i, b in enumerate(best)]
        axes[0].plot(h, best_nll, color="r", lw=1, marker="o", ms=3, label="best baseline")
        axes[2].axhline(0, color="0.5", lw=0.8)
        axes[2].plot(h, m["margin"], color="k", label="all cells")
        axes[2].fill_between(h, m["lo"], m["hi"], color="k", alpha=0.15)
        if np.isfinite(vm["margin"]).any():
            axes[2].plot(h, vm["margin"], color="tab:orange", label="voiced cells")
            axes[2].fill_between(h, vm["lo"], vm["hi"], color="tab:orange", alpha=0.15)
        axes[0].set(xlabel="horizon (steps)", ylabel="NLL (bits per token)", title="predictive NLL")
        axes[1].set(xlabel="horizon (steps)", ylabel="top-1 accuracy", title="accuracy")
        axes[2].set(xlabel="horizon (steps)", ylabel="bits per token",
                    title="margin to the best baseline (95% CI over utterances)")
        axes[0].legend(fontsize=7)
        axes[2].legend(fontsize=7)
        fig.suptitle(title)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
