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

from pydreamer.dreams.acoustics import MetricComparison, clip_metrics, compare_real_generated, similarity_by_horizon
from pydreamer.dreams.structure import envelope_period, keeps_period, speech_span, structure_metrics

# The completion distances' windows of horizon, fixed so their metric keys are the same in every run:
# [0, 0.1), [0.1, 0.25), [0.25, 0.5), [0.5, 1), [1, 2), [2, 4), ... s after the prompt, named by their end
# (`lsd_h0.5s`), up to the dream's length. The short ones make spoken digits and single words measurable.
WINDOW_ENDS_S = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
WINDOW_S = 0.5  # what a test prompt must leave after it to be completed on a corpus of long utterances
SHORTEST_WINDOW_S = WINDOW_ENDS_S[0]  # ... and on a corpus of short clips
VERDICT_WINDOWS_S = (0.5, 1.0, 2.0)
COMPLETION_TARGET_DB = 1.5  # a completion should be this much closer to the truth than another prompt's dream


def speech_parts(clips: Sequence[np.ndarray], sr: int) -> tuple[list[np.ndarray], float]:
    """Each clip without its leading and trailing silence, the silent ones left out; and the fraction left out."""
    spans = [speech_span(y, sr) for y in clips]
    parts = [np.asarray(y)[a:b] for y, (a, b) in zip(clips, spans) if b > a]
    return parts, (1.0 - len(parts) / len(clips)) if len(clips) else 0.0


def acoustic_tables(real: Sequence[np.ndarray], groups: dict[str, Sequence[np.ndarray]], sr: int
                    ) -> tuple[dict[str, list[MetricComparison]], dict[str, list[dict]], dict[str, float]]:
    """(real-vs-group tables, per-clip metrics of 'real' and each group, fraction of each group's clips that are
    silent) for every non-empty group. Every measure is taken on a clip's speech (its leading and trailing silence
    cut, as for the real clips), so a dream that stays silent counts once, in the silent fraction."""
    clips, silent = {}, {}
    for g, waves in {"real": real, **groups}.items():
        if not len(waves):
            continue
        parts, silent[g] = speech_parts(waves, sr)
        if parts:
            clips[g] = [{**clip_metrics(y, sr), **structure_metrics(y, sr)} for y in parts]
    tables = {g: compare_real_generated(clips["real"], c) for g, c in clips.items() if g != "real"} \
        if "real" in clips else {}
    return tables, clips, silent


STRUCTURE_TOLERANCE = 0.2  # the target: a group's median within +-20% of the real clips


def structure_verdict(rows: Sequence[MetricComparison], tolerance: float = STRUCTURE_TOLERANCE) -> str:
    """How many medians are within `tolerance` of the real clips', RMS aside (the vocoder's and the tokenizer's
    level, not the model's), naming those that are not."""
    judged = [r for r in rows if r.metric != "rms"]
    off = [f"{r.metric} {r.relative_difference:+.0%}" for r in judged if not abs(r.relative_difference) <= tolerance]
    return (f"Within +-{tolerance:.0%} of the real medians (RMS aside): {len(judged) - len(off)} of {len(judged)}"
            + (f"; not: {', '.join(off)}" if off else "") + ".\n")


def rhythm_of_completions(completions: Sequence, sr: int, kind_of=None) -> dict:
    """Do completions keep their prompt's rhythm? Per test prompt with a true continuation, the repetition
    period of the real prompt + continuation (`envelope_period`); for those that have one (rhythmic), the
    fraction of its dreams whose imagined part has the same period (`keeps_period`), beside the same test on
    another prompt's dreams (what keeping a period by chance reads). `kind_of(name)`: the utterance's kind
    (synthetic corpus), to say it per kind."""
    rows = []
    for i, c in enumerate(completions):
        other = completions[(i + 1) % len(completions)]
        true_period = envelope_period(c.true_wave, sr)
        if not np.isfinite(true_period) or other is c:
            continue
        own = [envelope_period(d.wave[c.prompt_samples:], sr) for d in c.dreams]
        chance = [envelope_period(d.wave[other.prompt_samples:], sr) for d in other.dreams]
        rows.append({"name": c.clip.name, "kind": kind_of(c.clip.name) if kind_of else None,
                     "true_period_s": true_period, "dream_periods_s": own,
                     "kept": float(np.mean([keeps_period(true_period, p) for p in own])),
                     "chance": float(np.mean([keeps_period(true_period, p) for p in chance]))})
    out = {"prompts": len(completions), "rhythmic": len(rows), "per_prompt": rows}
    if rows:
        out["kept"] = float(np.mean([r["kept"] for r in rows]))
        out["chance"] = float(np.mean([r["chance"] for r in rows]))
        kinds = sorted({r["kind"] for r in rows if r["kind"]})
        out["by_kind"] = {k: {"rhythmic": sum(r["kind"] == k for r in rows),
                              "kept": float(np.mean([r["kept"] for r in rows if r["kind"] == k]))} for k in kinds}
    return out


def rhythm_markdown(rhythm: dict) -> str:
    """One paragraph: how many test prompts have a steady rhythm and how often their completions keep it."""
    if not rhythm or not rhythm.get("rhythmic"):
        return (f"Rhythm: none of the {rhythm.get('prompts', 0)} test prompts has a steady repetition period "
                "(envelope autocorrelation peak >= 0.3 between 0.12 and 1 s): nothing to keep.\n") if rhythm else ""
    kinds = "".join(f"; {k}: {v['kept']:.0%} of {v['rhythmic']}" for k, v in rhythm.get("by_kind", {}).items())
    periods = ", ".join(f"{r['true_period_s']:.2f}" for r in rhythm["per_prompt"])
    return (f"Rhythm: {rhythm['rhythmic']} of {rhythm['prompts']} test prompts have a steady period (s: {periods}); "
            f"**{rhythm['kept']:.0%} of their completions keep it** (same period within 15%, or twice or half it), "
            f"against {rhythm['chance']:.0%} for another prompt's completions{kinds}.\n")


def completion_distances(true_cont: np.ndarray, dream_conts: Sequence[np.ndarray], sr: int,
                         limit_s: float | None = None) -> dict[str, np.ndarray]:
    """Mean over dreams of LSD (dB) and spectral convergence to the true continuation, per window of horizon
    (`WINDOW_ENDS_S`) that the continuations reach, those ending past `limit_s` (the dream's length) left out."""
    ends = [e for e in WINDOW_ENDS_S if limit_s is None or e <= limit_s + 1e-9] or [WINDOW_ENDS_S[0]]
    rows = [similarity_by_horizon(true_cont, d, sr, edges=(0.0, *ends)) for d in dream_conts]
    n = min(len(r["end_s"]) for r in rows)
    return {"end_s": rows[0]["end_s"][:n],
            "lsd": np.mean([r["log_spectral_distance"][:n] for r in rows], 0),
            "sc": np.mean([r["spectral_convergence"][:n] for r in rows], 0)}


def horizon_summary(per_prompt: list[dict[str, dict[str, np.ndarray]]]) -> dict[str, dict[str, list[float]]]:
    """Mean over prompts, per horizon window, of each kind of completion ('own', 'swapped', 'other'), and how
    many prompts each window's mean is over. A window keeps its nominal end (`end_s`): the same metric key in
    every run."""
    out: dict[str, dict[str, list[float]]] = {}
    if not per_prompt:
        return out
    # a window is averaged over the prompts whose true continuation reaches it, while 2 or more do (one short
    # utterance must not cut every prompt's horizon to its own length)
    reach = [min(len(p[kind]["end_s"]) for kind in p) for p in per_prompt]
    lengths = sorted(reach, reverse=True)
    n = lengths[min(1, len(lengths) - 1)]
    longest = per_prompt[int(np.argmax(reach))]
    ends = [float(e) for e in next(iter(longest.values()))["end_s"][:n]]
    for kind in per_prompt[0]:
        out[kind] = {k: [float(np.mean([p[kind][k][i] for p in per_prompt if len(p[kind][k]) > i]))
                         for i in range(n)] for k in ("lsd", "sc")}
        out[kind]["end_s"] = list(ends)
        out[kind]["prompts"] = [sum(len(p[kind]["end_s"]) > i for p in per_prompt) for i in range(n)]
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
    windows = ", ".join(f"[{a:g}, {b:g})" for a, b in zip([0.0, *ends[:-1]], ends))
    lines = [f"Distance to the true continuation ({n_prompts} test prompts; mean over prompts and dreams), "
             f"per window of horizon after the prompt (s: {windows}; named by its end):", "",
             "| completion | " + " | ".join(f"LSD dB @{e:g}s" for e in ends) + " | "
             + " | ".join(f"SC @{e:g}s" for e in ends) + " |",
             "|---|" + "---|" * (2 * len(ends))]
    for kind, r in summary.items():
        lines.append(f"| {names.get(kind, kind)} | " + " | ".join(f"{v:.2f}" for v in r["lsd"]) + " | "
                     + " | ".join(f"{v:.3f}" for v in r["sc"]) + " |")
    if "prompts" in summary["own"]:
        lines += ["", "Prompts per window (those whose true continuation reaches it): "
                  + ", ".join(str(n) for n in summary["own"]["prompts"])]
    verdicts = []
    for i, e in enumerate(ends):
        if e in VERDICT_WINDOWS_S or (i == 0 and not set(VERDICT_WINDOWS_S) & set(ends)):
            own, base = summary["own"]["lsd"][i], summary["swapped"]["lsd"][i]
            verdicts.append(f"{e:g} s: {own:.2f} vs {base:.2f} dB ({own - base:+.2f})")
    lines += ["", "The model's completion against another prompt's dream at this prompt's level (target: "
              f"{COMPLETION_TARGET_DB:g} dB closer to the truth): " + "; ".join(verdicts) + "."]
    return "\n".join(lines) + "\n"


PERCEPTUAL_CLIPS = 8  # clips per group scored by DNSMOS (about 1-2 s of CPU each)
GROUP_WORDS = {"real": "real clips through the vocoder (copy synthesis)", "tokenizer": "tokenizer round trip",
               "unconditional": "dreams from nothing", "warm": "dreams after a warm-up",
               "completion": "completions (imagined part)"}


def perceptual_scores(real: Sequence[np.ndarray], groups: dict[str, Sequence[np.ndarray]], sr: int,
                      clips: int = PERCEPTUAL_CLIPS) -> dict:
    """DNSMOS of the real clips and of each group (up to `clips` each), and the tokenizer's own loss: its round
    trip against the same clips through the same vocoder (PESQ-WB, STOI, ESTOI, ViSQOL). A metric whose package
    is missing is a note, not an error."""
    from pydreamer.dreams import perceptual

    out: dict = {"dnsmos": {}, "tokenizer": {}, "notes": perceptual.notes()}
    for name, waves in (("real", real), *groups.items()):
        scores = perceptual.dnsmos_summary(list(waves)[:clips], sr) if len(waves) else {}
        if scores:
            out["dnsmos"][name] = scores
    if len(real) and len(groups.get("tokenizer", [])):
        out["tokenizer"] = perceptual.copy_synthesis(list(real)[:clips], list(groups["tokenizer"])[:clips], sr)
    return out


def perceptual_markdown(p: dict, vocoder: str) -> str:
    """The DNSMOS table per group and the tokenizer's intrusive scores, with any metric that could not run."""
    if not p:
        return ""
    lines = []
    if p.get("dnsmos"):
        lines += [f"Perceived quality, DNSMOS P.835 (1-5, higher is better; median of up to {PERCEPTUAL_CLIPS} clips "
                  f"per group; every clip through {vocoder}):", "", "| clips | SIG | BAK | OVRL |", "|---|---|---|---|"]
        for group, s in p["dnsmos"].items():
            lines.append(f"| {GROUP_WORDS.get(group, group)} | {s.get('dnsmos_sig', float('nan')):.2f} | "
                         f"{s.get('dnsmos_bak', float('nan')):.2f} | {s.get('dnsmos_ovrl', float('nan')):.2f} |")
        lines.append("")
    t = {k: v for k, v in p.get("tokenizer", {}).items() if k != "n"}
    if t:
        lines += ["The tokenizer's own loss (its round trip against the same clips through the same vocoder, "
                  f"{p['tokenizer'].get('n', 0)} clips): " + ", ".join(f"{k} {v:.3f}" for k, v in t.items()), ""]
    lines += [f"Not measured: {n}" for n in p.get("notes", [])]
    return "\n".join(lines) + "\n"


def dream_metrics(tables: dict[str, list[MetricComparison]], summary: dict[str, dict[str, list[float]]],
                  realtime_factor: float, silent: dict[str, float] | None = None,
                  rhythm: dict | None = None, perceptual: dict | None = None) -> dict[str, float]:
    """The `dream/*` metrics: per group and acoustic metric, medians, relative difference and KS; the fraction of
    each group's clips that are silent; per horizon window, the completion distances; whether completions keep
    their prompt's rhythm; the real-time factor."""
    m = {"dream/realtime_factor": realtime_factor}
    for group, scores in (perceptual or {}).get("dnsmos", {}).items():
        m.update({f"dream/{group}/{k}": v for k, v in scores.items() if np.isfinite(v)})
    m.update({f"tokenizer/roundtrip/{k}": v for k, v in (perceptual or {}).get("tokenizer", {}).items()
              if k != "n" and np.isfinite(v)})
    for group, fraction in (silent or {}).items():
        m[f"dream/{group}/silent_fraction"] = fraction
    if rhythm and rhythm.get("rhythmic"):
        m["dream/completion/period_kept"] = rhythm["kept"]
        m["dream/completion/period_kept_chance"] = rhythm["chance"]
        m["dream/completion/rhythmic_prompts"] = rhythm["rhythmic"]
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


def grid_png(path: Path, title: str, dbs: Sequence[np.ndarray | None], fps: float, cols: int = 2,
             titles: Sequence[str] | None = None) -> None:
    """Dreams side by side in a grid, one colour scale (a None leaves its panel empty)."""
    plt = _plt()
    rows = -(-len(dbs) // cols)
    vmin, vmax = _scale([db for db in dbs if db is not None])
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 1.9 * rows + 0.6), squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i >= len(dbs) or dbs[i] is None:
            ax.axis("off")
            continue
        im = _panel(ax, dbs[i], fps, vmin, vmax, titles[i] if titles else f"dream {i}")
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
