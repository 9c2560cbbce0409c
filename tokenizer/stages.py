"""The tokenizer's stages in order, each skipped when its output exists (unless forced).

Output made with other settings is refused, never reused (tokenizer/records.py). All stages of
one `data_dir` log into one MLflow run (its id kept in `<data_dir>/tokenizer/mlflow_run_id`), so
prepare's counts, training curves and test metrics of a tokenizer sit side by side.
"""
from __future__ import annotations

import errno
import json
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import mlflow
import torch

from runtime import distributed
from runtime.distributed import Ranks
from runtime.lease import Lease, describe
from runtime.tracking import find_run, setup_mlflow, start_or_resume_run
from tokenizer import encode, evaluate, prepare, train
from tokenizer.layout import DataLayout
from tokenizer.parts import PART_STAGES, PartError, Share, status
from tokenizer.records import check_stages, pending, record_settings, stage_output


@contextmanager
def tokenizer_run(conf: Mapping[str, Any], layout: DataLayout) -> Iterator[str]:
    """Start or continue the data folder's tokenizer run (nested under an active run, e.g. launch.py's)."""
    setup_mlflow(conf)
    id_file = layout.tokenizer_dir / "mlflow_run_id"
    run_id = id_file.read_text().strip() if id_file.is_file() else None
    if run_id and find_run(run_id) is None:  # a different tracking store, or a deleted run: start afresh
        run_id = None
    tags = {"component": "tokenizer", "data_dir": layout.origin or str(layout.root.resolve())}
    name = f"tokenizer-{Path(tags['data_dir'].rstrip('/')).name}"  # named after its data folder: tokenizer-data-small
    with start_or_resume_run(conf, run_id, run_name=name, nested=mlflow.active_run() is not None,
                             tags=tags) as run:
        if not run_id:
            id_file.parent.mkdir(parents=True, exist_ok=True)
            id_file.write_text(run.info.run_id)
        yield run.info.run_id


def _run_prepare(conf: Mapping[str, Any], layout: DataLayout) -> str:
    return _prepare_report(prepare.prepare(conf, layout), layout)


def _prepare_report(manifest: Mapping[str, Any], layout: DataLayout) -> str:
    if mlflow.active_run():
        mlflow.log_metrics({
            "tokenizer/prepare_utterances": manifest["utterances_kept"],
            "tokenizer/prepare_skipped": manifest["skipped_count"],
            "tokenizer/prepare_hours": sum(v["seconds"] for v in manifest["splits"].values()) / 3600,
        })
        mlflow.log_artifact(str(layout.manifest), "tokenizer")
    return prepare.summary_line(manifest, str(layout.manifest))


def _run_train(conf: Mapping[str, Any], layout: DataLayout) -> str:
    return f"train: saved {train.train(conf, layout)}"


def _run_encode(conf: Mapping[str, Any], layout: DataLayout) -> str:
    return _encode_report(encode.encode(conf, layout), layout)


def _encode_report(meta: Mapping[str, Any], layout: DataLayout) -> str:
    if mlflow.active_run():
        mlflow.log_metrics({"tokenizer/encode_realtime_factor": meta["encode_realtime_factor"],
                            **{f"tokenizer/encode_dropped_short_{s}": n for s, n in meta["dropped_short"].items()}})
        if meta.get("warnings"):
            mlflow.set_tag("tokenizer.encode_warning", "\n".join(meta["warnings"])[:5000])
    kept = " / ".join(f"{s} {n}" for s, n in meta["splits"].items())
    dropped = sum(meta["dropped_short"].values())
    line = (f"encode: {kept} utterances at {meta['bits_per_second']:.0f} bit/s, {meta['encode_realtime_factor']:.0f}x real time; "
            f"dropped {dropped} shorter than {meta['min_steps']} steps -> {layout.token_meta.parent}")
    return "\n".join([line, *meta.get("warnings", [])])


def _run_evaluate(conf: Mapping[str, Any], layout: DataLayout) -> str:
    m = evaluate.evaluate(conf, layout)
    keys = ("mse", "psnr", "pearson", "lsd_db", "lsd_db_band", "codebook_usage", "perplexity", "dead_codes", "bits_per_second")
    return "evaluate: " + ", ".join(f"{k} {m[k]:.4g}" for k in keys) + f" -> {layout.metrics}"


RUNNERS: dict[str, Callable[[Mapping[str, Any], DataLayout], str]] = {
    "prepare": _run_prepare, "train": _run_train, "encode": _run_encode, "evaluate": _run_evaluate,
}


def run_stage(conf: Mapping[str, Any], layout: DataLayout, stage: str, force: bool = False,
              echo: Callable[[str], None] = print) -> bool:
    """Run one stage unless its output exists (made with these settings, else StaleOutput); returns whether it ran."""
    out = stage_output(layout, stage)
    if out.exists() and not force:
        check_stages(conf, layout, (stage,))
        echo(f"{stage}: {out} exists; skipping (--force redoes it)")
        return False
    try:
        with tokenizer_run(conf, layout):
            echo(RUNNERS[stage](conf, layout))
        record_settings(conf, layout, stage)
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        where = e.filename or layout.root
        raise OSError(errno.ENOSPC, f"{stage}: no space left on the device of {where}: free space there (or use "
                                    f"another --data_dir), then run again; the stages finished before are kept",
                      str(where)) from None
    return True


def run_train_ranks(conf: Mapping[str, Any], layout: DataLayout, ranks: Ranks, device: torch.device,
                    force: bool = False, echo: Callable[[str], None] = print) -> bool:
    """`run_stage(..., "train")` on every rank of a torchrun group (process group joined): rank 0 decides
    whether to train, and alone opens the MLflow run, writes the checkpoint and the settings record and
    echoes; the other ranks only train beside it."""
    out = stage_output(layout, "train")
    skip = distributed.broadcast(bool(out.exists() and not force) if ranks.is_main else None, device)
    if skip:
        if ranks.is_main:
            check_stages(conf, layout, ("train",))
            echo(f"train: {out} exists; skipping (--force redoes it)")
        return False
    if not ranks.is_main:
        train.train(conf, layout, ranks, device)
        return True
    with tokenizer_run(conf, layout):
        if mlflow.active_run():
            mlflow.set_tag("tokenizer.train_ranks", str(ranks.world_size))
        echo(f"train: saved {train.train(conf, layout, ranks, device)} ({ranks.world_size} ranks: effective batch "
             f"{ranks.world_size * conf['vq_batch_size']} crops)")
    record_settings(conf, layout, "train")
    return True


def ensure_tokens(conf: Mapping[str, Any], layout: DataLayout, echo: Callable[[str], None] = print) -> Path:
    """Run whichever of prepare, train, encode are missing for `data_dir`; returns the tokens folder.
    Output made with other settings is refused (StaleOutput), never used; so are worker parts not
    merged yet (PartError)."""
    check_stages(conf, layout, ("prepare", "train", "encode"))
    pending(layout, ("prepare", "train", "encode"))
    if not layout.has_tokens():
        with stages_lease(layout):  # LeaseHeld when another process is making them
            for stage in ("prepare", "train", "encode"):
                run_stage(conf, layout, stage, echo=echo)
    return layout.token_meta.parent


def stages_lease(layout: DataLayout) -> Lease:
    """The one lease of the processes that write `data_dir` as a whole (two launches making the same tokens would
    both train a VQ-VAE and overwrite each other's); worker parts are made side by side, each in its own folder."""
    return Lease(layout.stages_lease, f"the tokenizer stages writing {layout.data_dir_arg}")


def stages_busy(layout: DataLayout) -> str | None:
    """Who is writing `data_dir`'s stages now (one line), or None."""
    holder = stages_lease(layout).holder()
    return describe(stages_lease(layout).what, holder) if holder else None


# ---- on several hosts: `--worker i --n_workers N`, then `merge` (see tokenizer/parts.py) ----------------

def run_part(conf: Mapping[str, Any], layout: DataLayout, stage: str, share: Share, force: bool = False,
             echo: Callable[[str], None] = print) -> bool:
    """This worker's share of prepare or encode, into `<data_dir>/parts/<stage>/w{i}of{N}/`; returns whether
    it ran. Skipped when the stage's output exists (unless forced) or this part is complete already.
    Workers log nothing to MLflow: `merge` does."""
    out = stage_output(layout, stage)
    if out.exists() and not force:
        check_stages(conf, layout, (stage,))
        echo(f"{stage}: {out} exists; skipping (--force redoes this share, as a part for merge)")
        return False
    module = {"prepare": prepare, "encode": encode}[stage]
    maker = {"prepare": prepare.prepare_part, "encode": encode.encode_part}[stage]
    folder = share.folder(layout, stage)
    record = maker(conf, layout, share, force)
    if record is None:
        echo(f"{stage}: part {folder} is complete; skipping (--force redoes it)")
    else:
        echo(module.part_summary_line(record, folder))
    state = status(layout, stage)
    then = (f"merge with `python -m tokenizer merge --data_dir {layout.data_dir_arg}`" if state.startswith("all")
            else "merge once every worker is done")
    echo(f"{stage}: {state}; {then}")
    return record is not None


def merge_parts(conf: Mapping[str, Any], layout: DataLayout, echo: Callable[[str], None] = print) -> list[str]:
    """Assemble the worker parts of prepare, then of encode (whichever are there) into the stage's output,
    as one process writes it, log the stage to the data folder's MLflow run, and remove the parts.
    Returns the stages merged; PartError when there is nothing to merge or the parts do not fit."""
    stages = [s for s in PART_STAGES if layout.parts(s).is_dir() and any(layout.parts(s).iterdir())]
    if not stages:
        raise PartError(f"merge: nothing to merge: no worker parts in {layout.show(layout.root / 'parts')} "
                        "(`prepare` or `encode` with --worker i --n_workers N makes them)")
    # The run's params: the settings the parts were made with, not this command's config (which need
    # not repeat the workers' --configs); the later stages add theirs.
    tracking = {k: conf[k] for k in ("data_dir", "mlflow_dir", "experiment", "run_name") if k in conf}
    for stage in stages:
        merge, report = {"prepare": (prepare.merge_prepare, _prepare_report), "encode": (encode.merge_encode, _encode_report)}[stage]
        output = merge(layout)
        with tokenizer_run({**tracking, **json.loads(layout.settings(stage).read_text())}, layout):
            echo("merge: " + report(output, layout))
        try:
            shutil.rmtree(layout.parts(stage))
            layout.parts(stage).parent.rmdir()  # only when no other stage's parts are left
        except OSError as e:
            if layout.parts(stage).exists():
                echo(f"merge: WARNING: could not remove {layout.parts(stage)} ({e}); remove it by hand, "
                     "or the next stages refuse to start")
    return stages
