"""What a reader sees of the samples: a folder per checkpoint (wavs, spectrogram PNG, acoustics.md, summary.json),
the real clips once, and the quality curve over checkpoints (curve.md, curve.csv) with the table printed at the end.

Every folder is written aside and renamed into place, so a reader (or an interrupted run) never sees half of one.
"""
from __future__ import annotations

import csv
import json
import math
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from pydreamer.dreams.acoustics import comparison_markdown
from pydreamer.dreams.report import PERCEPTUAL_CLIPS, structure_verdict
from runtime.files import atomic_path
from tokenizer.audio_io import write_wav
from tokenizer.features import MelSettings, mel_power, power_to_db
from wavegan.samples import GROUP, Scored

CURVE_METRICS = ("snr_db", "spectral_centroid", "spectral_entropy", "voiced_fraction", "harmonicity",
                 "syllable_rate_hz")
PICTURED = 8  # samples in a checkpoint's spectrogram PNG (beside up to 4 real clips)


def _staged(folder: Path):
    """A fresh folder beside `folder` to write into; `_publish` renames it onto `folder`."""
    stage = folder.parent / f".{folder.name}.{os.getpid()}.tmp"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    return stage


def _publish(stage: Path, folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)  # a resumed run scoring the same step again
    os.replace(stage, folder)


def log_mel_db(wave: np.ndarray, settings: MelSettings) -> np.ndarray:
    """The corpus' log-mel (dB, [frames, n_mels]) of a wave: the picture the dreams' PNGs show."""
    return power_to_db(mel_power(np.asarray(wave, np.float32), settings), settings.top_db)


def spectrogram_png(path: Path, title: str, real: Sequence[np.ndarray], samples: Sequence[np.ndarray],
                    settings: MelSettings) -> None:
    """Real clips (top) and samples as log-mel spectrograms, one colour scale, seconds on the time axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(f"real {i}", log_mel_db(w, settings)) for i, w in enumerate(real[:4])]
    panels += [(f"sample {i}", log_mel_db(w, settings)) for i, w in enumerate(samples[:PICTURED])]
    vmax = max(float(db.max()) for _, db in panels)
    vmin = max(min(float(db.min()) for _, db in panels), vmax - settings.top_db)
    rows = -(-len(panels) // 2)
    fig, axes = plt.subplots(rows, 2, figsize=(11, 1.7 * rows + 0.8), squeeze=False)
    fps = settings.frames_per_second
    for ax, item in zip(axes.flat, panels + [None] * (2 * rows - len(panels))):
        if item is None:
            ax.axis("off")
            continue
        label, db = item
        im = ax.imshow(db.T, origin="lower", aspect="auto", cmap="magma", vmin=vmin, vmax=vmax,
                       extent=(0, len(db) / fps, 0, db.shape[1]))
        ax.set_ylabel(f"{label}\nmel bin", fontsize=8)
    axes[-1, 0].set_xlabel("seconds")
    fig.suptitle(title)
    fig.colorbar(im, ax=axes.ravel().tolist(), pad=0.01, label="dB")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)


def point_markdown(s: Scored, run_id: str, n_real: int) -> str:
    """acoustics.md of one checkpoint's samples."""
    md = [f"# WaveGAN run {run_id}: {len(s.waves)} samples at step {s.step}", ""]
    if s.silent:
        md += ["Silent clips (no frame above -50 dBFS; left out of the table, every measure is taken on the speech "
               "of a clip, its leading and trailing silence cut): "
               + ", ".join(f"{g} {v:.0%}" for g, v in s.silent.items()), ""]
    if s.rows:
        md += [f"{n_real} real test-split clips (the dreams' draw, their waveforms, cut to a sample's length) vs the "
               "WaveGAN's samples (no vocoder in either):", "", comparison_markdown(s.rows), structure_verdict(s.rows)]
    else:
        md += ["No real clips (the data_dir has no test split, or every sample is silent): no acoustic table.", ""]
    md.append(dnsmos_markdown(s.perceptual))
    md.append(f"Generation: {s.generation_s:.2f} s for {len(s.waves)} samples (real-time factor "
              f"{s.metrics.get('dream/realtime_factor', math.nan):.4f}).\n")
    return "\n".join(md)


def dnsmos_markdown(p: Mapping[str, Any]) -> str:
    """DNSMOS of the real clips and of the samples (`perceptual_scores`' numbers, this command's words)."""
    if not p:
        return ""
    words = {"real": "real test clips (their waveforms)", GROUP: "WaveGAN samples"}
    lines = []
    if p.get("dnsmos"):
        lines += [f"Perceived quality, DNSMOS P.835 (1-5, higher is better; median of up to {PERCEPTUAL_CLIPS} clips "
                  "per group; no vocoder in either):", "", "| clips | SIG | BAK | OVRL |", "|---|---|---|---|"]
        lines += [f"| {words.get(g, g)} | " + " | ".join(_num(v.get(f"dnsmos_{k}", math.nan), "{:.2f}")
                                                         for k in ("sig", "bak", "ovrl")) + " |"
                  for g, v in p["dnsmos"].items()]
        lines.append("")
    lines += [f"Not measured: {n}" for n in p.get("notes", [])]
    return "\n".join(lines) + "\n"


def write_point(folder: Path, s: Scored, run_id: str, n_real: int, real: Sequence[np.ndarray],
                settings: MelSettings) -> list[str]:
    """samples/step-NNNNNN/: sample-XX.wav, spectrograms.png, acoustics.md, summary.json; returns the names."""
    stage = _staged(folder)
    names = []
    for i, wave in enumerate(s.waves):
        write_wav(stage / f"sample-{i:02d}.wav", wave, settings.sample_rate)
        names.append(f"sample-{i:02d}.wav")
    spectrogram_png(stage / "spectrograms.png", f"WaveGAN step {s.step}: real test clips, then samples", real,
                    s.waves, settings)
    (stage / "acoustics.md").write_text(point_markdown(s, run_id, n_real))
    summary = {"step": s.step, "samples": len(s.waves), "silent_fraction": s.silent, "metrics": s.metrics,
               "acoustics": {g: [asdict(r) for r in rows] for g, rows in s.tables.items()}, "perceptual": s.perceptual}
    (stage / "summary.json").write_text(json.dumps(summary, indent=1, default=float))
    names += ["spectrograms.png", "acoustics.md", "summary.json"]
    _publish(stage, folder)
    return names


def write_real(folder: Path, ids: Sequence[str], waves: Sequence[np.ndarray], sample_rate: int) -> None:
    """samples/real/: the real clips the samples are measured against, to listen to beside them."""
    stage = _staged(folder)
    for i, (name, wave) in enumerate(zip(ids, waves)):
        write_wav(stage / f"real-{i:02d}-{name[:60]}.wav", wave, sample_rate)
    _publish(stage, folder)


# ---- the curve over checkpoints -----------------------------------------------------------------

def curve_row(s: Scored, minutes: float, train: Mapping[str, float]) -> dict[str, Any]:
    """One checkpoint's line of the curve: when, the critic's estimate, and how far the samples are from real."""
    rel = {r.metric: r.relative_difference for r in s.rows}
    row = {"step": s.step, "minutes": minutes, "wasserstein": train.get("wasserstein", math.nan),
           "silent": s.silent.get(GROUP, math.nan),
           "mean_ks": float(np.mean([r.ks_statistic for r in s.rows])) if s.rows else math.nan}
    row.update({f"rel_{m}": rel.get(m, math.nan) for m in CURVE_METRICS})
    dnsmos = s.perceptual.get("dnsmos", {}).get(GROUP, {}).get("dnsmos_ovrl") if s.perceptual else None
    row["dnsmos_ovrl"] = dnsmos if dnsmos is not None else math.nan
    return row


def curve_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """The curve as a table: one line per scored checkpoint (rel. = the samples' median against the real one's)."""
    head = (["step", "minutes", "W estimate", "silent", "mean KS D"] + [f"rel. {m}" for m in CURVE_METRICS]
            + ["DNSMOS OVRL"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [f"{r['step']}", f"{r['minutes']:.1f}", _num(r["wasserstein"], "{:.3f}"), _num(r["silent"], "{:.0%}"),
                 _num(r["mean_ks"], "{:.3f}")] + [_num(r[f"rel_{m}"], "{:+.0%}") for m in CURVE_METRICS]
        lines.append("| " + " | ".join(cells + [_num(r["dnsmos_ovrl"], "{:.2f}")]) + " |")
    return "\n".join(lines) + "\n"


def _num(value: float, fmt: str) -> str:
    return fmt.format(value) if value is not None and math.isfinite(value) else "-"


def write_curve(folder: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """samples/curve.md and curve.csv."""
    folder.mkdir(parents=True, exist_ok=True)
    text = ("Quality against training time: the samples of each scored checkpoint against the real clips "
            "(KS D: 0 = the same distribution; rel.: the samples' median relative to the real median).\n\n"
            + curve_markdown(rows))
    with atomic_path(folder / "curve.md") as tmp:
        tmp.write_text(text)
    with atomic_path(folder / "curve.csv") as tmp:
        _csv(tmp, rows)


def _csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["step"])
        writer.writeheader()
        writer.writerows(rows)
