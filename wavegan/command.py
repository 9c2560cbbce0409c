"""`python -m wavegan`: a WaveGAN baseline, a generator of raw audio that is not a world model, trained on the
same prepared corpus, measured with the same tables as a world model's dreams from nothing.

    python -m wavegan --configs defaults audio small --data_dir DIR [--mlflow_dir mlruns] [--resume_id RUN_ID]
                      [--wavegan_steps N ...]

It reads the train split's waveforms again (wavegan/data.py), trains WGAN-GP on random windows of
`wavegan_seconds`, and logs into an MLflow run tagged `family: wavegan` (`objective: wgan-gp`): `wavegan/*`
training metrics, checkpoints under the run's `checkpoints/`, and at each point of the quality curve (every
`wavegan_curve_interval` steps and the last) `wavegan_samples` samples as wavs, a spectrogram PNG and the
acoustic table under `samples/step-NNNNNN/`, with their `dream/unconditional/*` metrics at that step (DNSMOS at
the last, with `dream_perceptual`). `python -m pydreamer.compare --runs WAVEGAN_RUN WORLD_MODEL_RUN` shows it
beside world-model runs. `--resume_id RUN_ID` (or MLFLOW_RUN_ID) continues a run from its latest checkpoint.
Exit codes: 0 done, 2 bad config or data (one line, before any run is made), 3 a NaN loss (the last checkpoint
kept), 130 stopped by SIGTERM or Ctrl-C (a checkpoint saved first).
"""
from __future__ import annotations

import argparse
import logging
import os
import time
from typing import Any, Mapping

from pydreamer.compare import FAMILY_TAG, WAVEGAN as FAMILY
from wavegan.config import CommandError

log = logging.getLogger("wavegan")

OBJECTIVE = "wgan-gp"  # the run's `objective` tag; its `family` tag (pydreamer/compare.py's) says it is a WaveGAN


def main(argv: list[str] | None = None) -> int:
    from runtime.config import ConfigError, parse_args
    from wavegan.config import check_wavegan

    from runtime.config_reference import add_config_help

    parser = add_config_help(argparse.ArgumentParser(prog="python -m wavegan", description=__doc__))
    conf, _ = parse_args(argv, parser, writes=("mlflow_dir",))
    from wavegan.data import DataError  # after --help, which needs none of torch

    try:
        check_wavegan(conf)
    except ConfigError as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    try:
        return _main(conf)
    except (CommandError, DataError) as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")


def _open_run(conf: Mapping[str, Any]):
    """The MLflow run: a new one tagged as a WaveGAN, or the WaveGAN run named by resume_id / MLFLOW_RUN_ID."""
    from runtime.tracking import find_run, setup_mlflow, start_or_resume_run, tracking_uri

    run_id = os.environ.get("MLFLOW_RUN_ID") or conf["resume_id"] or None
    if run_id:
        setup_mlflow(conf)
        old = find_run(run_id)
        if old is None:
            raise CommandError(f"no MLflow run '{run_id}' in {tracking_uri(conf)}")
        if old.data.tags.get(FAMILY_TAG) != FAMILY:
            raise CommandError(f"run {run_id} is not a WaveGAN run (no tag {FAMILY_TAG}: {FAMILY}): resume world-model "
                               f"runs with python launch.py --resume_id {run_id}")
    return start_or_resume_run(conf, run_id, tags={FAMILY_TAG: FAMILY, "objective": OBJECTIVE})


def _main(conf: Mapping[str, Any]) -> int:
    import mlflow

    from runtime.device import resolve_device
    from runtime.processes import set_torch_threads
    from tokenizer.bucket import local_data_dir
    from tokenizer.layout import DataLayout
    from wavegan.config import window_samples
    from wavegan.data import WindowSampler, train_waves
    from wavegan.samples import real_clips
    from wavegan.session import Session

    threads = set_torch_threads()
    try:
        device = resolve_device(conf["device"])
    except ValueError as e:
        raise CommandError(str(e)) from None
    started = time.time()
    layout = DataLayout.of(local_data_dir(conf["data_dir"], parts=("manifest.json", "settings", "mels/train",
                                                                     "mels/test"), required=False))
    waves = train_waves(conf, layout)
    log.info("train split: %d utterances, %.1f min of audio (%d skipped) in %.0f s", len(waves.ids),
             waves.seconds / 60, len(waves.skipped), time.time() - started)
    real_ids, real = real_clips(conf, layout)
    sampler = WindowSampler(waves, window_samples(conf), int(conf["seed"]))
    with _open_run(conf) as run:
        session = Session(conf, run, device, real_ids, real)
        session.start(threads, waves)
        code = session.train(sampler)
        if code == 0:
            session.finish(time.time() - started)
        else:
            mlflow.end_run(status="KILLED" if code == 130 else "FAILED")
    return code
