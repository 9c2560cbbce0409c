"""A finished (or running) launch.py run, opened again by the commands that work on it (evaluate, dream).

One place says what a run carries and how to get it back from its id alone: the merged config
(its params), the world-model checkpoint (`checkpoints/latest.pt` in the replay store), and the
tokenizer it was trained with (the VQ-VAE checkpoint and the token corpus' meta.json, logged as
run artifacts under `tokenizer/` by launch.py, with their SHA-256 as tags), so `dream` decodes
with the very tokenizer whose tokens the model learned, also when `data_dir` has changed since.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from pydreamer.replay_layout import CHECKPOINTS, checkpoint_path
from runtime.files import file_sha256

if TYPE_CHECKING:  # torch is imported where a model is built: compare and the run helpers start without it
    import torch

log = logging.getLogger(__name__)

TOKENIZER_ARTIFACTS = "tokenizer"  # artifact folder: vqvae.pt and meta.json
VQVAE_NAME = "vqvae.pt"
META_NAME = "meta.json"
SHA_TAG = "tokenizer.weights_sha256"  # of the weights (tokenizer/vqvae.py weights_sha256), not the file's bytes
LEGACY_SHA_TAG = "tokenizer.vqvae_sha256"  # runs from before: the file's bytes
PATH_TAG = "tokenizer.vqvae_path"


class RunError(ValueError):
    """What stops a command before it computes anything (unknown run, no checkpoint, ...): one line, exit 2."""


def run_command(parser: argparse.ArgumentParser, body: Callable[[argparse.Namespace], int],
                argv: list[str] | None = None, log_steps: bool = True) -> int:
    """Parse, then run `body`; a RunError ends the command as a bad command line does (one line, exit 2)."""
    args = parser.parse_args(argv)
    if log_steps:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        return body(args)
    except RunError as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")


def run_config(run, resumed: bool = False) -> dict:
    """The run's merged config, rebuilt from its params with each key's type from defaults.yaml. With `resumed`, as
    it last trained: the keys a resume changed (`--dream_seconds 2` at a resume), which MLflow params cannot hold,
    from the tag RESUMED_TAG; without it, the params alone (what pydreamer/resume.py compares a resume against)."""
    import json

    from runtime.config import coerce, load_config

    conf = load_config(["defaults"])
    conf.update({k: v for k, v in BEFORE_KEY.items() if k not in run.data.params})
    for key, text in run.data.params.items():
        if key in conf:
            conf[key] = coerce(key, text, conf[key]) if not isinstance(conf[key], str) else text
    if resumed:
        conf.update({k: v for k, v in json.loads(run.data.tags.get(RESUMED_TAG) or "{}").items() if k in conf})
    return conf


RESUMED_TAG = "config.resumed"  # pydreamer/resume.py's (which imports this module): JSON of what resumes changed


# A run recorded before a key existed gets the value that reproduces what its code did.
BEFORE_KEY = {"forecast_head": False, "token_head": "independent", "overshoot_steps": 0,
              "wm_objective": "reconstruction", "dream_imagination": "latent", "vocoder": "griffinlim",
              "dream_perceptual": False, "dream_end": False,
              "condition_heads": False}


def open_run(run_id: str, mlflow_dir: str = "mlruns"):
    """(run, config) of `run_id` in the tracking store (MLFLOW_TRACKING_URI wins over `mlflow_dir`)."""
    from runtime.tracking import find_run, setup_mlflow, tracking_uri

    store = {"mlflow_dir": mlflow_dir, "experiment": "audio-world-model"}
    setup_mlflow(store)
    run = find_run(run_id)
    if run is None:
        raise RunError(f"no MLflow run '{run_id}' in {tracking_uri(store)}")
    return run, run_config(run, resumed=True)


def run_checkpoint(run, conf, which: str = "best", fetch_to: Path | str | None = None) -> tuple[Path, Path]:
    """(replay store, checkpoint path) of a run that has saved at least once.

    which="best": the weights with the lowest val eval/nll_h1 (model selection), or the latest
    when the run has kept none; "latest": the last saved (runs compared at equal steps).
    The checkpoint is read from the run's replay store (its `replay_dir` tag) when that is on this
    machine; else it is fetched from the run's artifacts `checkpoints/` (a tracking server that proxies
    artifacts, an object store) into `fetch_to` (default: a temporary folder), which is then returned
    as the replay store (outputs such as evaluation/ are written there and logged to the run).
    """

    from runtime.files import atomic_path
    from runtime.storage import is_remote

    replay_dir = run.data.tags.get("replay_dir")
    folder = Path(fetch_to) if fetch_to else None
    if replay_dir:
        for name in (("best", "latest") if which == "best" else ("latest",)):
            ckpt = checkpoint_path(replay_dir, name)
            if not ckpt.exists():
                continue
            if not is_remote(replay_dir):
                return Path(replay_dir), ckpt
            # a bucket store: the checkpoint is copied down, and outputs go to a local folder (logged to the run)
            folder = folder or Path(tempfile.mkdtemp(prefix=f"run-{run.info.run_id[:8]}-"))
            local = checkpoint_path(folder, name)
            local.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(local) as tmp:
                tmp.write_bytes(ckpt.read_bytes())
            log.info("run %s: checkpoint %s copied from its replay store into %s", run.info.run_id, ckpt, folder)
            return folder, local
    folder = folder or Path(tempfile.mkdtemp(prefix=f"run-{run.info.run_id[:8]}-"))
    fetched = fetch_checkpoints(run, folder)
    for name in (("best", "latest") if which == "best" else ("latest",)):
        if checkpoint_path(folder, name).name in fetched:
            log.info("run %s: checkpoint %s fetched from the run's artifacts (%s) into %s", run.info.run_id,
                     f"{CHECKPOINTS}/{checkpoint_path(folder, name).name}", run.info.artifact_uri, folder)
            return folder, checkpoint_path(folder, name)
    if not fetch_to:
        shutil.rmtree(folder, ignore_errors=True)
    where = f"its replay store {replay_dir} has none" if replay_dir and Path(replay_dir).is_dir() else \
        (f"its replay store {replay_dir} is not on this machine" if replay_dir else "it has no replay_dir tag")
    raise RunError(f"run {run.info.run_id} has no checkpoint: {where}, and its artifacts ({run.info.artifact_uri}) "
                   f"hold no {CHECKPOINTS}/{'best.pt or latest.pt' if which == 'best' else 'latest.pt'}. "
                   f"The learner saves one every save_interval={conf['save_interval']} learner steps: let the run "
                   f"get that far (python launch.py ... --resume_id {run.info.run_id})")




def fetch_checkpoints(run, folder: Path | str) -> list[str]:
    """Download the run's artifacts `checkpoints/latest.pt` and `checkpoints/best.pt` (those it has) into
    `<folder>/checkpoints/`, replacing older copies whole; returns the names fetched ([] when none)."""
    import mlflow


    try:
        names = {Path(f.path).name for f in mlflow.MlflowClient().list_artifacts(run.info.run_id, CHECKPOINTS)}
    except Exception as e:  # the artifact store cannot be listed: say so, as for a missing checkpoint
        log.warning("run %s: cannot list its artifacts %s/ (%s: %s)", run.info.run_id, CHECKPOINTS,
                    type(e).__name__, e)
        return []
    fetched = []
    for which in ("latest", "best"):
        target = checkpoint_path(folder, which)
        if target.name not in names:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".fetch-", dir=target.parent))
        try:
            path = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, dst_path=str(tmp),
                                                       artifact_path=f"{CHECKPOINTS}/{target.name}")
            os.replace(path, target)  # the same folder: a reader never sees half a checkpoint
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        fetched.append(target.name)
    return fetched


def load_model(ckpt_path: Path, conf, codebook_size: int, tokens_per_step: int, device: torch.device):
    """(Dreamer with the checkpoint's weights, in eval mode; the step it was saved at). The model is built as the
    checkpoint was trained (its model_args); one from before model_args were kept, from the run's config."""
    from pydreamer.models.checkpoint import build_model, load_checkpoint, restore

    ckpt = load_checkpoint(ckpt_path, map_location=device)
    dims = {"n_tokens": codebook_size, "tokens_per_step": tokens_per_step, "action_dim": 1}
    try:
        model = build_model(ckpt, conf, dims).to(device)
        step = restore(ckpt, model)
    except (ValueError, RuntimeError) as e:
        raise RunError(f"checkpoint {ckpt_path} does not fit the run's config: {str(e).splitlines()[0]}") from None
    if model.dims["n_tokens"] != codebook_size or model.dims["tokens_per_step"] != tokens_per_step:
        raise RunError(f"checkpoint {ckpt_path} was trained on {model.dims['n_tokens']} codes x "
                       f"{model.dims['tokens_per_step']} tokens per step; the tokens here are {codebook_size} x "
                       f"{tokens_per_step}")
    model.eval()
    return model, step


# ---- the tokenizer a run was trained with ------------------------------------------------

def record_tokenizer(run, vqvae: Path, meta: Path) -> str:
    """Log the tokenizer checkpoint and token meta as artifacts of the active run (once), tag their hash.

    On a resumed run whose artifact is already there nothing is copied; when `data_dir` now holds
    a different tokenizer the run keeps the one it started with, and the line returned says so.
    """
    import mlflow

    from tokenizer.vqvae import weights_sha256

    sha = weights_sha256(vqvae)
    old = run.data.tags.get(SHA_TAG)
    if not old and run.data.tags.get(LEGACY_SHA_TAG):  # a run from before: its tag is of the file
        old = sha if run.data.tags[LEGACY_SHA_TAG] == file_sha256(vqvae) else run.data.tags[LEGACY_SHA_TAG]
    if old and old != sha:
        return (f"WARNING: {vqvae} differs from the tokenizer this run started with (sha256 {old[:12]} vs "
                f"{sha[:12]}); the run keeps its artifact tokenizer/{VQVAE_NAME}, so dreams decode with the old one")
    if old == sha and _artifact_present(run):
        return f"tokenizer artifact already recorded (sha256 {sha[:12]})"
    mlflow.log_artifact(str(vqvae), TOKENIZER_ARTIFACTS)
    if meta.is_file():
        mlflow.log_artifact(str(meta), TOKENIZER_ARTIFACTS)
    mlflow.set_tags({SHA_TAG: sha, PATH_TAG: str(Path(vqvae).resolve())})
    return f"tokenizer {vqvae} recorded as artifact {TOKENIZER_ARTIFACTS}/{VQVAE_NAME} (sha256 {sha[:12]})"


def _artifact_present(run) -> bool:
    import mlflow

    try:
        names = {Path(f.path).name for f in mlflow.MlflowClient().list_artifacts(run.info.run_id, TOKENIZER_ARTIFACTS)}
    except Exception:
        return False
    return VQVAE_NAME in names


@dataclass(frozen=True)
class RunTokenizer:
    vqvae: Path
    meta: Path | None  # token meta.json (mel statistics, steps per second); None when the run has none
    where: str  # said in the output: which copy was used and why


def run_tokenizer(run, conf) -> RunTokenizer:
    """The run's own tokenizer: its artifact first (local folder, else downloaded), else `data_dir`'s
    checkpoint when its hash matches the run's tag (or the run predates the tag, said in `where`)."""
    from runtime.tracking import local_artifact_dir
    from tokenizer.layout import DataLayout

    from tokenizer.vqvae import weights_sha256

    sha = run.data.tags.get(SHA_TAG)
    legacy = run.data.tags.get(LEGACY_SHA_TAG) if sha is None else None
    local = local_artifact_dir(run)
    folder = local / TOKENIZER_ARTIFACTS if local else None
    if folder is None or not (folder / VQVAE_NAME).is_file():
        folder = _download(run)
    if folder is not None and (folder / VQVAE_NAME).is_file():
        meta = folder / META_NAME
        return RunTokenizer(folder / VQVAE_NAME, meta if meta.is_file() else None, f"run artifact {TOKENIZER_ARTIFACTS}/")
    layout = DataLayout.of(conf["data_dir"])
    if not layout.vqvae.is_file():
        raise RunError(f"run {run.info.run_id} carries no tokenizer artifact and {layout.vqvae} does not exist: "
                       f"nothing can decode its tokens")
    meta = layout.token_meta if layout.token_meta.is_file() else None
    if sha is None and legacy is None:
        return RunTokenizer(layout.vqvae, meta, f"{layout.vqvae} (the run records no tokenizer hash: assumed to be its own)")
    if (weights_sha256(layout.vqvae) if sha else file_sha256(layout.vqvae)) != (sha or legacy):
        raise RunError(f"run {run.info.run_id} was trained with tokenizer sha256 {(sha or legacy)[:12]}, its artifact is missing "
                       f"and {layout.vqvae} is a different one")
    return RunTokenizer(layout.vqvae, meta, f"{layout.vqvae} (sha256 matches the run's tag)")


def _download(run) -> Path | None:
    """The artifact folder fetched from a tracking server / object store; None when the run has none."""
    import mlflow

    try:
        target = tempfile.mkdtemp(prefix="run-tokenizer-")
        path = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path=TOKENIZER_ARTIFACTS,
                                                   dst_path=target)
        return Path(path)
    except Exception:
        shutil.rmtree(target, ignore_errors=True)
        return None


def log_to_run(run, metrics: dict[str, float], step: int, folder: Path | None = None, artifact_path: str = "") -> None:
    """Log finite `metrics` at `step` into the run, and `folder` as its artifacts under `artifact_path`
    (not copied when `folder` already lies inside the run's local artifact folder)."""
    import math
    import time

    import mlflow
    from mlflow.entities import Metric

    from runtime.tracking import local_artifact_dir

    client = mlflow.MlflowClient()
    now = int(time.time() * 1000)
    batch = [Metric(k, float(v), now, int(step)) for k, v in metrics.items() if math.isfinite(float(v))]
    for i in range(0, len(batch), 500):  # MLflow's batch limit is 1000 metrics
        client.log_batch(run.info.run_id, metrics=batch[i:i + 500])
    if folder is None:
        return
    local = local_artifact_dir(run)
    if local is not None and Path(folder).resolve().is_relative_to(local.resolve()):
        return
    client.log_artifacts(run.info.run_id, str(folder), artifact_path)


def learner_lease(conf, run_id: str | None):
    """The lease of run `run_id`'s learner (runtime/lease.py; not taken), in its replay store: `replay_dir` when
    set, else the run's artifact folder when on this machine; None where there is none to hold (a bucket, a new
    run without `replay_dir`, a run whose store is elsewhere). Checked before a run is reopened, so a second
    learner of one run is refused with the run untouched."""
    from pydreamer.replay_layout import ReplayLayout
    from runtime.lease import Lease
    from runtime.storage import is_remote
    from runtime.tracking import find_run, local_artifact_dir, setup_mlflow

    replay = conf["replay_dir"]
    if not replay and run_id:
        setup_mlflow(conf)
        found = find_run(run_id)
        replay = found.data.tags.get("replay_dir") or local_artifact_dir(found) if found else None
    if not replay or is_remote(str(replay)):
        return None
    return Lease(ReplayLayout.of(replay).learner_lease, f"run {run_id or '(new)'}'s learner (replay store {replay})")
