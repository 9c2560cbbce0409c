"""Bitrate vs quality of the tokenizer: one VQ-VAE per (time_downsample, tokens_per_step).

    python bench/bitrate_table.py --configs defaults audio --data_dir data --vq_steps 3000 \
        --grid 4x1 4x2 4x4 8x4 2x4

Needs a prepared data_dir (`python -m tokenizer prepare`). Each setting trains in its own
folder beside it (log-mels shared by a link) and is evaluated on the test split; every
setting is also its own MLflow run, so the curves can be compared in `mlflow ui`.
Prints a markdown table (bits/s, lsd_db, mse, pearson, codebook usage, perplexity).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime.config import Config, parse_args  # noqa: E402
from tokenizer.layout import DataLayout  # noqa: E402
from tokenizer.stages import run_stage  # noqa: E402


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", nargs="+", default=["4x1", "4x2", "4x4", "8x4", "2x4"],
                        help="time_downsample x tokens_per_step settings")
    parser.add_argument("--out", default="", help="also write the rows as JSON here")
    conf, args = parse_args(argv, parser)
    source = DataLayout.of(conf.data_dir)
    if not source.manifest.is_file():
        sys.exit(f"{source.manifest} not found: run `python -m tokenizer prepare` for {conf.data_dir} first")
    rows = []
    for setting in args.grid:
        ds, g = (int(x) for x in setting.split("x"))
        folder = source.root.parent / f"{source.root.name}-bitrate-{ds}x{g}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        (folder / "mels").symlink_to((source.root / "mels").resolve())
        shutil.copy(source.manifest, folder / "manifest.json")
        c = Config(conf, data_dir=str(folder), time_downsample=ds, tokens_per_step=g)
        for stage in ("train", "evaluate"):
            run_stage(c, DataLayout.of(c.data_dir), stage, force=True)
        m = json.loads(DataLayout.of(folder).metrics.read_text())
        rows.append({"time_downsample": ds, "tokens_per_step": g, **m})
    cols = ("bits_per_second", "lsd_db", "mse", "pearson", "psnr", "codebook_usage", "perplexity")
    print("\n| downsample x tokens/step | " + " | ".join(cols) + " |")
    print("|" + "---|" * (len(cols) + 1))
    for r in sorted(rows, key=lambda r: r["bits_per_second"]):
        print(f"| {r['time_downsample']} x {r['tokens_per_step']} | " + " | ".join(f"{r[c]:.4g}" for c in cols) + " |")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
