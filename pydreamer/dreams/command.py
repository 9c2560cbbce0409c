"""Hear what a world model imagines: dreams, completions and mixtures as wavs, pictures and an acoustic table.

    python -m pydreamer.dream --run RUN_ID [--name NAME] [--out DIR] [--prompt A.wav ...] [--prompt2 B.wav]
                              [--prompt_seconds 1.0] [--dream_seconds S] [--dream_samples N] [--temperature 1.0]
                              [--seed 0] [--split test] [--dream_unconditional N] [--dream_warm N]
                              [--dream_real_clips N] [--condition LABEL[=VALUE] ...] [--grid_dreams N]

The sizes not given (--dream_seconds, --dream_samples, --dream_unconditional, ...) are the run's own config keys
of the same names: one source of defaults, which launch.py's dreams at the end of a run use too (options.py; the
short names of before, --seconds, --samples, ..., still work). A dream of this command is the run's ad-hoc dream:
its own folder (--out, default the run's dreams/<--name>/, the name defaulting to the time it starts), artifacts
dreams/<name>/ and metrics dreams/<name>/...; the run's own dreams (dreams/, listen.html, dream/* metrics) are
launch.py's (--as_run_dreams) and stay as they are.

From the run id alone (its config, checkpoint and the tokenizer artifact it was trained with, see
runs.py), for either world model:

* unconditional dreams: `--dream_unconditional` dreams of `--dream_seconds` from the initial state, and
  `--dream_warm` more from the posterior state after a `--warmup_seconds` warm-up on real `--split` utterances;
* completions: each `--prompt` (any audio file) filtered for `--prompt_seconds`, then `--dream_samples`
  continuations of `--dream_seconds`; without `--prompt`, `--dream_test_prompts` utterances of the split, beside
  their true continuation;
* interpolation: dreams from mixtures of the latent states of two prompts (`--prompt2`, else the
  first two prompts).
* conditioned dreams (a run trained with `condition`): `--condition language=es` conditions every dream above on
  that value; `--condition language` dreams from nothing on each value of the label, a row per value in
  `conditioned_language.png`, and a classifier of the label fitted on real train clips says how often it hears
  the value a dream was conditioned on (`dream/condition/language/acc`, beside chance and real clips:
  alignment.py). A conditioned run without `--condition` gets a row per value of each of its labels.

Tokens -> the run's VQ-VAE decoder -> log-mel (z-score undone with the prompt's statistics, or the
corpus' average without a prompt) -> the vocoder (`--vocoder hifigan`: a pretrained HiFi-GAN behind a bridge
from our log-mels; `griffinlim`: inverse mel + Griffin-Lim) -> wav at the tokenizer's rate.
Writes wavs, PNGs, `acoustics.md` and CSVs, `tokens.npz`, `summary.json` and `index.html` to its folder (all or
nothing: built aside, then moved in), and logs the metrics and the folder into the run as said above. Progress (the
dreams made, with an estimate of the time left) goes to stderr. Bad input (unknown run, missing or non-audio
prompt, ...) is one line and exit code 2, before anything is written. Prints the real-time factor: (generation +
vocoder seconds) / audio seconds.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydreamer.dreams.options import CONFIG_DEFAULTS, Destination, add_config_options, check_args, destination, \
    fill_from_config
from pydreamer.progress import Progress, say
from pydreamer.runs import RunError, run_command

if TYPE_CHECKING:
    from pydreamer.dreams.results import DreamResults

log = logging.getLogger("pydreamer.dream")
__all__ = ["CONFIG_DEFAULTS", "build_parser", "check_args", "fill_from_config", "main"]


def build_parser() -> argparse.ArgumentParser:
    from runtime.config_reference import HelpFormatter

    p = argparse.ArgumentParser(prog="python -m pydreamer.dream", description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--run", required=True, help="the MLflow run id of a launch.py run")
    p.add_argument("--name", help="names this command's folder, artifacts and metrics (dreams/NAME/) (default: the "
                   "time it starts, YYYYmmdd-HHMMSS)")
    p.add_argument("--out", help="folder for the wavs, PNGs and tables (default: the run's dreams/NAME/; with "
                   "--as_run_dreams, the run's dreams/)")
    p.add_argument("--as_run_dreams", action="store_true", help="these are the run's own dreams (launch.py's at the "
                   "end of a run): into its dreams/ and listen.html, logged as the plain dream/* metrics")
    p.add_argument("--prompt", nargs="+", action="extend", default=[], help="audio files to complete (any "
                   "rate/channels); none: --dream_test_prompts utterances of the split")
    p.add_argument("--prompt2", help="interpolate between the first prompt and this one (default: the first two "
                   "prompts or test utterances)")
    p.add_argument("--prompt_seconds", type=float, default=1.0, help="seconds of each prompt filtered through the posterior")
    p.add_argument("--temperature", type=float, default=1.0, help="divides the logits of every draw")
    p.add_argument("--split", default="test", choices=("train", "val", "test"), help="real utterances from this split")
    p.add_argument("--warmup_seconds", type=float, default=0.4, help="seconds of real speech before a warm dream")
    p.add_argument("--interp_seconds", type=float, default=1.0, help="seconds dreamt from each mixture")
    p.add_argument("--condition", action="append", metavar="LABEL[=VALUE]",
                   help="a conditioned run: LABEL=VALUE dreams every dream on that value (repeat for more labels); "
                        "LABEL alone dreams from nothing on each of its values, a row each, scored by a classifier of "
                        "the label (default: every label the run is conditioned on, alone)")
    p.add_argument("--grid_dreams", type=int, help="dreams from nothing per value of a LABEL row (default: "
                   "--dream_unconditional, at most 64 over all the label's values, at least 2)")
    p.add_argument("--mlflow_dir", default="mlruns", help="the local tracking store (MLFLOW_TRACKING_URI wins)")
    p.add_argument("--no_log", action="store_true", help="write --out only; log nothing into the run")
    add_config_options(p)
    return p


def load_prompts(codec, paths: list[str], prompt_seconds: float, seconds: float, vad_db: float | None = None) -> list:
    """Every prompt file decoded and encoded (from its first voiced step with `vad_db`), or a RunError naming the
    first one that cannot be."""
    from tokenizer.audio_io import UnusableAudio

    clips = []
    for path in paths:
        if not Path(path).is_file():
            raise RunError(f"prompt {path}: no such file")
        try:
            clips.append(codec.load_prompt(path, prompt_seconds, max_seconds=prompt_seconds + seconds + 10.0,
                                           vad_db=vad_db))
        except (UnusableAudio, ValueError) as e:
            raise RunError(f"prompt {path}: {str(e).removeprefix(Path(path).name + ': ')}") from None
    return clips


def parse_conditions(given: list[str], wm) -> tuple[dict[str, str], list[str]]:
    """`--condition` options -> (label -> value every dream is conditioned on, labels dreamt a row per value);
    a RunError (exit 2) listing the known labels or values for one the model was not trained with. Without any,
    a conditioned model dreams a row per value of each of its labels."""
    from pydreamer.models.conditioning import UnknownCondition

    known = dict(wm.conditioning.vocabulary) if wm.conditioning is not None else {}
    if not given:
        return {}, list(known)
    if not known:
        raise RunError(f"--condition: this {wm.kind} run was trained without conditioning (its config's "
                       "`condition` is empty); train one with --condition LABEL")
    fixed, rows = {}, []
    for item in given:
        label, _, value = item.partition("=")
        try:
            wm.conditioning.ids({label: value} if value else {})
            if label not in known:
                raise UnknownCondition(f"the model is not conditioned on '{label}'; its labels: {', '.join(known)}")
        except UnknownCondition as e:
            raise RunError(f"--condition {item}: {e}") from None
        if value:
            fixed[label] = value
        else:
            rows.append(label)
    return fixed, [r for r in rows if r not in fixed]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    return run_command(parser, run_dreams, argv)


@dataclass
class Setup:
    """What a dream command reads before it computes: the run, its model and tokenizer, the prompts."""

    run: Any
    conf: dict
    model: Any
    step: int
    codec: Any
    meta: dict
    tokenizer_where: str
    prompts: list
    dest: Destination  # the folder, artifacts and metric names of these dreams (options.py)


def run_dreams(args: argparse.Namespace) -> int:
    """Read (bad input: RunError, nothing written), dream and measure, then write all at once and log."""
    from pydreamer.runs import log_to_run
    from runtime.processes import set_torch_threads

    set_torch_threads()
    setup = load_setup(args)
    results = dream_and_measure(args, setup)
    dest = setup.dest
    out = write_all(results, dest.out)
    print((out / "acoustics.md").read_text(), end="")
    logged = ""
    if not args.no_log:
        log_to_run(setup.run, dest.metrics(results.metrics), setup.step, out, dest.artifacts)
        if not dest.name:  # the run's own dreams: their page at the root of its artifacts
            log_listening_page(setup.run, results, out)
        what = ("dream/* metrics and artifacts dreams/ and listen.html" if not dest.name else
                f"metrics {dest.artifacts}/* and artifacts {dest.artifacts}/")
        logged = f"; logged {what} to run {args.run}"
    timer, kind = results.timer, setup.model.world_model
    written = list(results.files)
    wavs, pngs = sum(r.endswith(".wav") for r in written), sum(r.endswith(".png") for r in written)
    print(f"dream: real-time factor {timer.realtime_factor:.3f} ({timer.generation_s:.1f} s generation + "
          f"{timer.vocoder_s:.1f} s vocoder, {results.vocoder}, for {timer.audio_s:.1f} s of audio)")
    print(f"dream: {kind} run {args.run} at step {setup.step}: {wavs} wavs, {pngs} PNGs -> {out.resolve()}{logged}")
    if not args.no_log:
        import mlflow

        from runtime.tracking import ui_hint

        page = "listen.html" if not dest.name else f"{dest.artifacts}/index.html"
        print(f"dream: open the run in MLflow ({page} among its artifacts): "
              f"{ui_hint(mlflow.get_tracking_uri(), setup.run.info.experiment_id, args.run)}")
    return 0


def log_listening_page(run, results: DreamResults, out: Path) -> None:
    """listen.html at the root of the run's artifacts: the dreams folder's listening page with links into
    `dreams/`, so the run's page in MLflow (and a copy of its artifact folder) plays the dreams from its top."""
    import tempfile

    from runtime.tracking import log_root_artifact

    with tempfile.TemporaryDirectory() as folder:
        page = Path(folder) / "listen.html"
        page.write_text(results.root_page((out / "acoustics.md").read_text()), encoding="utf-8")
        log_root_artifact(run, page, "listen.html")


def load_setup(args: argparse.Namespace) -> Setup:
    """The run (its config filling the options not given), checkpoint, tokenizer and prompts; RunError if not."""
    from pydreamer.runs import load_model, open_run, run_checkpoint, run_tokenizer
    from runtime.device import resolve_device
    from runtime.tracking import local_replay_dir
    from tokenizer.bucket import local_data_dir
    from tokenizer.codec import TokenCodec
    from tokenizer.features import MelSettings
    from tokenizer.layout import DataLayout
    from tokenizer.tokens import read_token_meta
    from tokenizer.vocoder import hifigan_available

    run, conf = open_run(args.run, args.mlflow_dir)
    check_args(fill_from_config(args, conf))
    # of a bucket data_dir: what dreams read (token meta, the tokenizer, the split's log-mels), fetched here
    conf["data_dir"] = str(local_data_dir(conf["data_dir"], parts=(
        "tokens/meta.json", "tokenizer/vqvae.pt", f"mels/{args.split}"), required=False))
    store, ckpt_path = run_checkpoint(run, conf, fetch_to=local_replay_dir(args.mlflow_dir, args.run))
    dest = destination(args, run, store)
    args.out, args.artifacts = str(dest.out), dest.artifacts
    tok = run_tokenizer(run, conf)
    device = resolve_device(conf["device"])
    try:
        codec = TokenCodec.load(tok.vqvae, device, MelSettings.from_conf(conf), args.vocoder, args.griffin_lim_iters)
    except Exception as e:
        missing = hifigan_available() if args.vocoder == "hifigan" else None
        if missing:
            raise RunError(f"--vocoder hifigan: {missing}; or use --vocoder griffinlim") from None
        raise RunError(f"tokenizer {tok.vqvae}: cannot be loaded ({type(e).__name__}: {e})") from None
    meta = json.loads(tok.meta.read_text()) if tok.meta else read_token_meta(DataLayout.of(conf["data_dir"]))
    if "mel_mean" not in meta:
        raise RunError(f"run {args.run}: no token meta.json with the corpus' mel_mean/mel_std ({tok.where})")
    model, step = load_model(ckpt_path, conf, codec.model.quantizer.codebook_size, codec.model.G, device)
    if model.wm.observes == "mel":  # it dreams log-mel steps: no VQ-VAE between it and the vocoder
        from pydreamer.dreams.audio import MelStepCodec

        codec = MelStepCodec.of(codec, meta["mel_mean"], meta["mel_std"])
    args.fixed, args.rows = parse_conditions(args.condition, model.wm)
    args.guided = model.wm.guide(args.guidance)
    args.imagination = model.wm.imagine_by(args.imagination)  # what it will do (the Transformer has one way only)
    prompts = load_prompts(codec, args.prompt + ([args.prompt2] if args.prompt2 else []), args.prompt_seconds,
                           args.seconds, conf["vad_db"])
    return Setup(run, conf, model, step, codec, meta, tok.where, prompts, dest)


def dream_and_measure(args: argparse.Namespace, setup: Setup) -> DreamResults:
    """Every dream of the command, and how far they are from real speech; computes only, writes nothing."""
    from pydreamer.dreams.alignment import alignment_metrics
    from pydreamer.dreams.audio import AudioDreamer, draw_utterances, split_pool
    from pydreamer.dreams.coverage import fit_to_clips, measure, not_measured
    from pydreamer.dreams.results import DreamResults
    from tokenizer.layout import DataLayout

    t_start = time.time()
    codec, prompts = setup.codec, setup.prompts
    dreamer = AudioDreamer(setup.model, codec, args.seconds, args.temperature, args.seed, setup.meta["mel_mean"],
                           setup.meta["mel_std"], end=args.end)
    layout = DataLayout.of(setup.conf["data_dir"])
    need = max(args.real_clips, args.warm, 0 if args.prompt else args.test_prompts)
    fps = codec.settings.frames_per_second
    pool = split_pool(layout, args.split) if need > 0 else []
    prompt_s, min_frames, short = fit_to_clips([len(u[1]) for u in pool], args.prompt_seconds, fps,
                                               codec.frames_per_step, args.split)
    real = draw_utterances(pool, need, min_frames, args.seed)
    r = DreamResults(args, setup.model.world_model, setup.step, codec.settings.sample_rate, fps, codec.vocoder.describe,
                     codec.model.G, notes=[f"tokenizer: {setup.tokenizer_where}"] + ([short] if short else []),
                     timer=dreamer.timer)
    if not real and need > 0:
        r.notes.append("no real clips: no warm-up dreams, test completions or acoustic table ("
                       + (f"no {args.split}-split log-mels in {layout.mels(args.split)})" if not pool else
                          f"none of the {args.split} split's {len(pool)} utterances lasts {min_frames / fps:.2f} s)"))
    for c in prompts:
        r.notes += [f"prompt {c.name}: {n}" for n in c.notes]
    if setup.model.wm.conditioning is not None:
        r.notes.append(_guidance_note(args, setup.model.world_model))
    user = dream_all(args, setup, dreamer, real, prompt_s, r)
    say("dream", f"measuring the dreams beside {len(real[:args.real_clips])} real {args.split}-split clips")
    measure(r, dreamer, [db for _, db in real[:args.real_clips]], n_user=len(user), kind_of=_kind_of(layout.root))
    r.not_measured = not_measured(r, args, len(pool), min_frames / fps)
    r.alignment = score_alignment(args, layout, r, setup.model.wm,
                                  None if setup.model.wm.observes == "mel" else codec.roundtrip)
    r.metrics.update(alignment_metrics(r.alignment, args.guidance if args.guided else 1.0))
    r.seconds = time.time() - t_start
    return r


def _guidance_note(args: argparse.Namespace, kind: str) -> str:
    """What acoustics.md says of how a conditioned run's dreams were guided."""
    if args.guidance == 1:
        return "conditioned dreams as trained (--dream_guidance 1: no classifier-free guidance)"
    if not args.guided:
        return (f"conditioned dreams as trained: the {kind} world model has no classifier-free guidance "
                f"(--dream_guidance {args.guidance:g} is not used)")
    return f"conditioned dreams guided at scale {args.guidance:g} (classifier-free guidance: --dream_guidance)"


def dream_all(args: argparse.Namespace, setup: Setup, dreamer, real: list, prompt_s: float, r: DreamResults) -> list:
    from pydreamer.dreams.results import ALPHAS
    """Every kind of dream into `r`, counted on stderr as they are made (pydreamer/progress.py); returns the user's
    prompts among the completed ones."""
    codec, prompts, wm = setup.codec, setup.prompts, setup.model.wm
    user = prompts[:len(args.prompt)]
    n_test = 0 if args.prompt else len(real[:args.test_prompts])
    n_mix = len(ALPHAS) if args.prompt2 or len(user) + n_test >= 2 else 0
    rows = {label: dict(wm.conditioning.vocabulary)[label] for label in args.rows}
    per_row = {label: args.grid_dreams or max(2, min(args.unconditional, 64 // len(values)))
               for label, values in rows.items()}
    total = (args.unconditional + len(real[:args.warm]) + (len(user) + n_test) * args.samples + n_mix
             + sum(per_row[label] * len(values) for label, values in rows.items()))
    with wm.conditioned(args.fixed), Progress("dream", total, "dreams") as progress:  # every dream on the values given
        r.uncond = dreamer.unconditional(args.unconditional) if args.unconditional else []
        progress.advance(len(r.uncond))
        vad_db = setup.conf["vad_db"]  # prompts start at their first voiced step, as the corpus' voice activity says
        r.warm = dreamer.warm([codec.encode_prompt(name, db, args.warmup_seconds, vad_db=vad_db)
                               for name, db in real[:args.warm]])
        progress.advance(len(r.warm))
        test = [codec.encode_prompt(name, db, prompt_s, vad_db=vad_db)
                for name, db in real[:args.test_prompts]] if not args.prompt else []
        for i, c in enumerate(user + test):
            r.completions.append(dreamer.complete(c, args.samples, i))
            progress.advance(args.samples)
        pair = (prompts[0], prompts[-1]) if args.prompt2 else tuple((user + test)[:2])
        r.mix = dreamer.interpolate(*pair, list(ALPHAS), args.interp_seconds) if len(pair) == 2 else []
        progress.advance(len(r.mix))
        for label, values in rows.items():  # a row of dreams from nothing per value of the label
            for value in values:
                with wm.conditioned({**args.fixed, label: value}):
                    r.conditioned[f"{label}={value}"] = dreamer.unconditional(per_row[label])
                progress.advance(per_row[label])
    return user


def score_alignment(args: argparse.Namespace, layout, r: DreamResults, wm, roundtrip=None) -> dict:
    """Per conditioned label, a classifier fitted on real train clips (as recorded and, with the tokenizer's
    `roundtrip`, as their tokens sound) names each conditioned dream's value: the rows of a LABEL (each value's
    dreams), or a LABEL=VALUE's dreams from nothing; and, where the label was not fixed, whether the completions of
    `--split` prompts keep their prompt's value. {} when the corpus' clips carry no such labels (a note says so)."""
    from pydreamer.dreams.alignment import LabelClassifier, RealClips, alignment, prompt_kept

    out, clips = {}, {}
    for label in [*args.rows, *[f for f in args.fixed if f not in args.rows]]:
        dreams = ({k.split("=", 1)[1]: [d.db for d in ds] for k, ds in r.conditioned.items()
                   if k.split("=", 1)[0] == label} if label in args.rows
                  else {args.fixed[label]: [d.db for d in r.uncond]})
        try:
            if not clips:  # read once for every label
                clips = {split: RealClips.read(layout, split, roundtrip if split in ("train", "test") else None,
                                               seed=args.seed)  # the prompts' split: only its labels are asked
                         for split in {"train", "test", args.split}}
            classifier = LabelClassifier.fit(layout, label, dict(wm.conditioning.vocabulary)[label], seed=args.seed,
                                             roundtrip=roundtrip, clips=clips)
        except (ValueError, OSError) as e:
            r.notes.append(f"no alignment score for {label}: {e}")
            continue
        out[label] = alignment(classifier, dreams)
        if label not in args.fixed and r.completions:  # completions dreamt unconditioned: do they keep the prompt's?
            after = lambda d: d.db[int(round(d.prompt_s * r.frames_per_second)):]  # noqa: E731 (the dreamt part)
            out[label]["completions"] = prompt_kept(classifier, [
                (clips[args.split].label_of(c.clip.name, label), [after(d) for d in c.dreams], c.clip.continuation_db)
                for c in r.completions], roundtrip)
    return out


def _kind_of(data_dir):
    """The utterance kind (counting, syllables, sentence) of a built-in corpus' utterance id; None elsewhere."""
    from pydreamer.probes import synth_kind, synth_voices_of

    voices = synth_voices_of(data_dir)
    return (lambda name: synth_kind(name, voices)) if voices else None


def write_all(results: DreamResults, out: Path) -> Path:
    """Into a folder beside `out`, then moved in, so nothing half-written is left."""
    stage = out.parent / f".{out.name}.dream-{os.getpid()}.tmp"
    shutil.rmtree(stage, ignore_errors=True)
    try:
        results.files = results.write(stage)
        out.mkdir(parents=True, exist_ok=True)
        for rel in results.files:
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(stage / rel, out / rel)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return out


if __name__ == "__main__":
    sys.exit(main())
