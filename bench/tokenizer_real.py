"""The tokenizer recipe on a folder of real recordings: one row of metrics per setting.

    python bench/tokenizer_real.py --data_root ../shared/real_speech/fsdd-dev [--vq_steps 1500] \
        [--data_dir /tmp/tokenizer-real] [--variants recipe short] [--configs defaults audio] [--key value ...]

Prepares the folder once (`folder` source, speaker = group 1 of `--speaker_regex`, by
default `^[0-9]+_([a-z]+)_` as in `<digit>_<speaker>_<take>.wav`), then for each variant
trains, encodes and evaluates in its own folder beside `data_dir` (log-mels shared by a
link), each its own MLflow run. Prints a markdown table: lsd_db, lsd_db_band (over the
mel bins that carry signal), codebook usage, perplexity, what encode kept, and training
speed. A variant is a config section merged after `--configs` (`short`), `recipe` (none),
or `name:key=value,key=value` (e.g. `nopack:vq_pack_crops=false`).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime.config import Config, apply_overrides, load_sections, merge_sections, parse_args  # noqa: E402
from tokenizer.layout import DataLayout  # noqa: E402
from tokenizer.stages import run_stage  # noqa: E402

DEFAULT_REGEX = "^[0-9]+_([a-z]+)_"


def variant_conf(conf: dict, variant: str) -> dict:
    """The run's config with one variant applied: a section name, `recipe`, or `name:key=value,...`."""
    if variant == "recipe":
        return dict(conf)
    if ":" in variant:
        _, pairs = variant.split(":", 1)
        overrides = [x for kv in pairs.split(",") if kv for x in ("--" + kv.split("=", 1)[0], kv.split("=", 1)[1])]
        return dict(apply_overrides(Config(conf), overrides))
    sections = load_sections()
    if variant not in sections:
        sys.exit(f"variant {variant!r}: not a config section ({', '.join(sections)}), 'recipe' or name:key=value,...")
    merged = merge_sections({"defaults": dict(conf), variant: sections[variant]}, ["defaults", variant])
    return dict(merged)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=["recipe", "short"],
                        help="settings to compare: 'recipe', a config section, or name:key=value,key=value")
    parser.add_argument("--out", default="", help="also write the rows as JSON here")
    argv = sys.argv[1:]
    if "--speaker_regex" not in argv:
        argv += ["--speaker_regex", DEFAULT_REGEX]
    if "--speaker_rule" not in argv:
        argv += ["--speaker_rule", "regex"]
    if "--data_dir" not in argv:
        argv += ["--data_dir", "/tmp/tokenizer-real"]
    if "--configs" not in argv:
        argv += ["--configs", "defaults", "audio"]
    conf, args = parse_args(argv + ["--source", "folder"], parser)
    if not conf["data_root"] or not Path(conf["data_root"]).is_dir():
        sys.exit(f"--data_root {conf['data_root']!r}: not a folder of recordings")
    source = DataLayout.of(conf["data_dir"])
    run_stage(dict(conf), source, "prepare")
    bandwidth = json.loads(source.manifest.read_text()).get("bandwidth", {})
    rows = []
    for variant in args.variants:
        name = variant.split(":", 1)[0]
        c = variant_conf(conf, variant)
        folder = source.root.parent / f"{source.root.name}-{name}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        (folder / "mels").symlink_to((source.root / "mels").resolve())
        shutil.copy(source.manifest, folder / "manifest.json")
        c["data_dir"] = str(folder)
        layout = DataLayout.of(folder)
        t0 = time.time()
        run_stage(c, layout, "train", force=True)
        train_s = time.time() - t0
        for stage in ("encode", "evaluate"):
            run_stage(c, layout, stage, force=True)
        m = json.loads(layout.metrics.read_text())
        meta = json.loads(layout.token_meta.read_text())
        rows.append({"variant": variant, "min_steps": c["min_steps"], "vq_segment_frames": c["vq_segment_frames"],
                     "steps_per_s": c["vq_steps"] / train_s, "kept": meta["splits"], "dropped": meta["dropped_short"],
                     "warnings": meta.get("warnings", []), **m})
    print(f"\n{conf['data_root']}: {conf['vq_steps']} training steps, configs {' '.join(conf['configs'])}; "
          f"band {bandwidth.get('signal_mel_bins', '?')} of {conf['n_mels']} mel bins (up to "
          f"{bandwidth.get('effective_hz', float('nan')) / 1000:.1f} kHz); test split {rows[0]['utterances'] if rows else 0} utterances\n")
    print("| variant | lsd_db | lsd_db_band | codebook_usage | perplexity | dead_codes | mse | encode kept (train/val/test) | train steps/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        kept = "/".join(str(r["kept"][s]) for s in ("train", "val", "test"))
        print(f"| {r['variant']} (min_steps {r['min_steps']}, crop {r['vq_segment_frames']}) | {r['lsd_db']:.2f} | "
              f"{r['lsd_db_band']:.2f} | {r['codebook_usage']:.3f} | {r['perplexity']:.0f} | {r['dead_codes']} | "
              f"{r['mse']:.3f} | {kept} | {r['steps_per_s']:.2f} |")
    for r in rows:
        for w in r["warnings"]:
            print(f"{r['variant']}: {w}")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
