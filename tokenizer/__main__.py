"""python -m tokenizer prepare|train|encode|evaluate|all --configs defaults audio [--force] [--key value ...]"""
from __future__ import annotations

import argparse
import sys

from runtime.config import parse_args
from tokenizer.layout import DataLayout
from tokenizer.stages import STAGES, StaleOutput, check_stages, run_stage


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tokenizer",
        description="Audio -> log-mel -> VQ-VAE tokens. Stages: prepare (decode, features, split), "
                    "train (the VQ-VAE), encode (token shards), evaluate (metrics.json); 'all' runs them in order.",
        epilog="Any config key can be overridden: --data_dir /tmp/tok --source folder --data_root DIR ...",
    )
    parser.add_argument("stage", choices=(*STAGES, "all"))
    parser.add_argument("--force", action="store_true", help="redo the stage even if its output exists")
    conf, args = parse_args(argv, parser)
    stages = STAGES if args.stage == "all" else (args.stage,)
    layout = DataLayout.of(conf["data_dir"])
    if not args.force:  # before anything is written: output made with other settings is never reused
        try:
            check_stages(conf, layout, stages)
        except StaleOutput as e:
            parser.exit(2, f"{parser.prog} {args.stage}: error: {e}\n")
    try:
        for stage in stages:
            run_stage(conf, layout, stage, force=args.force)
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # one clear line, not a traceback, for what the user can fix
        if isinstance(e, (FileNotFoundError, ValueError, OSError)) or type(e).__name__ in ("CorpusError", "NothingUsable"):
            print(f"{parser.prog} {args.stage}: error: {e}", file=sys.stderr)
            return 1
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
