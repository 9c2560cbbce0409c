"""What one `python -m pydreamer.dream` made (`DreamResults`) and its files: wavs, PNGs, tokens.npz,
acoustics.md and CSVs, summary.json. The one writer of a dreams folder's layout."""
from __future__ import annotations

import argparse
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from pydreamer.dreams.alignment import alignment_markdown
from pydreamer.dreams.acoustics import MetricComparison, comparison_markdown, write_comparison_csv
from pydreamer.dreams.audio import Completion, Dream, Timer
from pydreamer.dreams.page import listening_page
from pydreamer.dreams.report import (completion_png, grid_png, horizon_markdown, perceptual_markdown,
                                     rhythm_markdown, strip_png, structure_verdict)
from pydreamer.replay_layout import DREAMS

ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)


@dataclass
class DreamResults:
    """Everything dreamt and measured, before anything is written."""

    args: argparse.Namespace  # the command's settings (the run's config filled in)
    world_model: str  # which world model dreamt (its config value), for titles
    step: int  # the checkpoint's step
    sample_rate: int
    frames_per_second: float
    vocoder: str  # which vocoder made every wav, in words
    tokens_per_step: int
    uncond: list[Dream] = field(default_factory=list)
    warm: list[Dream] = field(default_factory=list)
    completions: list[Completion] = field(default_factory=list)
    mix: list[Dream] = field(default_factory=list)
    conditioned: dict[str, list[Dream]] = field(default_factory=dict)  # "label=value" -> dreams from nothing on it
    alignment: dict[str, dict] = field(default_factory=dict)  # label -> how a classifier hears them (alignment.py)
    tables: dict[str, list[MetricComparison]] = field(default_factory=dict)
    per_clip: dict = field(default_factory=dict)
    silent: dict[str, float] = field(default_factory=dict)  # per group, the fraction of clips with no speech
    rhythm: dict = field(default_factory=dict)  # do completions keep their prompt's period (rhythm_of_completions)
    perceptual: dict = field(default_factory=dict)  # DNSMOS per group, the tokenizer's PESQ/STOI (perceptual_scores)
    horizons: dict = field(default_factory=dict)
    n_tested: int = 0
    not_measured: dict[str, str] = field(default_factory=dict)  # measure -> why it is missing (coverage.not_measured)
    timer: Timer = field(default_factory=Timer)
    notes: list[str] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    files: list[str] = field(default_factory=list)  # written, relative to the dreams folder

    def write(self, stage: Path) -> list[str]:
        """Every output file under `stage`; returns their paths relative to it."""
        files = self._write_audio(stage)
        np.savez(stage / "tokens.npz", **self._token_arrays())
        files.append("tokens.npz")
        markdown = self._markdown(stage, files)
        (stage / "acoustics.md").write_text(markdown)
        files.append("acoustics.md")
        # the listening page: every wav beside its picture and the tables, linking summary.json (written next)
        title = f"Dreams of {self.world_model} run {self.args.run} (step {self.step})"
        where = getattr(self.args, "artifacts", DREAMS)  # the run's dreams/, or an ad-hoc dream's dreams/<name>/
        page = listening_page(title, [*files, "summary.json"], markdown, self.notes, (self.args.run, where))
        (stage / "index.html").write_text(page, encoding="utf-8")
        files.append("index.html")
        (stage / "summary.json").write_text(json.dumps(self._summary(files), indent=1, default=float))
        files.append("summary.json")
        return files

    def root_page(self, markdown: str) -> str:
        """The listening page for the root of the run's artifacts (listen.html): every file under `dreams/`."""
        title = f"Dreams of {self.world_model} run {self.args.run} (step {self.step})"
        return listening_page(title, self.files, markdown, self.notes, (self.args.run, ""), base=f"{DREAMS}/")

    def _write_audio(self, stage: Path) -> list[str]:
        """The wavs and their pictures."""
        from tokenizer.audio_io import write_wav

        a, kind, fps = self.args, self.world_model, self.frames_per_second
        files: list[str] = []
        guided = f", guidance {a.guidance:g}" if getattr(a, "guided", False) and a.guidance != 1 else ""
        told = f", conditioned on {_told(a)}{guided}" if getattr(a, "fixed", None) else ""  # every dream of the command

        def wav(rel: str, wave: np.ndarray) -> None:
            write_wav(stage / rel, wave, self.sample_rate)
            files.append(rel)

        for d in self.uncond:
            wav(f"unconditional/{d.name}.wav", d.wave)
        if self.uncond:
            grid_png(stage / "unconditional.png", f"{kind}: {len(self.uncond)} dreams from the initial state (corpus "
                     f"level{told})", [d.db for d in self.uncond], fps)
            files.append("unconditional.png")
        for d in self.warm:
            wav(f"warm/{d.name}.wav", d.wave)
        for i, c in enumerate(self.completions):
            folder = f"completions/{i:02d}-{_slug(c.clip.name)}"
            if c.true_wave is not None:
                wav(f"{folder}/prompt+true.wav", c.true_wave)
            if c.roundtrip_wave is not None:
                wav(f"{folder}/prompt+roundtrip.wav", c.roundtrip_wave)
            for k, d in enumerate(c.dreams):
                wav(f"{folder}/prompt+dream-{k:02d}.wav", d.wave)
            start = f" from {c.clip.start_s:.2f} s (leading silence trimmed)" if c.clip.start_s else ""
            completion_png(stage / f"{folder}.png", f"{kind}: {c.clip.name}, {c.dreams[0].prompt_s:.2f} s prompt{start}, "
                           f"{a.seconds:g} s dreamt (T={a.temperature:g}, {a.imagination} imagination{told})", c.true_db, [d.db for d in c.dreams],
                           c.dreams[0].prompt_s, fps)
            files.append(f"{folder}.png")
        for label in dict.fromkeys(k.split("=", 1)[0] for k in self.conditioned):  # a picture per label, a row per value
            rows = {k.split("=", 1)[1]: ds for k, ds in self.conditioned.items() if k.split("=", 1)[0] == label}
            for value, ds in rows.items():
                for d in ds:
                    wav(f"conditioned/{label}-{_slug(value)}/{d.name}.wav", d.wave)
            cols = min(4, max(len(ds) for ds in rows.values()))
            grid_png(stage / f"conditioned_{label}.png", f"{kind}: dreams from nothing conditioned on {label}, a row "
                     f"per value{told or guided}", [ds[i].db if i < len(ds) else None for ds in rows.values() for i in range(cols)], fps,
                     cols=cols, titles=[f"{label} {v} #{i}" for v in rows for i in range(cols)])
            files.append(f"conditioned_{label}.png")
        if self.mix:
            wav("interpolation.wav", np.concatenate([d.wave for d in self.mix]))
            strip_png(stage / "interpolation.png", f"{kind}: dreams from mixtures of two prompts' states",
                      [d.db for d in self.mix], [f"alpha {al:g}" for al in ALPHAS], fps)
            files.append("interpolation.png")
        return files

    def _token_arrays(self) -> dict[str, np.ndarray]:
        G = self.tokens_per_step
        arrays = {"unconditional": np.stack([d.tokens for d in self.uncond]) if self.uncond else np.zeros((0, 0, G)),
                  "warm_names": np.array([d.name for d in self.warm], dtype=str)}
        for i, d in enumerate(self.warm):
            arrays[f"warm_{i:02d}"] = d.tokens
        for i, c in enumerate(self.completions):
            arrays[f"completion_{i:02d}"] = np.stack([d.tokens for d in c.dreams])
            arrays[f"completion_{i:02d}_prompt"] = c.clip.tokens
        arrays["completion_names"] = np.array([c.clip.name for c in self.completions], dtype=str)
        if self.mix:
            arrays["interpolation"] = np.stack([d.tokens for d in self.mix])
        for key, ds in self.conditioned.items():
            arrays[f"conditioned_{key}"] = np.stack([d.tokens for d in ds])
        return arrays

    def ends(self) -> dict[str, dict[str, float]]:
        """Per group of dreams, the fraction the world model ended before `seconds` and the median seconds dreamt."""
        groups = {"unconditional": self.uncond, "warm": self.warm,
                  "completion": [d for c in self.completions for d in c.dreams]}
        return {g: {"ended_fraction": float(np.mean([d.end_s is not None for d in ds])),
                    "median_s": float(np.median([self.args.seconds if d.end_s is None else d.end_s for d in ds]))}
                for g, ds in groups.items() if ds}

    def _markdown(self, stage: Path, files: list[str]) -> str:
        """acoustics.md (and the acoustic CSVs beside it)."""
        a, t = self.args, self.timer
        md = [f"# Dreams of {self.world_model} run {a.run} (step {self.step})", ""]
        what = {"tokenizer": "the same clips through the tokenizer (encoded and decoded: the floor for any dream)",
                "unconditional": "dreams from the initial state (corpus level)",
                "warm": f"dreams after a {a.warmup_seconds:g} s warm-up on {a.split} utterances (corpus level)",
                "completion": "completions (the imagined part, at the prompt's level)"}
        if getattr(a, "end", False):
            md += ["Dreams end where the world model says the utterance does (its terminal head; silence after): "
                   + ", ".join(f"{g} {e['ended_fraction']:.0%} ended, median {e['median_s']:.2f} s"
                               for g, e in self.ends().items()), ""]
        if self.silent:
            md += ["Silent clips (no frame above -50 dBFS; left out of the tables, every measure is taken on the "
                   "speech of a clip, its leading and trailing silence cut): "
                   + ", ".join(f"{g} {v:.0%}" for g, v in self.silent.items()), ""]
        for group, rows in self.tables.items():
            md += [f"Real {a.split}-split clips vs {what[group]}; all through the same vocoder ({self.vocoder}):", "",
                   comparison_markdown(rows), structure_verdict(rows)]
            write_comparison_csv(rows, stage / f"acoustics_{group}.csv")
            files.append(f"acoustics_{group}.csv")
        if not self.tables:
            md += [f"No acoustic table: {self.not_measured.get('acoustic table', 'no real clips')}.", ""]
        md.append(horizon_markdown(self.horizons, self.n_tested) or
                  f"No completion distances: {self.not_measured.get('completion distances', 'no test prompts')}.\n")
        md.append(rhythm_markdown(self.rhythm))
        md.append(perceptual_markdown(self.perceptual, self.vocoder))
        if getattr(a, "fixed", None):
            md.append(f"Every dream above is conditioned on {_told(a)}.\n")
        md.append(alignment_markdown(self.alignment, self.metrics.get("dream/condition/guidance", 1.0)))
        if not self.mix:
            md.append(f"No interpolation: {self.not_measured.get('interpolation', 'it needs two prompts')}.\n")
        md.append(f"Real-time factor {t.realtime_factor:.3f}: {t.generation_s:.2f} s generation + "
                  f"{t.vocoder_s:.2f} s vocoder ({self.vocoder}) for {t.audio_s:.2f} s of audio.\n")
        return "\n".join(md)

    def _summary(self, files: list[str]) -> dict:
        a, t = self.args, self.timer
        return {
            "run": a.run, "world_model": self.world_model, "step": self.step, "seconds": self.seconds, "notes": self.notes,
            "settings": {k: v for k, v in vars(a).items() if k not in ("run", "out")},
            "vocoder": self.vocoder, "realtime_factor": t.realtime_factor,
            "generation_s": t.generation_s, "vocoder_s": t.vocoder_s, "audio_s": t.audio_s,
            "unconditional": {"from_initial_state": len(self.uncond), "after_warmup": [d.name for d in self.warm],
                              "warmup_seconds": a.warmup_seconds, "level": "corpus mel_mean/mel_std"},
            "completions": [{"name": c.clip.name, "prompt_s": c.dreams[0].prompt_s, "start_s": c.clip.start_s,
                             "notes": c.clip.notes,
                             "true_continuation": c.true_wave is not None} for c in self.completions],
            "acoustics": {g: [asdict(r) for r in rows] for g, rows in self.tables.items()},
            "per_clip": self.per_clip, "silent_fraction": self.silent, "ends": self.ends(), "rhythm": self.rhythm,
            "perceptual": self.perceptual,
            "completion_distance_by_horizon": self.horizons, "not_measured": self.not_measured,
            "metrics": self.metrics,
            "conditioned": {k: len(ds) for k, ds in self.conditioned.items()}, "alignment": self.alignment,
            "files": files,
        }


def _told(a) -> str:
    """The label values every dream of the command was conditioned on (`--condition LABEL=VALUE`), as said."""
    return ", ".join(f"{k} = {v}" for k, v in a.fixed.items())


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).stem if "." in name else name)[:60] or "prompt"
