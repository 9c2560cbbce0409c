"""How far the dreams are from real speech, in numbers and in pictures.

Numbers (acoustics.py does the measuring): per clip SNR, zero-crossing rate, RMS, spectral
entropy, centroid and roll-off of real test-split clips and of each group of dreams, compared as
median, IQR, relative difference and a two-sample KS test; per completion, log-spectral distance
and spectral convergence to the true continuation per window of horizon, beside the same distance
to a completion that never saw this prompt. Pictures: one PNG per prompt (real prompt + true
continuation above, dreams below, one colour scale, seconds on the time axis, the prompt/dream
boundary marked), a grid of the dreams from nothing, and the mixtures of two prompts.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from pydreamer.dreams.acoustics import MetricComparison, compare_real_generated, describe_clips, similarity_by_horizon

WINDOW_S = 0.5  # horizon windows of the completion distances: (0, 0.5], (0.5, 1.0], ...


def acoustic_tables(real: Sequence[np.ndarray], groups: dict[str, Sequence[np.ndarray]],
                    sr: int) -> tuple[dict[str, list[MetricComparison]], dict[str, list[dict]]]:
    """(real-vs-group tables, per-clip metrics of 'real' and each group) for every non-empty group."""
    clips = {"real": describe_clips(real, sr)}
    clips.update({g: describe_clips(w, sr) for g, w in groups.items() if len(w)})
    tables = {g: compare_real_generated(clips["real"], c) for g, c in clips.items() if g != "real"}
    return tables, clips


def completion_distances(true_cont: np.ndarray, dream_conts: Sequence[np.ndarray], sr: int) -> dict[str, np.ndarray]:
    """Mean over dreams of LSD (dB) and spectral convergence to the true continuation, per horizon window."""
    rows = [similarity_by_horizon(true_cont, d, sr, WINDOW_S) for d in dream_conts]
    n = min(len(r["end_s"]) for r in rows)
    return {"end_s": rows[0]["end_s"][:n],
            "lsd": np.mean([r["log_spectral_distance"][:n] for r in rows], 0),
            "sc": np.mean([r["spectral_convergence"][:n] for r in rows], 0)}


def horizon_summary(per_prompt: list[dict[str, dict[str, np.ndarray]]]) -> dict[str, dict[str, list[float]]]:
    """Mean over prompts, per horizon window, of each kind of completion ('own', 'swapped', 'other')."""
    out: dict[str, dict[str, list[float]]] = {}
    if not per_prompt:
        return out
    n = min(len(p["own"]["end_s"]) for p in per_prompt)
    for kind in per_prompt[0]:
        out[kind] = {k: [float(np.mean([p[kind][k][i] for p in per_prompt])) for i in range(n)]
                     for k in ("end_s", "lsd", "sc")}
    return out


def horizon_markdown(summary: dict[str, dict[str, list[float]]], n_prompts: int) -> str:
    """LSD and spectral convergence per horizon window, the model's completions beside the baselines."""
    if not summary:
        return ""
    names = {"own": "**the model's completion of this prompt**",
             "swapped": "another prompt's dream, heard at this prompt's level",
             "other": "another prompt's completion, as is", "real_other": "another utterance's true continuation",
             "tokenizer": "the true continuation through the tokenizer (perfect tokens)"}
    ends = summary["own"]["end_s"]
    lines = [f"Distance to the true continuation ({n_prompts} test prompts; mean over prompts and dreams), "
             f"per {WINDOW_S:g} s window of horizon:", "",
             "| completion | " + " | ".join(f"LSD dB @{e:g}s" for e in ends) + " | "
             + " | ".join(f"SC @{e:g}s" for e in ends) + " |",
             "|---|" + "---|" * (2 * len(ends))]
    for kind, r in summary.items():
        lines.append(f"| {names.get(kind, kind)} | " + " | ".join(f"{v:.2f}" for v in r["lsd"]) + " | "
                     + " | ".join(f"{v:.3f}" for v in r["sc"]) + " |")
    own, base = summary["own"]["lsd"][0], summary["swapped"]["lsd"][0]
    lines += ["", f"Completion target (LSD at {ends[0]:g} s below that of another prompt's dream at this prompt's "
              f"level): {'met' if own < base else 'NOT met'}, {own:.2f} vs {base:.2f} dB."]
    return "\n".join(lines) + "\n"


def dream_metrics(tables: dict[str, list[MetricComparison]], summary: dict[str, dict[str, list[float]]],
                  realtime_factor: float) -> dict[str, float]:
    """The `dream/*` metrics: per group and acoustic metric, medians, relative difference and KS; per
    horizon window, the completion distances; the real-time factor."""
    m = {"dream/realtime_factor": realtime_factor}
    for group, rows in tables.items():
        for r in rows:
            m[f"dream/real/{r.metric}/median"] = r.real_median
            m[f"dream/{group}/{r.metric}/median"] = r.generated_median
            m[f"dream/{group}/{r.metric}/rel_diff"] = r.relative_difference
            m[f"dream/{group}/{r.metric}/ks_stat"] = r.ks_statistic
            m[f"dream/{group}/{r.metric}/ks_p"] = r.ks_pvalue
    for kind, r in summary.items():
        for e, lsd, sc in zip(r["end_s"], r["lsd"], r["sc"]):
            m[f"dream/completion/{kind}/lsd_h{e:g}s"] = lsd
            m[f"dream/completion/{kind}/sc_h{e:g}s"] = sc
    return m


# ---- pictures ------------------------------------------------------------------------------

def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _scale(panels: Sequence[np.ndarray]) -> tuple[float, float]:
    """One colour scale for every panel of a figure: 80 dB below the loudest bin (the features' floor)."""
    vmax = float(max(np.max(p) for p in panels if p.size))
    vmin = max(float(min(np.min(p) for p in panels if p.size)), vmax - 80.0)
    return vmin, vmax


def _panel(ax, db: np.ndarray, fps: float, vmin: float, vmax: float, label: str, boundary_s: float = 0.0):
    im = ax.imshow(np.asarray(db, np.float32).T, origin="lower", aspect="auto", cmap="magma", vmin=vmin, vmax=vmax,
                   extent=(0, len(db) / fps, 0, db.shape[1]))
    if boundary_s > 0:
        ax.axvline(boundary_s, color="cyan", ls="--", lw=1.5)
    ax.set_ylabel(f"{label}\nmel bin", fontsize=8)
    return im


def completion_png(path: Path, title: str, true_db: np.ndarray, dreams: Sequence[np.ndarray], prompt_s: float,
                   fps: float) -> None:
    """Rows: real prompt + true continuation, then each dream (prompt + imagined); the boundary dashed."""
    plt = _plt()
    panels = [true_db, *dreams]
    vmin, vmax = _scale(panels)
    seconds = max(len(p) for p in panels) / fps
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 1.9 * len(panels) + 0.6), squeeze=False, sharex=True)
    for i, (ax, db) in enumerate(zip(axes[:, 0], panels)):
        im = _panel(ax, db, fps, vmin, vmax, "prompt | true" if i == 0 else f"prompt | dream {i}", prompt_s)
        ax.set_xlim(0, seconds)
    axes[-1, 0].set_xlabel("seconds (dashed: end of the prompt)")
    axes[0, 0].set_title(title)
    fig.colorbar(im, ax=axes[:, 0].tolist(), pad=0.01, label="dB")
    _save(fig, path)


def grid_png(path: Path, title: str, dbs: Sequence[np.ndarray], fps: float, cols: int = 2) -> None:
    """Dreams side by side in a grid, one colour scale."""
    plt = _plt()
    rows = -(-len(dbs) // cols)
    vmin, vmax = _scale(dbs)
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 1.9 * rows + 0.6), squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i >= len(dbs):
            ax.axis("off")
            continue
        im = _panel(ax, dbs[i], fps, vmin, vmax, f"dream {i}")
        ax.set_xlabel("seconds", fontsize=8)
    fig.suptitle(title)
    fig.colorbar(im, ax=axes.ravel().tolist(), pad=0.01, label="dB")
    _save(fig, path)


def strip_png(path: Path, title: str, dbs: Sequence[np.ndarray], labels: Sequence[str], fps: float) -> None:
    """Segments one after another on a shared time axis (the mixtures of two prompts), boundaries dashed."""
    plt = _plt()
    vmin, vmax = _scale(dbs)
    fig, ax = plt.subplots(1, 1, figsize=(12, 3))
    db = np.concatenate(dbs)
    im = _panel(ax, db, fps, vmin, vmax, "")
    t = 0.0
    for seg, label in zip(dbs, labels):
        ax.text(t + 0.02, db.shape[1] - 6, label, color="white", fontsize=8)
        t += len(seg) / fps
        ax.axvline(t, color="cyan", ls="--", lw=1)
    ax.set_xlabel("seconds")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, pad=0.01, label="dB")
    _save(fig, path)


def _save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80, bbox_inches="tight")
    _plt().close(fig)
