"""The tokenizer's stages in order, each skipped when its output exists (unless forced).

All stages of one `data_dir` log into one MLflow run (its id kept in
`<data_dir>/tokenizer/mlflow_run_id`), so prepare's counts, training curves and test
metrics of a tokenizer sit side by side.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import mlflow

from runtime.tracking import find_run, setup_mlflow, start_or_resume_run
from tokenizer.layout import DataLayout

STAGES = ("prepare", "train", "encode", "evaluate")


def stage_output(layout: DataLayout, stage: str) -> Path:
    """The file whose presence means the stage is done (each is written last, atomically)."""
    return {"prepare": layout.manifest, "train": layout.vqvae, "encode": layout.token_meta, "evaluate": layout.metrics}[stage]


@contextmanager
def tokenizer_run(conf: Mapping[str, Any], layout: DataLayout) -> Iterator[str]:
    """Start or continue the data folder's tokenizer run (nested under an active run, e.g. launch.py's)."""
    setup_mlflow(conf)
    id_file = layout.tokenizer_dir / "mlflow_run_id"
    run_id = id_file.read_text().strip() if id_file.is_file() else None
    if run_id and find_run(run_id) is None:  # a different tracking store, or a deleted run: start afresh
        run_id = None
    tags = {"component": "tokenizer", "data_dir": str(layout.root.resolve())}
    with start_or_resume_run(conf, run_id, run_name="tokenizer", nested=mlflow.active_run() is not None,
                             tags=tags) as run:
        if not run_id:
            id_file.parent.mkdir(parents=True, exist_ok=True)
            id_file.write_text(run.info.run_id)
        yield run.info.run_id


def _run_prepare(conf: Mapping[str, Any], layout: DataLayout) -> str:
    from tokenizer.prepare import prepare, summary_line

    manifest = prepare(conf, layout)
    if mlflow.active_run():
        mlflow.log_metrics({
            "tokenizer/prepare_utterances": manifest["utterances_kept"],
            "tokenizer/prepare_skipped": manifest["skipped_count"],
            "tokenizer/prepare_hours": sum(v["seconds"] for v in manifest["splits"].values()) / 3600,
        })
        mlflow.log_artifact(str(layout.manifest), "tokenizer")
    return summary_line(manifest, str(layout.manifest))


def _run_train(conf: Mapping[str, Any], layout: DataLayout) -> str:
    from tokenizer.train import train

    return f"train: saved {train(conf, layout)}"


def _run_encode(conf: Mapping[str, Any], layout: DataLayout) -> str:
    from tokenizer.encode import encode

    meta = encode(conf, layout)
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
    from tokenizer.evaluate import evaluate

    m = evaluate(conf, layout)
    keys = ("mse", "psnr", "pearson", "lsd_db", "lsd_db_band", "codebook_usage", "perplexity", "dead_codes", "bits_per_second")
    return "evaluate: " + ", ".join(f"{k} {m[k]:.4g}" for k in keys) + f" -> {layout.metrics}"


RUNNERS: dict[str, Callable[[Mapping[str, Any], DataLayout], str]] = {
    "prepare": _run_prepare, "train": _run_train, "encode": _run_encode, "evaluate": _run_evaluate,
}


def run_stage(conf: Mapping[str, Any], layout: DataLayout, stage: str, force: bool = False,
              echo: Callable[[str], None] = print) -> bool:
    """Run one stage unless its output exists; returns whether it ran."""
    out = stage_output(layout, stage)
    if out.exists() and not force:
        echo(f"{stage}: {out} exists; skipping (--force redoes it)")
        return False
    with tokenizer_run(conf, layout):
        echo(RUNNERS[stage](conf, layout))
    return True


def ensure_tokens(conf: Mapping[str, Any], layout: DataLayout, echo: Callable[[str], None] = print) -> Path:
    """Run whichever of prepare, train, encode are missing for `data_dir`; returns the tokens folder."""
    if not layout.has_tokens():
        for stage in ("prepare", "train", "encode"):
            run_stage(conf, layout, stage, echo=echo)
    return layout.token_meta.parent
