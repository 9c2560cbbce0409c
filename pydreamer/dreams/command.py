"""Hear what a world model imagines: dreams, completions and mixtures as wavs, pictures and an acoustic table.

    python -m pydreamer.dream --run RUN_ID --out DIR [--prompt A.wav ...] [--prompt2 B.wav]
                              [--prompt_seconds 1.0] [--seconds 4] [--samples 4] [--temperature 1.0]
                              [--seed 0] [--split test] [--unconditional 8] [--warm 4] [--real_clips 16]

From the run id alone (its config, checkpoint and the tokenizer artifact it was trained with, see
runs.py), for either world model:

* unconditional dreams: `--unconditional` dreams of `--seconds` from the initial state, and `--warm`
  more from the posterior state after a `--warmup_seconds` warm-up on real `--split` utterances;
* completions: each `--prompt` (any audio file) filtered for `--prompt_seconds`, then `--samples`
  continuations of `--seconds`; without `--prompt`, `--test_prompts` utterances of the split, beside
  their true continuation;
* interpolation: dreams from mixtures of the latent states of two prompts (`--prompt2`, else the
  first two prompts).

Tokens -> the run's VQ-VAE decoder -> log-mel (z-score undone with the prompt's statistics, or the
corpus' average without a prompt) -> inverse mel + Griffin-Lim -> wav at the tokenizer's rate.
Writes wavs, PNGs, `acoustics.md` and CSVs, `tokens.npz` and `summary.json` to `--out` (all or
nothing: built aside, then moved in), logs `dream/*` metrics and the folder as artifacts `dreams/`.
Bad input (unknown run, missing or non-audio prompt, ...) is one line and exit code 2, before
anything is written. Prints the real-time factor: (generation + Griffin-Lim seconds) / audio seconds.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from pydreamer.dreams.acoustics import comparison_markdown, write_comparison_csv
from pydreamer.dreams.report import (WINDOW_S, acoustic_tables, completion_distances, completion_png, dream_metrics, grid_png,
                                    horizon_markdown, horizon_summary, strip_png)
from pydreamer.runs import RunError

log = logging.getLogger("pydreamer.dream")
ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pydreamer.dream", description=__doc__.split("\n")[0])
    p.add_argument("--run", required=True, help="the MLflow run id of a launch.py run")
    p.add_argument("--out", required=True, help="folder for the wavs, PNGs and tables")
    p.add_argument("--prompt", nargs="+", action="extend", default=[], help="audio files to complete (any rate/channels)")
    p.add_argument("--prompt2", default="", help="interpolate between the first prompt and this one")
    p.add_argument("--prompt_seconds", type=float, default=1.0, help="seconds of each prompt filtered through the posterior")
    p.add_argument("--seconds", type=float, default=4.0, help="seconds imagined per dream")
    p.add_argument("--samples", type=int, default=4, help="dreams per prompt")
    p.add_argument("--temperature", type=float, default=1.0, help="divides the logits of every draw")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", default="test", choices=("train", "val", "test"), help="real utterances from this split")
    p.add_argument("--unconditional", type=int, default=8, help="dreams from the initial state")
    p.add_argument("--warm", type=int, default=4, help="dreams after a warm-up on real utterances (0 = none)")
    p.add_argument("--warmup_seconds", type=float, default=0.4)
    p.add_argument("--test_prompts", type=int, default=4, help="without --prompt: utterances of the split to complete")
    p.add_argument("--real_clips", type=int, default=16, help="real utterances measured for the acoustic table")
    p.add_argument("--interp_seconds", type=float, default=1.0, help="seconds dreamt from each mixture")
    p.add_argument("--griffin_lim_iters", type=int, default=0, help="0 = the run's dream_griffin_lim_iters")
    p.add_argument("--mlflow_dir", default="mlruns", help="the local tracking store (MLFLOW_TRACKING_URI wins)")
    p.add_argument("--no_log", action="store_true", help="write --out only; log nothing into the run")
    return p


def check_args(a: argparse.Namespace) -> None:
    positive = {"--seconds": a.seconds, "--prompt_seconds": a.prompt_seconds, "--temperature": a.temperature,
                "--samples": a.samples, "--warmup_seconds": a.warmup_seconds, "--interp_seconds": a.interp_seconds}
    for name, value in positive.items():
        if not value > 0:
            raise RunError(f"{name} must be greater than 0, not {value}")
    for name in ("unconditional", "warm", "test_prompts", "real_clips", "griffin_lim_iters"):
        if getattr(a, name) < 0:
            raise RunError(f"--{name} must be 0 or more, not {getattr(a, name)}")
    if a.prompt2 and not a.prompt:
        raise RunError("--prompt2 needs a --prompt to interpolate from")
    if Path(a.out).exists() and not Path(a.out).is_dir():
        raise RunError(f"--out {a.out} is a file; expected a folder")


def load_prompts(codec, paths: list[str], prompt_seconds: float, seconds: float) -> list:
    """Every prompt file decoded and encoded, or a RunError naming the first one that cannot be."""
    from tokenizer.audio_io import UnusableAudio

    clips = []
    for path in paths:
        if not Path(path).is_file():
            raise RunError(f"prompt {path}: no such file")
        try:
            clips.append(codec.load_prompt(path, prompt_seconds, max_seconds=prompt_seconds + seconds + 1.0))
        except (UnusableAudio, ValueError) as e:
            raise RunError(f"prompt {path}: {str(e).removeprefix(Path(path).name + ': ')}") from None
    return clips


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).stem if "." in name else name)[:60] or "prompt"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        check_args(args)
        return run_dreams(args)
    except RunError as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")


def run_dreams(args: argparse.Namespace) -> int:
    from pydreamer.dreams.audio import AudioDreamer, split_utterances
    from pydreamer.runs import load_model, log_to_run, open_run, run_checkpoint, run_tokenizer
    from runtime.device import resolve_device
    from runtime.processes import set_torch_threads
    from runtime.tracking import local_replay_dir
    from tokenizer.bucket import local_data_dir
    from tokenizer.codec import TokenCodec
    from tokenizer.features import MelSettings
    from tokenizer.layout import DataLayout
    from tokenizer.tokens import read_token_meta

    set_torch_threads()
    run, conf = open_run(args.run, args.mlflow_dir)
    # of a bucket data_dir: what dreams read (token meta, the tokenizer, the split's log-mels), fetched here
    conf["data_dir"] = str(local_data_dir(conf["data_dir"], parts=(
        "tokens/meta.json", "tokenizer/vqvae.pt", f"mels/{args.split}"), required=False))
    _, ckpt_path = run_checkpoint(run, conf, fetch_to=local_replay_dir(args.mlflow_dir, args.run))
    tok = run_tokenizer(run, conf)
    device = resolve_device(conf["device"])
    iters = args.griffin_lim_iters or int(conf["dream_griffin_lim_iters"])
    try:
        codec = TokenCodec.load(tok.vqvae, device, MelSettings.from_conf(conf), iters)
    except Exception as e:
        raise RunError(f"tokenizer {tok.vqvae}: cannot be loaded ({type(e).__name__}: {e})") from None
    meta = json.loads(tok.meta.read_text()) if tok.meta else read_token_meta(DataLayout.of(conf["data_dir"]))
    if "mel_mean" not in meta:
        raise RunError(f"run {args.run}: no token meta.json with the corpus' mel_mean/mel_std ({tok.where})")
    model, step = load_model(ckpt_path, conf, codec.model.quantizer.codebook_size, codec.model.G, device)
    prompts = load_prompts(codec, args.prompt + ([args.prompt2] if args.prompt2 else []), args.prompt_seconds,
                           args.seconds)
    # ---- everything below only computes; files are written at the end, all at once ----------
    t_start = time.time()
    dreamer = AudioDreamer(model, codec, args.seconds, args.temperature, args.seed, meta["mel_mean"], meta["mel_std"])
    fps, sr, ds = codec.settings.frames_per_second, codec.settings.sample_rate, codec.frames_per_step
    layout = DataLayout.of(conf["data_dir"])
    need = max(args.real_clips, args.warm, 0 if args.prompt else args.test_prompts)
    min_frames = int(round((args.prompt_seconds + WINDOW_S) * fps)) + ds  # a first horizon window to score
    real = split_utterances(layout, args.split, need, min_frames, args.seed)
    notes = [f"tokenizer: {tok.where}"]
    if not real:
        notes.append(f"no {args.split}-split log-mels in {layout.mels(args.split)}: no real clips, warm-up dreams, "
                     f"test completions or acoustic table")
    for c in prompts:
        notes += [f"prompt {c.name}: {n}" for n in c.notes]
    uncond = dreamer.unconditional(args.unconditional) if args.unconditional else []
    warm_clips = [codec.encode_prompt(name, db, args.warmup_seconds) for name, db in real[:args.warm]]
    warm = dreamer.warm(warm_clips)
    user = prompts[:len(args.prompt)]
    test = [codec.encode_prompt(name, db, args.prompt_seconds) for name, db in real[:args.test_prompts]] \
        if not args.prompt else []
    completions = [dreamer.complete(c, args.samples, i) for i, c in enumerate(user + test)]
    pair = (prompts[0], prompts[-1]) if args.prompt2 else tuple((user + test)[:2])
    mix = dreamer.interpolate(*pair, list(ALPHAS), args.interp_seconds) if len(pair) == 2 else []
    timer = dreamer.timer
    # ---- how far from real speech --------------------------------------------------------
    real_dbs = [db for _, db in real[:args.real_clips]]
    real_waves = dreamer.real(real_dbs)
    groups = {"tokenizer": dreamer.real(real_dbs, roundtrip=True),
              "unconditional": [d.wave for d in uncond], "warm": [d.wave for d in warm],
              "completion": [d.wave[c.prompt_samples:] for c in completions for d in c.dreams]}
    tables, per_clip = acoustic_tables(real_waves, groups, sr) if real_waves else ({}, {})
    tested = [c for c in completions[len(user):] if c.true_wave is not None]  # the test prompts
    per_prompt = []
    for i, c in enumerate(tested):
        if len(tested) < 2:
            break
        other = tested[(i + 1) % len(tested)]  # the prompts are a seeded draw: the next one is a random other
        true_cont = c.true_wave[c.prompt_samples:]
        per_prompt.append({
            "own": completion_distances(true_cont, [d.wave[c.prompt_samples:] for d in c.dreams], sr),
            "swapped": completion_distances(true_cont, dreamer.swapped(c, other), sr),
            "other": completion_distances(true_cont, [d.wave[other.prompt_samples:] for d in other.dreams], sr),
            "real_other": completion_distances(true_cont, [other.true_wave[other.prompt_samples:]], sr),
            "tokenizer": completion_distances(true_cont, [dreamer.true_roundtrip(c)], sr),
        })
    horizons = horizon_summary(per_prompt)
    metrics = dream_metrics(tables, horizons, timer.realtime_factor)
    # ---- write: into a folder beside --out, then moved in, so nothing half-written is left --
    out = Path(args.out)
    stage = out.parent / f".{out.name}.dream-{os.getpid()}.tmp"
    shutil.rmtree(stage, ignore_errors=True)
    try:
        results = dict(uncond=uncond, warm=warm, completions=completions, mix=mix, tables=tables, per_clip=per_clip,
                       horizons=horizons, n_tested=len(tested), timer=timer, notes=notes, metrics=metrics,
                       seconds=time.time() - t_start)
        written = _write(stage, args, conf["world_model"], step, codec, **results)
        out.mkdir(parents=True, exist_ok=True)
        for rel in written:
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(stage / rel, out / rel)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    print((out / "acoustics.md").read_text(), end="")
    logged = ""
    if not args.no_log:
        log_to_run(run, metrics, step, out, "dreams")
        logged = f"; logged dream/* metrics and artifacts dreams/ to run {args.run}"
    wavs, pngs = sum(r.endswith(".wav") for r in written), sum(r.endswith(".png") for r in written)
    print(f"dream: real-time factor {timer.realtime_factor:.3f} ({timer.generation_s:.1f} s generation + "
          f"{timer.griffin_lim_s:.1f} s Griffin-Lim for {timer.audio_s:.1f} s of audio, {iters} iterations)")
    print(f"dream: {conf['world_model']} run {args.run} at step {step}: {wavs} wavs, {pngs} PNGs -> {out.resolve()}{logged}")
    return 0


def _write(stage: Path, args: argparse.Namespace, kind: str, step: int, codec, uncond, warm, completions, mix, tables,
           per_clip, horizons, n_tested, timer, notes, metrics, seconds) -> list[str]:
    """Every output file under `stage`; returns their paths relative to it."""
    from tokenizer.audio_io import write_wav

    sr, fps = codec.settings.sample_rate, codec.settings.frames_per_second
    files: list[str] = []

    def wav(rel: str, wave: np.ndarray) -> None:
        write_wav(stage / rel, wave, sr)
        files.append(rel)

    for d in uncond:
        wav(f"unconditional/{d.name}.wav", d.wave)
    if uncond:
        grid_png(stage / "unconditional.png", f"{kind}: {len(uncond)} dreams from the initial state (corpus level)",
                 [d.db for d in uncond], fps)
        files.append("unconditional.png")
    for d in warm:
        wav(f"warm/{d.name}.wav", d.wave)
    arrays = {"unconditional": np.stack([d.tokens for d in uncond]) if uncond else np.zeros((0, 0, codec.model.G)),
              "warm_names": np.array([d.name for d in warm], dtype=str)}
    for i, d in enumerate(warm):
        arrays[f"warm_{i:02d}"] = d.tokens
    for i, c in enumerate(completions):
        folder = f"completions/{i:02d}-{_slug(c.clip.name)}"
        arrays[f"completion_{i:02d}"] = np.stack([d.tokens for d in c.dreams])
        arrays[f"completion_{i:02d}_prompt"] = c.clip.tokens
        if c.true_wave is not None:
            wav(f"{folder}/prompt+true.wav", c.true_wave)
        for k, d in enumerate(c.dreams):
            wav(f"{folder}/prompt+dream-{k:02d}.wav", d.wave)
        completion_png(stage / f"{folder}.png", f"{kind}: {c.clip.name}, {c.dreams[0].prompt_s:.2f} s prompt, "
                       f"{args.seconds:g} s dreamt (T={args.temperature:g})", c.true_db, [d.db for d in c.dreams],
                       c.dreams[0].prompt_s, fps)
        files.append(f"{folder}.png")
    arrays["completion_names"] = np.array([c.clip.name for c in completions], dtype=str)
    if mix:
        wav("interpolation.wav", np.concatenate([d.wave for d in mix]))
        labels = [f"alpha {a:g}" for a in ALPHAS]
        strip_png(stage / "interpolation.png", f"{kind}: dreams from mixtures of two prompts' states", [d.db for d in mix],
                  labels, fps)
        files.append("interpolation.png")
        arrays["interpolation"] = np.stack([d.tokens for d in mix])
    np.savez(stage / "tokens.npz", **arrays)
    files.append("tokens.npz")
    md = [f"# Dreams of {kind} run {args.run} (step {step})", ""]
    what = {"tokenizer": "the same clips through the tokenizer (encoded and decoded: the floor for any dream)",
            "unconditional": "dreams from the initial state (corpus level)",
            "warm": f"dreams after a {args.warmup_seconds:g} s warm-up on {args.split} utterances (corpus level)",
            "completion": "completions (the imagined part, at the prompt's level)"}
    for group, rows in tables.items():
        md += [f"Real {args.split}-split clips vs {what[group]}; all through the same Griffin-Lim:", "",
               comparison_markdown(rows)]
        write_comparison_csv(rows, stage / f"acoustics_{group}.csv")
        files.append(f"acoustics_{group}.csv")
    if not tables:
        md += ["No real clips: no acoustic table.", ""]
    md.append(horizon_markdown(horizons, n_tested) or
              f"No completion distances: they need 2 or more {args.split}-split prompts with a true continuation "
              f"(test prompts are completed only without --prompt; had {n_tested}).\n")
    if not mix:
        md.append("No interpolation: it needs two prompts (--prompt A --prompt2 B, or two test utterances).\n")
    md.append(f"Real-time factor {timer.realtime_factor:.3f}: {timer.generation_s:.2f} s generation + "
              f"{timer.griffin_lim_s:.2f} s Griffin-Lim for {timer.audio_s:.2f} s of audio.\n")
    (stage / "acoustics.md").write_text("\n".join(md))
    files.append("acoustics.md")
    summary = {
        "run": args.run, "world_model": kind, "step": step, "seconds": seconds, "notes": notes,
        "settings": {k: v for k, v in vars(args).items() if k not in ("run", "out")},
        "griffin_lim_iters": codec.griffin_lim_iters, "realtime_factor": timer.realtime_factor,
        "generation_s": timer.generation_s, "griffin_lim_s": timer.griffin_lim_s, "audio_s": timer.audio_s,
        "unconditional": {"from_initial_state": len(uncond), "after_warmup": [d.name for d in warm],
                          "warmup_seconds": args.warmup_seconds, "level": "corpus mel_mean/mel_std"},
        "completions": [{"name": c.clip.name, "prompt_s": c.dreams[0].prompt_s, "notes": c.clip.notes,
                         "true_continuation": c.true_wave is not None} for c in completions],
        "acoustics": {g: [asdict(r) for r in rows] for g, rows in tables.items()},
        "per_clip": per_clip, "completion_distance_by_horizon": horizons, "metrics": metrics, "files": files,
    }
    (stage / "summary.json").write_text(json.dumps(summary, indent=1, default=float))
    files.append("summary.json")
    return files


if __name__ == "__main__":
    sys.exit(main())
