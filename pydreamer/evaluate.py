"""Evaluation of a world model: the learner's periodic `eval/*` metrics, and per horizon on a split.

    python -m pydreamer.evaluate --run RUN_ID [--split test] [--horizons 15] [--samples 8]
                                 [--max_utterances N] [--starts_per_utterance N] [--seed 0]

The command reads the run's config and checkpoint, the split's token shards from the run's
`data_dir` (test = speakers never used in training or model selection), and scores, for start
steps t of each utterance, the forecasts of steps t+1..t+H (see forecast.py) beside the
per-position baselines (baselines.py) on exactly the same cells. It logs `test/nll_h{h}`,
`test/acc_h{h}` and `test/baseline/{name}/...` to the run at the checkpoint's step and writes a
CSV table, a PNG of NLL and accuracy against horizon, a JSON summary and a t-SNE of latent
features under `<replay store>/evaluation/<split>/` (the run's artifacts). When the run's replay
store is not on this machine (a tracking server that proxies artifacts) the checkpoint is
downloaded from the run's artifacts into `<mlflow_dir>/replay/<run id>/`, which then stands for it.

Episodes are scored whole (cut to `eval_max_steps`), each filtered from a zero state, in
batches made by data.py. Token forecasts are compared with baselines that know the token
position (each of the G positions of a step uses its own small set of codes, so a pooled
unigram flatters any model).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from pydreamer.data import episode_batch
from pydreamer.episodes import EpisodeError, list_episodes, load_episode
from pydreamer.models import Dreamer
from pydreamer.models.functions import LN2, categorical_kl
from pydreamer.models.rssm import RSSM
from pydreamer.runs import RunError, load_model, log_to_run, open_run, run_checkpoint

log = logging.getLogger("pydreamer.evaluate")


def load_eval_episodes(folder: Path | str, n: int, n_tokens: int | None = None,
                       skipped: list[str] | None = None) -> list[dict]:
    """The first `n` usable episodes of the eval store (sorted names, so the set stays fixed as it grows);
    the unusable ones are named ("path: reason") in `skipped`."""
    out = []
    for path in list_episodes(folder):
        if len(out) >= n:
            break
        try:
            ep = load_episode(path, n_tokens=n_tokens)
        except EpisodeError as e:
            log.warning("eval: skipping %s", e)
            if skipped is not None:
                skipped.append(str(e))
            continue
        if len(ep["reward"]) >= 2:
            out.append(ep)
    return out


def discounted_returns(reward: np.ndarray, terminal: np.ndarray, gamma: float) -> np.ndarray:
    """Monte-Carlo return of each row: sum_k gamma^(k-1) reward[t+k] up to the episode's end."""
    out = np.zeros(len(reward), np.float64)
    acc = 0.0
    for t in range(len(reward) - 1, -1, -1):
        out[t] = acc
        acc = float(reward[t]) + gamma * acc * (1.0 - float(terminal[t]))
    return out


def entropy_bits(tokens: np.ndarray, n_tokens: int) -> float:
    """Entropy (bits per token) of the tokens' own frequencies."""
    counts = np.bincount(tokens.reshape(-1).astype(np.int64), minlength=n_tokens).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())


def unigram_pos_bits(tokens: np.ndarray, n_tokens: int) -> float:
    """Mean over token positions g of the entropy of position g's own frequencies."""
    tokens = tokens.reshape(len(tokens), -1)
    return float(np.mean([entropy_bits(tokens[:, g], n_tokens) for g in range(tokens.shape[1])]))


@torch.no_grad()
def evaluate_episodes(model: Dreamer, episodes: list[dict], conf: Mapping[str, Any], device: torch.device,
                      amp: bool = False, batch_episodes: int = 16) -> dict[str, float]:
    """eval/* metrics of the RSSM world model and its critic on whole episodes.

    loss_tokens: posterior reconstruction (bits per token). nll_h1 and acc_h1: each step's
    tokens forecast one step ahead, as `evaluate` scores h = 1 (the forecast head, or else
    `eval_samples` prior draws decoded and averaged): what model selection (best.pt) uses;
    elbo_h1: the step's negative ELBO per token (reconstruction + KL(posterior || prior), an
    upper bound on -log p(step's tokens | steps < t) jointly); reset rows, which have no past,
    are left out of all three; value_error: mean |critic value - discounted
    Monte-Carlo return of the true rewards|. unigram_pos_nll: the entropy of the episodes'
    own per-position token frequencies (a 'learned nothing' that knows the position).
    """
    if not episodes:
        return {}
    if model.kind == "transformer":
        return _transformer_episodes(model, episodes, conf, device)
    model.eval()
    gamma, max_steps = float(conf["gamma"]), int(conf["eval_max_steps"])
    sums = dict.fromkeys(("rec_bits", "h1_bits", "h1_sampled_bits", "h1_hits", "kl", "rew_sq"), 0.0)
    counts = dict.fromkeys(("rec", "h1", "steps"), 0)
    values, returns, all_tokens = [], [], []
    for start in range(0, len(episodes), batch_episodes):
        group = episodes[start:start + batch_episodes]
        arrays, mask = episode_batch(group, max_steps)
        T, B, G = arrays["tokens"].shape
        mc = np.zeros((T, B), np.float64)
        for b, e in enumerate(group):
            n = int(mask[:, b].sum())
            mc[:n, b] = discounted_returns(e["reward"], e["terminal"], gamma)[:n]
            all_tokens.append(e["tokens"][:n])
        batch = {k: torch.from_numpy(v).to(device) for k, v in arrays.items()}
        ctx = torch.autocast(device.type, dtype=torch.bfloat16) if amp else contextlib.nullcontext()
        with ctx:
            out = model.wm(batch, model.initial_state(B, device))
            probs = model.wm.horizon1_probs(out.states, out.prior_logits, model.eval_samples)
            feats = RSSM.features(out.states)
            value = model.ac.critic(feats).float()
            reward_pred = model.wm.reward_head(feats).float()
        m = torch.from_numpy(mask).to(device)
        logp = torch.log_softmax(out.token_logits.float(), -1).gather(-1, batch["tokens"].unsqueeze(-1)).squeeze(-1)
        sums["rec_bits"] += float((-logp / LN2).sum(-1)[m].sum())
        counts["rec"] += int(m.sum()) * G
        m1 = m.clone()
        m1[0] = False
        p = probs.float().gather(-1, batch["tokens"].unsqueeze(-1)).squeeze(-1).clamp_min(1e-12)
        sums["h1_sampled_bits"] += float((-torch.log2(p)).sum(-1)[m1].sum())
        sums["h1_hits"] += float((probs.argmax(-1) == batch["tokens"]).float().sum(-1)[m1].sum())
        counts["h1"] += int(m1.sum()) * G
        kl = categorical_kl(out.post_logits, out.prior_logits)
        sums["kl"] += float(kl[m].sum())
        # The step's negative ELBO bounds -log p(tokens_t | steps < t) from above: the forecast's NLL.
        sums["h1_bits"] += float(((-logp).sum(-1) + kl)[m1].sum() / LN2)
        sums["rew_sq"] += float((reward_pred - batch["reward"]).pow(2)[m].sum())
        counts["steps"] += int(m.sum())
        values.append(value[m].cpu().numpy())
        returns.append(mc[mask])
    model.train()
    v, r = np.concatenate(values), np.concatenate(returns)
    tokens = np.concatenate(all_tokens)
    metrics = {
        "loss_tokens": sums["rec_bits"] / max(1, counts["rec"]),
        "nll_h1": sums["h1_sampled_bits"] / max(1, counts["h1"]),
        "elbo_h1": sums["h1_bits"] / max(1, counts["h1"]),
        "acc_h1": sums["h1_hits"] / max(1, counts["h1"]),
        "kl": sums["kl"] / max(1, counts["steps"]),
        "loss_reward": 0.5 * sums["rew_sq"] / max(1, counts["steps"]),
        "value_error": float(np.abs(v - r).mean()),
        "return_mc": float(r.mean()),
        "value_mean": float(v.mean()),
        "unigram_pos_nll": unigram_pos_bits(tokens, model.dims["n_tokens"]),
        "episodes": float(len(episodes)),
        "steps": float(counts["steps"]),
    }
    if v.std() > 0 and r.std() > 0:
        metrics["value_corr"] = float(np.corrcoef(v, r)[0, 1])
    return metrics


@torch.no_grad()
def _transformer_episodes(model: Dreamer, episodes: list[dict], conf: Mapping[str, Any], device: torch.device,
                          batch_episodes: int = 16) -> dict[str, float]:
    """The Transformer's eval/*: its next-step forecast is exact (no latent to sample), so nll_h1 is
    the cross-entropy of each step given the steps before it, reset rows left out as for the RSSM."""
    model.eval()
    bits = hits = n = 0.0
    all_tokens = []
    for start in range(0, len(episodes), batch_episodes):
        arrays, mask = episode_batch(episodes[start:start + batch_episodes], int(conf["eval_max_steps"]))
        batch = {k: torch.from_numpy(v).to(device) for k, v in arrays.items()}
        pred = model.wm.predict(batch, model.initial_state(mask.shape[1], device))
        m = torch.from_numpy(mask).to(device) & pred.has_context
        logp = torch.log_softmax(pred.token_logits.float(), -1)
        true = logp.gather(-1, batch["tokens"].unsqueeze(-1)).squeeze(-1)
        bits += float((-true / LN2).sum(-1)[m].sum())
        hits += float((logp.argmax(-1) == batch["tokens"]).float().sum(-1)[m].sum())
        n += int(m.sum()) * arrays["tokens"].shape[-1]
        all_tokens += [t[:int(k)] for t, k in zip(np.moveaxis(arrays["tokens"], 1, 0), mask.sum(0))]
    model.train()
    return {"nll_h1": bits / max(n, 1), "acc_h1": hits / max(n, 1),
            "unigram_pos_nll": unigram_pos_bits(np.concatenate(all_tokens), model.dims["n_tokens"]),
            "episodes": float(len(episodes)), "loss_tokens": bits / max(n, 1)}


# ---- per horizon, on a split of the token corpus ---------------------------------------------

class EvaluationError(RunError):
    """What stops `python -m pydreamer.evaluate` before it computes anything: one line, exit code 2."""


def _plot(path: Path, results: dict, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, r in results.items():
        h = np.arange(1, len(r["nll"]) + 1)
        style = dict(lw=2.5, color="k") if name == "model" else dict(lw=1.2, ls="--")
        axes[0].plot(h, r["nll"], label=name, **style)
        axes[1].plot(h, r["acc"], label=name, **style)
    axes[0].set(xlabel="horizon (steps)", ylabel="NLL (bits per token)", title="predictive NLL")
    axes[1].set(xlabel="horizon (steps)", ylabel="top-1 accuracy", title="accuracy")
    axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pydreamer.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--run", required=True, help="the MLflow run id of a launch.py run")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"))
    parser.add_argument("--horizons", type=int, default=15, help="score h = 1..H steps ahead")
    parser.add_argument("--samples", type=int, default=8, help="imagined futures averaged per start step")
    parser.add_argument("--max_utterances", type=int, default=0, help="0 = every utterance of the split")
    parser.add_argument("--starts_per_utterance", type=int, default=0, help="0 = every start step; else a seeded subsample")
    parser.add_argument("--checkpoint", default="best", choices=("best", "latest"),
                        help="best: the weights with the lowest val eval/nll_h1 (model selection; latest when the run "
                             "has no best.pt); latest: the last saved, e.g. to compare runs at equal gradient steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mlflow_dir", default="mlruns", help="the local tracking store (MLFLOW_TRACKING_URI wins)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.horizons < 1 or args.samples < 1:
        parser.exit(2, f"{parser.prog}: error: --horizons and --samples must be positive\n")
    try:
        return _main(args)
    except RunError as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")


def _main(args) -> int:
    from pydreamer.baselines import Baselines
    from pydreamer.forecast import evaluate_split
    from pydreamer.latents import latent_points, tsne_png
    from runtime.device import resolve_device
    from runtime.processes import set_torch_threads
    from runtime.tracking import local_replay_dir
    from tokenizer.bucket import local_data_dir
    from tokenizer.layout import DataLayout
    from tokenizer.tokens import MissingTokensError, TokenSplit, read_token_spec

    set_torch_threads()
    run, conf = open_run(args.run, args.mlflow_dir)
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
    t0 = time.time()
    fit_on = [u["tokens"] for u in TokenSplit(layout, "train", spec)]
    val = [u["tokens"] for u in TokenSplit(layout, "val", spec)]
    baselines = Baselines.fit(fit_on, val, spec.codebook_size, args.horizons)
    tokens = [u["tokens"] for u in utterances]
    results = evaluate_split(model, tokens, baselines, args.horizons, args.samples, args.starts_per_utterance,
                             args.seed, device)
    seconds = time.time() - t0
    cells = "every start step" if args.starts_per_utterance <= 0 else \
        f"{args.starts_per_utterance} seeded start steps per utterance (seed {args.seed})"
    out = Path(replay_dir) / "evaluation" / args.split
    out.mkdir(parents=True, exist_ok=True)
    rows = ["horizon," + ",".join(f"{n}_nll,{n}_acc" for n in results)]
    for h in range(args.horizons):
        rows.append(f"{h + 1}," + ",".join(f"{r['nll'][h]:.4f},{r['acc'][h]:.4f}" for r in results.values()))
    (out / "horizons.csv").write_text("\n".join(rows) + "\n")
    title = f"{conf['world_model']} run {args.run[:8]} at step {step} ({ckpt_path.stem}): {args.split} split, {len(tokens)} utterances"
    _plot(out / "horizons.png", results, title)
    summary = {"run": args.run, "world_model": conf["world_model"], "step": step, "checkpoint": ckpt_path.name,
               "split": args.split,
               "utterances": len(tokens), "cells": cells, "samples": args.samples, "seconds": seconds,
               "baseline_smoothing": baselines.choices(),
               "results": {n: {k: [float(x) for x in v] for k, v in r.items()} for n, r in results.items()}}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    metrics = {}
    for h in range(args.horizons):
        metrics[f"{args.split}/nll_h{h + 1}"] = results["model"]["nll"][h]
        metrics[f"{args.split}/acc_h{h + 1}"] = results["model"]["acc"][h]
        for name in baselines.names:
            metrics[f"{args.split}/baseline/{name}/nll_h{h + 1}"] = results[name]["nll"][h]
            metrics[f"{args.split}/baseline/{name}/acc_h{h + 1}"] = results[name]["acc"][h]
    try:
        points = latent_points(model, tokens, device, seed=args.seed)
        if len(points) >= 10:
            labels = [u["speaker"] for u in utterances for _ in range(min(20, len(u["tokens"])))]
            tsne_png(out / "latent_tsne.png", points, labels, f"latent features, {args.split} split")
    except Exception as e:  # a picture must not cost the numbers
        log.warning("t-SNE skipped: %s", e)
    log_to_run(run, metrics, step, out, f"evaluation/{args.split}")
    print(_table(results, [1, 5, 15], args.horizons))
    print(f"evaluate: {conf['world_model']} run {args.run} at step {step} ({ckpt_path.name}), {args.split} split, {len(tokens)} "
          f"utterances, {cells}, {args.samples} samples, {seconds:.0f} s -> {out}")
    return 0


def _table(results: dict, show: list[int], horizons: int) -> str:
    hs = [h for h in show if h <= horizons] or [horizons]
    lines = ["| predictor | " + " | ".join(f"NLL h={h} | acc h={h}" for h in hs) + " |",
             "|---|" + "---|---|" * len(hs)]
    for name, r in results.items():
        lines.append(f"| {name} | " + " | ".join(f"{r['nll'][h - 1]:.3f} | {r['acc'][h - 1]:.3f}" for h in hs) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
