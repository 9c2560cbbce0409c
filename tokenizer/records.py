"""What each stage's output was made with, and the checks that refuse output that no longer fits.

Each stage records the settings it was made with (`<data_dir>/settings/<stage>.json`: its own
and those of the stages before it) and refuses to reuse output made with others, so changing
`--codebook_size` or `--split_fractions` and running again never trains on stale tokens without
a word. `seed` is not compared: the world model shares it. Worker parts that wait for `merge`
are refused the same way: the output they will make is not there yet.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Mapping

from runtime.files import atomic_write_text
from tokenizer.layout import DataLayout
from tokenizer.parts import PART_STAGES, RECORD, PartError, Share, status

STAGES = ("prepare", "train", "encode", "evaluate")

# The config keys that shape each stage's output (besides those of the stages before it).
STAGE_KEYS = {
    "prepare": ("source", "data_root", "speaker_rule", "speaker_regex", "synth_minutes", "synth_languages",
                "synth_voices_per_language", "synth_noise_db", "max_seconds", "long_files", "max_files",
                "split_fractions", "min_split_speakers", "silence_db", "sample_rate", "n_fft", "win_length",
                "hop_length", "n_mels", "top_db", "vad_db", "band_margin_db"),
    "train": ("codebook_size", "tokens_per_step", "time_downsample", "vq_channels", "vq_code_dim", "vq_res_blocks",
              "vq_beta", "vq_ema", "vq_ema_decay", "vq_dead_threshold", "vq_restart_reservoir",
              "vq_out_of_band_weight", "vq_batch_size", "vq_segment_frames", "vq_pack_crops", "vq_steps", "vq_lr",
              "vq_causal", "mel_norm", "vq_magnitude_weight", "vq_postfilter"),
    "encode": ("min_steps",),
    "evaluate": (),
}
_ONLY_FOR_SOURCE = {"data_root": ("commonvoice", "folder"), "speaker_rule": ("folder",), "speaker_regex": ("folder",),
                    "synth_minutes": ("synth",), "synth_languages": ("synth",), "synth_voices_per_language": ("synth",),
                    "synth_noise_db": ("synth",)}
# Keys added after outputs were first recorded, with the value those older outputs were made with: a record
# without the key and a config with that value agree (so no existing data_dir turns stale on upgrade).
_IMPLIED_BEFORE = {"vq_causal": False, "mel_norm": "auto", "vq_magnitude_weight": 0.0, "vq_postfilter": False}


def stage_output(layout: DataLayout, stage: str) -> Path:
    """The file whose presence means the stage is done (each is written last, atomically)."""
    return {"prepare": layout.manifest, "train": layout.vqvae, "encode": layout.token_meta, "evaluate": layout.metrics}[stage]


def marks_done(rel: str) -> bool:
    """Whether a file of `data_dir` (its path relative to it) marks finished output: a stage's output file,
    the settings it records, a worker part's record. In a bucket these are sent last (runtime/sync.py)."""
    here = DataLayout(Path(""))
    return (rel in {stage_output(here, s).as_posix() for s in STAGES} or rel.startswith("settings/")
            or (rel.startswith("parts/") and rel.endswith(f"/{RECORD}")))


class StaleOutput(ValueError):
    """A stage's output exists but was made with other settings: reusing it would be wrong without a word."""

    def __init__(self, stage: str, output: Path, changed: list[str]):
        self.stage, self.output, self.changed = stage, output, changed
        super().__init__(f"{stage}: {output} was made with other settings ({'; '.join(changed)}): "
                         "use another --data_dir, or --force to redo it")


def stage_settings(conf: Mapping[str, Any], stage: str) -> dict[str, Any]:
    """The config values that shape `stage`'s own output (as JSON values)."""
    keys = [k for k in STAGE_KEYS[stage] if k in conf and conf["source"] in _ONLY_FOR_SOURCE.get(k, (conf["source"],))]
    return json.loads(json.dumps({k: conf[k] for k in keys}))


def _recorded(layout: DataLayout, stage: str) -> dict[str, Any] | None:
    try:
        data = json.loads(layout.settings(stage).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {"settings file": "unreadable"}
    return data if isinstance(data, dict) else {"settings file": "not a JSON object"}


def settings_record(conf: Mapping[str, Any], layout: DataLayout, stage: str) -> dict[str, Any]:
    """What the stage's output made now is made with: its own settings and those recorded by the stage it reads."""
    i = STAGES.index(stage)
    upstream = (_recorded(layout, STAGES[i - 1]) or {}) if i else {}
    return {**upstream, **stage_settings(conf, stage)}


def record_settings(conf: Mapping[str, Any], layout: DataLayout, stage: str) -> None:
    """Write `settings_record` once the stage's output is done, for later runs to compare with."""
    atomic_write_text(layout.settings(stage), json.dumps(settings_record(conf, layout, stage), indent=2))


def changed_settings(conf: Mapping[str, Any], layout: DataLayout, stage: str) -> list[str]:
    """`key then -> now` for each setting the stage's output was made with that differs from this config
    (its own keys) or from the output of the stage before it, since remade. [] when they agree or when
    the output predates recorded settings."""
    then = _recorded(layout, stage)
    if then is None:
        return []
    then = {**{k: v for k, v in _IMPLIED_BEFORE.items() if k in STAGE_KEYS[stage]}, **then}
    now = stage_settings(conf, stage)
    own = set(STAGE_KEYS[stage])
    changed = [f"{k} {then.get(k)!r} -> {now.get(k)!r}" for k in sorted(set(now) | (set(then) & own))
               if then.get(k) != now.get(k)]
    i = STAGES.index(stage)
    before = _recorded(layout, STAGES[i - 1]) if i else None
    if before is not None:
        upstream = {k: v for k, v in then.items() if k not in own}
        changed += [f"{k} {upstream.get(k)!r} -> {before.get(k)!r} ({STAGES[i - 1]} was redone since)"
                    for k in sorted(set(upstream) | set(before)) if upstream.get(k) != before.get(k)]
    return changed


def check_stages(conf: Mapping[str, Any], layout: DataLayout, stages: Iterable[str] = STAGES) -> None:
    """Refuse (StaleOutput, one line) when an existing output of `stages` was made with other settings."""
    for stage in stages:
        out = stage_output(layout, stage)
        changed = changed_settings(conf, layout, stage) if out.exists() else []
        if changed:
            raise StaleOutput(stage, out, changed)


def pending(layout: DataLayout, stages: Iterable[str], share: Share | None = None) -> None:
    """Refuse (PartError) to run `stages` while worker parts of one of them, or of a stage before them,
    are waiting for `merge`: their output would be missing or stale. A worker of a stage may of course
    add to that stage's own parts."""
    stages = list(stages)
    last = max(STAGES.index(s) for s in stages)
    for stage in PART_STAGES:
        if STAGES.index(stage) > last or not layout.parts(stage).is_dir() or not any(layout.parts(stage).iterdir()):
            continue
        if share is not None and stages == [stage]:
            continue
        where = layout.show(layout.parts(stage))
        merge = f"python -m tokenizer merge --data_dir {layout.data_dir_arg}"
        if share is None and stages[-1] == stage and len(stages) == 1:
            raise PartError(f"{stage}: worker parts in {where} ({status(layout, stage)}) wait for `{merge}`: "
                            f"merge them, or remove {where} to run {stage} in one process")
        raise PartError(f"the {stage} worker parts in {where} are not merged yet ({status(layout, stage)}): "
                        f"finish them and run `{merge}` first")
