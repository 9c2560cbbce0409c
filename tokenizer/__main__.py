"""python -m tokenizer prepare|train|encode|evaluate|all|merge --configs defaults audio [--force] [--key value ...]

On several hosts sharing one data folder: `prepare --worker i --n_workers N` on each, then `merge`
on one; the same for `encode` (see tokenizer/parts.py). The data folder may be a bucket
(`--data_dir s3://bucket/prefix`): each stage then runs in this host's copy of it and sends back
what it wrote (tokenizer/bucket.py).

`train` also runs under torchrun (`torchrun --standalone --nproc_per_node N -m tokenizer train ...`):
N ranks train the VQ-VAE with DistributedDataParallel (see tokenizer/train.py); rank 0 alone logs
and writes. The other stages run in one process."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from runtime.config import parse_args
from runtime.config_reference import add_config_help
from runtime.storage import is_remote
from tokenizer.layout import DataLayout
from tokenizer.parts import PART_STAGES, PartError, share_from_args
from tokenizer.records import STAGES, StaleOutput, check_stages, pending

if TYPE_CHECKING:  # torch and mlflow are imported where a stage runs: --help and a refused command start fast
    from runtime.distributed import Ranks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tokenizer",
        description="Audio -> log-mel -> VQ-VAE tokens. Stages: prepare (decode, features, split), "
                    "train (the VQ-VAE), encode (token shards), evaluate (metrics.json); 'all' runs them in order. "
                    "On several hosts: prepare or encode with --worker i --n_workers N on each, then 'merge' on one.",
        epilog="Any config key can be overridden: --data_dir /tmp/tok --source folder --data_root DIR ...",
    )
    parser.add_argument("stage", choices=(*STAGES, "all", "merge"))
    parser.add_argument("--force", action="store_true", help="redo the stage even if its output exists")
    parser.add_argument("--worker", type=int, default=None, metavar="I",
                        help="prepare/encode: do only share I of --n_workers (utterances, or log-mel shards for encode, "
                             "whose number %% N == I) into <data_dir>/parts/<stage>/; 'merge' assembles the parts")
    parser.add_argument("--n_workers", type=int, default=None, metavar="N", help="how many workers share the stage")
    conf, args = parse_args(argv, add_config_help(parser), writes=("data_dir", "mlflow_dir"))
    prog = f"{parser.prog} {args.stage}"
    from runtime.distributed import Ranks

    try:  # every check before anything is written
        share = share_from_args(args.worker, args.n_workers)
        if share is not None and args.stage not in PART_STAGES:
            raise PartError(f"--worker/--n_workers share {' and '.join(PART_STAGES)} only; run {args.stage} in one process")
        ranks = Ranks.from_env()
        if ranks.distributed and (args.stage != "train" or share is not None):
            raise PartError(f"under torchrun ({ranks.world_size} ranks) only `train` runs; run {args.stage} "
                            "in one process (python -m tokenizer ...)")
    except PartError as e:
        parser.exit(2, f"{prog}: error: {e}\n")
    bucket = str(conf["data_dir"]) if is_remote(str(conf["data_dir"])) else None
    if bucket is None:
        return _run(conf, args, share, ranks, parser, prog, None)
    from tokenizer.bucket import fetch_for_stage, send_back

    try:  # the stage runs in this host's copy of the bucket's data_dir, which is sent back if it succeeds
        conf["data_dir"] = str(fetch_for_stage(bucket, args.stage, share))
    except OSError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    code = _run(conf, args, share, ranks, parser, prog, bucket)
    if code != 0 or not ranks.is_main:
        return code
    try:
        print(send_back(Path(conf["data_dir"]), bucket), flush=True)
    except OSError as e:
        print(f"{prog}: error: {e}: the output is kept in {conf['data_dir']}; run the same command again "
              "to send it (a finished stage is skipped, as always)", file=sys.stderr)
        return 1
    return 0


def _run(conf, args: argparse.Namespace, share, ranks: Ranks, parser: argparse.ArgumentParser, prog: str,
         bucket: str | None) -> int:
    """The stage(s) on a local data_dir (`bucket`: the one it is a copy of); the exit status."""
    from runtime.lease import LeaseHeld
    from tokenizer.stages import run_part, run_stage, stages_lease

    layout = DataLayout.of(conf["data_dir"], origin=bucket)
    if args.stage == "merge":
        return _merge(conf, layout, prog)
    stages = STAGES if args.stage == "all" else (args.stage,)
    try:
        if not args.force:  # output made with other settings is never reused
            check_stages(conf, layout, stages)
        pending(layout, stages, share)  # nor output whose worker parts are not merged yet
    except (StaleOutput, PartError) as e:
        parser.exit(2, f"{prog}: error: {e}\n")
    if ranks.distributed:
        return _train_ranks(conf, layout, ranks, args.force, prog)
    try:
        if share is not None:
            run_part(conf, layout, args.stage, share, force=args.force)
        else:
            with stages_lease(layout):  # one process writes data_dir's stages at a time
                for stage in stages:
                    run_stage(conf, layout, stage, force=args.force)
    except LeaseHeld as e:
        print(f"{prog}: error: {e}: wait for it to finish (a finished stage is then skipped)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130
    except PartError as e:  # parts of another worker count or other settings: nothing was written
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # one clear line, not a traceback, for what the user can fix
        return _one_line(e, prog)
    return 0


def _train_ranks(conf, layout: DataLayout, ranks: Ranks, force: bool, prog: str) -> int:
    """`train` as one of torchrun's ranks: join the process group, train in step, leave together."""
    import signal

    from runtime import distributed
    from runtime.device import resolve_device
    from runtime.processes import rank_threads, set_torch_threads
    from tokenizer.stages import run_train_ranks

    set_torch_threads(rank_threads(ranks.local_world_size))  # this rank's share of the host's cores
    device = distributed.rank_device(resolve_device(conf["device"]), ranks)
    distributed.init(ranks, device)
    try:
        try:
            run_train_ranks(conf, layout, ranks, device, force=force, echo=print if ranks.is_main else (lambda _: None))
        except KeyboardInterrupt:
            print(f"{prog}: [rank {ranks.rank}] interrupted", file=sys.stderr)
            return 130
        except Exception as e:  # torchrun stops the other ranks when one exits with an error
            return _one_line(e, f"{prog} [rank {ranks.rank}]")
        # rank 0 may still be logging examples: leave together, and let a SIGTERM not cut that short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        distributed.agree(0, device)
        return 0
    finally:
        distributed.shutdown()


def _merge(conf, layout: DataLayout, prog: str) -> int:
    from tokenizer.stages import merge_parts

    try:
        merge_parts(conf, layout)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted (the parts are kept: merge again)", file=sys.stderr)
        return 130
    except PartError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        return _one_line(e, prog)
    return 0


def _one_line(e: Exception, prog: str) -> int:
    if isinstance(e, (FileNotFoundError, ValueError, OSError)) or type(e).__name__ in ("CorpusError", "NothingUsable"):
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    raise e


if __name__ == "__main__":
    sys.exit(main())
