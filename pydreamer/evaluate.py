"""Evaluation of a world model per horizon on a split of the token corpus (the learner's periodic `eval/*`
metrics are pydreamer/learner/eval_metrics.py).

    python -m pydreamer.evaluate --run RUN_ID [--split test] [--evaluate_horizons H] [--evaluate_samples S]
                                 [--max_utterances N] [--starts_per_utterance N] [--seed 0]

The options named as config keys (--evaluate_horizons, --evaluate_samples, --evaluate_imagination,
--evaluate_log_mel_starts, --seed) default to the run's own values of those keys (the short names of before,
--horizons, --samples, ..., still work). Progress (utterances scored, with an estimate of the time left) goes to
stderr.

The command reads the run's config and checkpoint, the split's token shards from the run's
`data_dir` (test = speakers never used in training or model selection), and scores, for start
steps t of each utterance, the forecasts of steps t+1..t+H (see forecast.py) beside the
per-position baselines (baselines.py) on exactly the same cells. It logs `test/nll_h{h}`,
`test/acc_h{h}` and `test/baseline/{name}/...` to the run at the checkpoint's step and writes a
CSV table, a PNG of NLL and accuracy against horizon, a JSON summary and a t-SNE of latent
features under `<replay store>/evaluation/<split>/` (the run's artifacts). When the run's replay
store is not on this machine (a tracking server that proxies artifacts) the checkpoint is
downloaded from the run's artifacts into `<mlflow_dir>/replay/<run id>/`, which then stands for it.

Token forecasts are compared with baselines that know the token position (each of the G positions
of a step uses its own small set of codes, so a pooled unigram flatters any model).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from pydreamer.progress import Progress, say
from pydreamer.replay_layout import ReplayLayout, evaluation_artifacts
from pydreamer.runs import RunError, load_model, log_to_run, open_run, run_checkpoint, run_command

log = logging.getLogger("pydreamer.evaluate")


# ---- per horizon, on a split of the token corpus ---------------------------------------------

class EvaluationError(RunError):
    """What stops `python -m pydreamer.evaluate` before it computes anything: one line, exit code 2."""


def main(argv: list[str] | None = None) -> int:
    from runtime.config import choices_of
    from runtime.config_reference import HelpFormatter

    parser = argparse.ArgumentParser(prog="python -m pydreamer.evaluate", description=__doc__,
                                     formatter_class=HelpFormatter)
    parser.add_argument("--run", required=True, help="the MLflow run id of a launch.py run")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"), help="the utterances scored")
    parser.add_argument("--max_utterances", type=int, default=0, help="score the split's first N utterances "
                        "(default: 0 = every one)")
    parser.add_argument("--starts_per_utterance", type=int, default=0, help="a seeded subsample of N start steps per "
                        "utterance (default: 0 = every start step)")
    parser.add_argument("--checkpoint", default="best", choices=("best", "latest"),
                        help="best: the weights with the lowest val eval/nll_h1 (model selection; latest when the run "
                             "has no best.pt); latest: the last saved, e.g. to compare runs at equal gradient steps")
    parser.add_argument("--no_probes", action="store_true", help="skip the latent probes (speaker, language, kind)")
    parser.add_argument("--no_tsne", action="store_true", help="skip the t-SNE picture of the latent features (minutes "
                        "on a large split)")
    parser.add_argument("--no_log_mel", action="store_true",
                        help="skip the log-mel scores (forecasts decoded to dB beside continuous baselines: log_mel.py)")
    parser.add_argument("--conditioned", action="store_true",
                        help="a conditioned run: forecast each utterance conditioned on its own labels (the values the "
                             "model knows; others none) instead of unconditioned: {split}_conditioned/* metrics and "
                             "evaluation/{split}_conditioned/, beside the unconditioned scores")
    parser.add_argument("--mlflow_dir", default="mlruns", help="the local tracking store (MLFLOW_TRACKING_URI wins)")
    group = parser.add_argument_group("the run's config keys (each left out is the run's own value)")
    for key, old, spec in (
            ("evaluate_horizons", "horizons", dict(type=int, help="score h = 1..H steps ahead")),
            ("evaluate_samples", "samples", dict(type=int, help="imagined futures averaged per start step; 0 = "
                                                 "the world model's fair_samples: RSSM 8, Transformer 128")),
            ("evaluate_imagination", "imagination", dict(choices=choices_of("evaluate_imagination"),
                                                         help="rssm: how futures past h = 1 are imagined")),
            ("evaluate_log_mel_starts", "log_mel_starts", dict(type=int, help="start steps per utterance scored "
                                                               "as log-mel, a seeded draw of the scored; 0 = all")),
            ("seed", "seed", dict(type=int, help="draws and start subsample"))):
        spec = {**spec, "metavar": key.upper()} if "type" in spec else spec
        group.add_argument(f"--{key}", dest=old, **{**spec, "help": f"{spec['help']} (default: the run's {key})"})
        if old != key:  # the name of before, unlisted
            group.add_argument(f"--{old}", dest=old, **{**spec, "help": argparse.SUPPRESS})
    return run_command(parser, _main, argv)


def _main(args) -> int:
    from pydreamer.baselines import Baselines
    from pydreamer.evaluation_report import Scores
    from pydreamer.forecast import evaluate_split
    from runtime.device import resolve_device
    from runtime.processes import set_torch_threads
    from runtime.tracking import local_replay_dir
    from tokenizer.bucket import local_data_dir
    from tokenizer.layout import DataLayout
    from tokenizer.tokens import MissingTokensError, TokenSplit, read_token_spec

    set_torch_threads()
    run, conf = open_run(args.run, args.mlflow_dir)
    _fill_from_config(args, conf)
    replay_dir, ckpt_path = run_checkpoint(run, conf, args.checkpoint, local_replay_dir(args.mlflow_dir, args.run))
    try:
        layout = DataLayout.of(local_data_dir(conf["data_dir"]))  # of a bucket: its tokens, fetched here
        spec = read_token_spec(layout, conf["codebook_size"])
        split = TokenSplit(layout, args.split, spec)
    except MissingTokensError as e:
        raise EvaluationError(str(e)) from None
    utterances = [u for u in split if len(u["tokens"]) >= 2]
    if not utterances:
        raise EvaluationError(f"the {args.split} split of {layout.root} has no utterance of 2 or more steps "
                              f"(see {layout.token_meta}: short utterances are dropped at encode, --min_steps)")
    if args.max_utterances > 0:
        utterances = utterances[:args.max_utterances]
    device = resolve_device(conf["device"])
    model, step = load_model(ckpt_path, conf, spec.codebook_size, spec.tokens_per_step, device)
    args.imagination = model.wm.imagine_by(args.imagination or conf["evaluate_imagination"])
    args.samples = args.samples or model.wm.fair_samples  # 0: as many as make this world model's forecast converge
    conditions = _own_labels(model.wm, utterances, args) if args.conditioned else None
    if model.wm.observes == "mel":
        return _evaluate_mel(run, conf, args, layout, utterances, model, step, ckpt_path, replay_dir, device)
    t0 = time.time()
    say("evaluate", f"fitting the baselines on the train split, then scoring {len(utterances)} {args.split}-split "
        f"utterances (h = 1..{args.horizons}, {args.samples} samples)")
    train = list(TokenSplit(layout, "train", spec))
    fit_on = [u["tokens"] for u in train]
    val = [u["tokens"] for u in TokenSplit(layout, "val", spec)]
    baselines = Baselines.fit(fit_on, val, spec.codebook_size, args.horizons)
    tokens = [u["tokens"] for u in utterances]
    log_mel = None if args.no_log_mel else _log_mel_scorer(run, conf, layout, utterances, args, device)
    with Progress("evaluate", sum(len(t) for t in tokens), "steps") as progress:
        sums = evaluate_split(model, tokens, baselines, args.horizons, args.samples, args.starts_per_utterance,
                              args.seed, device, voices=[u.get("voice") for u in utterances],
                              observe=_counted(progress, tokens, log_mel[0] if log_mel else None),
                              conditions=conditions)
    log_mel = log_mel[:2] if log_mel else None
    scores = Scores(sums, seed=args.seed)
    seconds = time.time() - t0
    cells = "every start step" if args.starts_per_utterance <= 0 else \
        f"{args.starts_per_utterance} seeded start steps per utterance (seed {args.seed})"
    out = Path(ReplayLayout.of(replay_dir).evaluation(args.scored))
    out.mkdir(parents=True, exist_ok=True)
    (out / "horizons.csv").write_text(scores.csv())
    title = f"{conf['world_model']} run {args.run[:8]} at step {step} ({ckpt_path.stem}): {args.scored} split, {len(tokens)} utterances"
    scores.plot(out / "horizons.png", title)
    rate = (spec.tokens_per_step, spec.steps_per_second)
    summary = {"run": args.run, "world_model": conf["world_model"], "step": step, "checkpoint": ckpt_path.name,
               "split": args.split, "conditioned": conditions is not None, "utterances": len(tokens), "cells": cells,
               "samples": args.samples, "fair_samples": model.wm.fair_samples, "imagination": args.imagination,
               "seconds": seconds, "tokens_per_step": spec.tokens_per_step, "steps_per_second": spec.steps_per_second,
               "baseline_smoothing": baselines.choices(), **scores.summary(*rate)}
    summary["results"] = summary["all"]["results"]  # where readers of earlier summaries look
    metrics = scores.metrics(args.scored, *rate)
    if log_mel:
        from pydreamer.log_mel import log_mel_metrics, log_mel_table

        summary["log_mel"] = {**log_mel[1].report(seed=args.seed), "starts_per_utterance": args.log_mel_starts}
        metrics.update(log_mel_metrics(summary["log_mel"], args.scored))
        (out / "log_mel.md").write_text(log_mel_table(summary["log_mel"]) + "\n")
    summary["probes"], probe_metrics = _probes(model, layout, train, utterances, device, args)
    metrics.update(probe_metrics)
    _latent_picture(out, model, utterances, device, args)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    _log(run, metrics, step, out, args.scored)
    _print(run, scores, summary, spec, f"{conf['world_model']} run {args.run} at step {step} ({ckpt_path.name}), "
           f"{args.split} split, {len(tokens)} utterances, {cells}, {args.samples} samples, {seconds:.0f} s -> {out}")
    return 0


def _own_labels(wm, utterances: list[dict], args) -> list[dict[str, str]]:
    """Each utterance's label values that the conditioned model knows (a test-only voice is none), for
    `--conditioned`; exit 2 for a run trained without conditioning. Probes and t-SNE are the unconditioned run's."""
    if wm.conditioning is None:
        raise EvaluationError(f"--conditioned: run {args.run} was trained without conditioning (its config's "
                              "`condition` is empty)")
    args.no_probes = args.no_tsne = True
    known = dict(wm.conditioning.vocabulary)
    return [{k: v for k, v in u.get("labels", {}).items() if v in known.get(k, ())} for u in utterances]


def _fill_from_config(args, conf) -> None:
    """The options not given take the run's config keys of their names; out of range: one line, exit 2."""
    for option, key, before in (("horizons", "evaluate_horizons", None), ("samples", "evaluate_samples", None),
                                ("log_mel_starts", "evaluate_log_mel_starts", 0), ("seed", "seed", None)):
        setattr(args, option, conf.get(key, before) if getattr(args, option) is None else getattr(args, option))
    args.scored = f"{args.split}_conditioned" if args.conditioned else args.split  # metric prefix and folder
    if args.horizons < 1 or args.samples < 0:
        raise EvaluationError(f"--evaluate_horizons must be positive and --evaluate_samples at least 0, not "
                              f"{args.horizons} and {args.samples}")

def _counted(progress: Progress, tokens: list, observe=None):
    """`evaluate_split`'s per-utterance hook: the utterance's steps counted as scored, then `observe` (log-mel)."""
    def counted(u: int, starts, probs=None) -> None:
        if observe is not None:
            observe(u, starts, probs)
        progress.advance(len(tokens[u]))
    return counted


def _print(run, scores, summary: dict, spec, what: str) -> None:
    from pydreamer.probes import probe_table

    bps = spec.tokens_per_step * spec.steps_per_second
    print(f"All cells (bits per token; margin = best baseline's NLL - the model's, 95% bootstrap CI over utterances):\n"
          f"{scores.table(rate=bps)}\n\nCells whose target step is voiced:\n{scores.table(voiced=True)}")
    if "log_mel" in summary:
        from pydreamer.log_mel import log_mel_table

        print(f"\nForecasts as log-mel (dB; LSD and MSE per step; the model's most probable tokens decoded by its "
              f"tokenizer; AR order {summary['log_mel']['baselines'].get('order')}):\n{log_mel_table(summary['log_mel'])}")
    if summary["probes"]:
        print(f"\nLinear probes of the latent features (one vector per utterance; token counts alone beside):\n"
              f"{probe_table(summary['probes'])}")
    print(f"evaluate: {what}\n{_ui_line(run)}")


def _log_mel_scorer(run, conf, layout, utterances: list[dict], args, device):
    """(observe, scorer) for `evaluate_split`: the split's true log-mels, the run's tokenizer and the continuous
    baselines fitted on the train split (order on val); None, with a warning, where any is missing (the token
    scores do not depend on them)."""
    import numpy as np
    import torch

    from pydreamer.baselines.continuous import ContinuousBaselines
    from pydreamer.log_mel import LogMelScorer, true_steps
    from pydreamer.runs import run_tokenizer
    from tokenizer.codec import TokenCodec
    from tokenizer.features import MelSettings, unzscore
    from tokenizer.shards import iter_utterances

    try:
        codec = TokenCodec.load(run_tokenizer(run, conf).vqvae, device, MelSettings.from_conf(conf), "griffinlim", 1)
        ds = codec.frames_per_step

        def db(m: dict) -> np.ndarray:
            return unzscore(m["mel"].astype(np.float32), m["mean"], m["std"])

        def steps(split: str) -> list[np.ndarray]:
            return [true_steps(db(m), -(-len(m["mel"]) // ds), ds) for m in iter_utterances(layout.mels(split))]

        mels = {m["utterance_id"]: m for m in iter_utterances(layout.mels(args.split))}
        missing = [u["utterance_id"] for u in utterances if u["utterance_id"] not in mels]
        if missing:
            raise ValueError(f"{len(missing)} utterances have no log-mel in {layout.mels(args.split)} (e.g. {missing[0]})")
        baselines = ContinuousBaselines.fit(steps("train"), steps("val"), seed=args.seed)
    except Exception as e:
        log.warning("log-mel scores skipped: %s", e)
        return None
    chosen = [mels[u["utterance_id"]] for u in utterances]
    dbs = [db(m) for m in chosen]
    stats = codec.model.norm_stats  # the tokens' z-score: the corpus' (then fixed) or each utterance's own
    norms = [tuple(stats) if stats is not None else (float(m["mean"]), float(m["std"])) for m in chosen]
    scorer = LogMelScorer(codec, baselines, args.horizons, len(utterances))
    pick = np.random.default_rng(args.seed + 1)  # which starts are decoded: the same for every model of a split

    def observe(u: int, starts, probs=None, predicted=None) -> None:
        """Every predictor (model, baselines, floor) on the same starts: a seeded `log_mel_starts` of them, since
        a token model's are decoded 10 times each (8 draws, the most probable tokens, the true tokens)."""
        if 0 < args.log_mel_starts < len(starts):
            keep = np.sort(pick.choice(len(starts), args.log_mel_starts, replace=False))
            starts = starts[keep]
            probs = probs[torch.as_tensor(keep, device=probs.device)] if probs is not None else None
            predicted = predicted[keep] if predicted is not None else None
        scorer.add(u, utterances[u]["tokens"], dbs[u], norms[u], starts, probs, predicted)

    return observe, scorer, dbs


def _evaluate_mel(run, conf, args, layout, utterances: list[dict], model, step: int, ckpt_path, replay_dir,
                  device) -> int:
    """A world model of log-mel steps, on the same utterances and start steps as a token model's evaluation: its
    forecasts as log-mel beside the continuous baselines and the tokenizer's floor, and its NLL per horizon
    (nats per log-mel dimension, in dB: the corpus z-score's log std added). No token NLL: it has no tokens."""
    import numpy as np
    import torch

    from pydreamer.forecast import start_steps
    from pydreamer.log_mel import log_mel_metrics, log_mel_table, true_steps
    from tokenizer.tokens import read_token_meta

    if args.conditioned:
        raise EvaluationError(f"--conditioned: built for token world models; a {conf['world_model']} run is scored "
                              "unconditioned only")
    found = _log_mel_scorer(run, conf, layout, utterances, args, device)
    if found is None:
        raise EvaluationError(f"a {conf['world_model']} run is scored as log-mel: it needs the {args.split} split's "
                              f"log-mels and the run's tokenizer (see the warning above)")
    observe, scorer, dbs = found
    meta = read_token_meta(layout)
    mean, std = float(meta["mel_mean"]), float(meta["mel_std"])
    ds, H = conf["time_downsample"], args.horizons
    rng, gen = np.random.default_rng(args.seed), torch.Generator().manual_seed(args.seed)
    nll, count = np.zeros(H), np.zeros(H)
    t0 = time.time()
    model.eval()
    with Progress("evaluate", sum(len(u["tokens"]) for u in utterances), "steps") as progress:
        for u, utt in enumerate(utterances):
            starts = start_steps(len(utt["tokens"]), args.starts_per_utterance, rng)
            z = (true_steps(dbs[u], len(utt["tokens"]), ds) - mean) / std
            pred, cell_nll = model.wm.forecast_mel(torch.from_numpy(z).to(device), H, args.samples,
                                                   torch.from_numpy(starts).to(device), gen)
            observe(u, starts, predicted=pred.cpu().numpy() * std + mean)
            cell_nll = cell_nll.cpu().numpy()
            nll += np.nansum(cell_nll, 0)
            count += np.isfinite(cell_nll).sum(0)
            progress.advance(len(utt["tokens"]))
    report = scorer.report(seed=args.seed)
    per_dim_db = (nll / np.maximum(count, 1) + np.log(std)).tolist()
    cells = "every start step" if args.starts_per_utterance <= 0 else \
        f"{args.starts_per_utterance} seeded start steps per utterance (seed {args.seed})"
    summary = {"run": args.run, "world_model": conf["world_model"], "observes": "mel", "step": step,
               "checkpoint": ckpt_path.name, "split": args.split, "utterances": len(utterances), "cells": cells,
               "samples": args.samples, "seconds": time.time() - t0, "log_mel": report,
               "mel_nll": {"horizons": list(range(1, H + 1)), "nats_per_dim": per_dim_db}}
    metrics = log_mel_metrics(report, args.split)
    metrics.update({f"{args.split}/mel_nll_h{h}": v for h, v in enumerate(per_dim_db, 1) if np.isfinite(v)})
    out = Path(ReplayLayout.of(replay_dir).evaluation(args.split))
    out.mkdir(parents=True, exist_ok=True)
    (out / "log_mel.md").write_text(log_mel_table(report) + "\n")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    _log(run, metrics, step, out, args.split)
    nll_line = ", ".join(f"h = {h}: {per_dim_db[h - 1]:.3f}" for h in (1, 5, 15) if h <= H)
    print(f"Forecasts as log-mel (dB; LSD and MSE per step; AR order {report['baselines'].get('order')}):\n"
          f"{log_mel_table(report)}\n\nNLL of the true steps, nats per log-mel dimension (dB): {nll_line}\n"
          f"evaluate: {conf['world_model']} run {args.run} at step {step} ({ckpt_path.name}), {args.split} split, "
          f"{len(utterances)} utterances, {cells}, {args.samples} samples, {summary['seconds']:.0f} s -> {out}\n"
          f"{_ui_line(run)}")
    return 0


def _log(run, metrics: dict[str, float], step: int, out: Path, split: str) -> None:
    """Into the run: the metrics at the checkpoint's step, each per-horizon family also as a curve over h
    (`{split}/nll_by_horizon`, ...), the folder as artifacts `evaluation/<split>/`, and its picture at the artifact
    root (`horizons_<split>.png`), where the run's page and MLflow's compare view show it."""
    from pydreamer.evaluation_report import horizon_curves
    from runtime.tracking import log_curves, log_root_artifact

    log_to_run(run, metrics, step, out, evaluation_artifacts(split))
    moved = log_curves(run.info.run_id, horizon_curves(metrics))
    if moved:
        first = next(iter(moved.items()))
        say("evaluate", f"the run already holds other {split}/*_by_horizon curves (an earlier evaluation): "
            f"this evaluation's are logged beside them, e.g. {first[0]} as {first[1]}")
    if (out / "horizons.png").is_file():
        log_root_artifact(run, out / "horizons.png", f"horizons_{split}.png")


def _ui_line(run) -> str:
    import mlflow

    from runtime.tracking import ui_hint

    return (f"evaluate: open the run in MLflow (curves test/*_by_horizon): "
            f"{ui_hint(mlflow.get_tracking_uri(), run.info.experiment_id, run.info.run_id)}")


def _probes(model, layout, train: list[dict], utterances: list[dict], device, args) -> tuple[dict, dict]:
    """(probe_report, its metrics): what the latent tells of speaker, language, kind, fitted on train utterances.
    Like the t-SNE, a probe that fails is a warning, not a lost evaluation."""
    from pydreamer.probes import corpus_labels, probe_metrics, probe_report

    if args.no_probes:
        return {}, {}
    say("evaluate", "linear probes of the latent features (speaker, language, kind)")
    try:
        train = [u for u in train if len(u["tokens"]) >= 2]
        report = probe_report(model, train, utterances, corpus_labels(layout.root), device, seed=args.seed)
        return report, probe_metrics(report, args.split)
    except Exception as e:
        log.warning("probes skipped: %s", e)
        return {"every label": {"skipped": f"probes failed: {e}"}}, {}


def _latent_picture(out: Path, model, utterances: list[dict], device, args) -> None:
    """The t-SNE of the split's step features, coloured by speaker; a picture must not cost the numbers."""
    from pydreamer.latents import latent_points, tsne_png

    if args.no_tsne:
        return
    say("evaluate", "t-SNE picture of the latent features")
    try:
        points = latent_points(model, [u["tokens"] for u in utterances], device, seed=args.seed)
        if len(points) >= 10:
            labels = [u["speaker"] for u in utterances for _ in range(min(20, len(u["tokens"])))]
            tsne_png(out / "latent_tsne.png", points, labels, f"latent features, {args.split} split")
    except Exception as e:
        log.warning("t-SNE skipped: %s", e)


if __name__ == "__main__":
    sys.exit(main())
