"""One `python -m wavegan` run: the trainer in the run's artifact folder, and what each point of the quality curve
writes (samples/step-NNNNNN/, samples/curve.md) and logs (`dream/unconditional/*` at that step)."""
from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from wavegan.config import CommandError

log = logging.getLogger("wavegan")


class Session:
    """One command's run: the trainer in the run's artifact folder, and what each curve point writes and logs."""

    def __init__(self, conf: Mapping[str, Any], run, device, real_ids: list[str], real: list):
        from runtime.tracking import local_artifact_dir, local_replay_dir
        from tokenizer.features import MelSettings
        from wavegan.config import window_samples
        from wavegan.train import Trainer

        self.conf, self.run, self.device, self.real_ids, self.real = conf, run, device, real_ids, real
        local = local_artifact_dir(run)
        self.remote = local is None  # a tracking server keeps the artifacts: written here, then uploaded
        self.root = Path(local or local_replay_dir(conf["mlflow_dir"], run.info.run_id))
        self.trainer = Trainer(conf, window_samples(conf), device, self.root)
        self.settings = MelSettings.from_conf(conf)
        self.samples = self.root / "samples"
        self.last = None  # the latest curve point's Scored
        if self.remote:
            import mlflow

            self.trainer.after_save = lambda path: mlflow.log_artifact(str(path), "checkpoints")

    def start(self, threads: int, waves) -> None:
        """Resume when the run has a checkpoint; log the sizes, tags and the real clips."""
        import mlflow

        from pydreamer.runs import fetch_checkpoints
        from runtime.files import remove_stale_temporaries
        from wavegan.report import write_real

        remove_stale_temporaries(self.trainer.latest.parent)
        if self.remote and not self.trainer.latest.is_file():
            fetch_checkpoints(self.run, self.root)
        try:
            self.trainer.resume()
        except (ValueError, RuntimeError) as e:
            why = str(e).splitlines()[0]
            raise CommandError(f"checkpoint {self.trainer.latest} cannot be continued: {why}") from None
        counts = self.trainer.counts()
        mlflow.set_tags({"wavegan/device": str(self.device), "wavegan/threads": str(threads),
                         "wavegan/checkpoints": str(self.trainer.latest.parent)})
        mlflow.log_metrics({"train/model_params": float(sum(counts.values())),
                            "wavegan/generator_params": float(counts["generator"]),
                            "wavegan/critic_params": float(counts["critic"]),
                            "wavegan/train_utterances": float(len(waves.ids)),
                            "wavegan/corpus_minutes": waves.seconds / 60,
                            "wavegan/skipped_utterances": float(len(waves.skipped))}, step=self.trainer.step)
        if waves.skipped:
            mlflow.log_text("\n".join(f"{i}: {why}" for i, why in waves.skipped) + "\n", "wavegan/skipped.txt")
        if self.real and not (self.samples / "real").is_dir():
            write_real(self.samples / "real", self.real_ids, self.real, self.settings.sample_rate)
            self._upload(self.samples / "real", "samples/real")
        log.info("WaveGAN on %s (%d threads): generator %.2fM, critic %.2fM parameters, windows of %d samples; "
                 "run %s%s",
                 self.device, threads, counts["generator"] / 1e6, counts["critic"] / 1e6,
                 self.trainer.model.dims["samples"], self.run.info.run_id,
                 f", resuming at step {self.trainer.step}" if self.trainer.resumed_at is not None else "")

    def _upload(self, folder: Path, artifact_path: str) -> None:
        if self.remote:
            from pydreamer.runs import log_to_run

            log_to_run(self.run, {}, self.trainer.step, folder, artifact_path)

    # ---- training, with a stop that saves first ----------------------------------------------------------

    def train(self, sampler) -> int:
        """Train to `wavegan_steps`; 0 done, 130 stopped by SIGTERM / Ctrl-C (saved), 3 a NaN loss."""
        import mlflow

        from wavegan.gan import NonFiniteLoss
        from wavegan.train import EXIT_INTERRUPTED, EXIT_NONFINITE, Interrupted, train

        t = self.trainer
        if t.step >= self.conf["wavegan_steps"]:
            if not any(row["step"] == t.step for row in t.curve):  # a finished run asked again: its last point
                self.curve_point(t.step, {})
            return 0
        stop = {"flag": False}

        def on_signal(signum, frame) -> None:
            stop["flag"] = True

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            train(t, sampler, lambda m, step: mlflow.log_metrics(m, step=step), self.curve_point, lambda: stop["flag"])
        except Interrupted:
            log.info("stopped at step %d: checkpoint saved to %s; continue with --resume_id %s", t.step, t.latest,
                     self.run.info.run_id)
            return EXIT_INTERRUPTED
        except NonFiniteLoss as e:
            msg = (f"WaveGAN stopped at step {t.step + 1}: {e}; the last checkpoint is kept at {t.latest}: lower "
                   f"wavegan_lr, and continue with --resume_id {self.run.info.run_id}")
            mlflow.set_tag("stop_reason", msg)
            log.error(msg)
            return EXIT_NONFINITE
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return 0

    # ---- the quality curve ----------------------------------------------------------------------------

    def curve_point(self, step: int, recent: Mapping[str, float]) -> None:
        """Samples of this checkpoint: written, scored against the real clips, logged at `step`, added to the curve."""
        import mlflow

        from wavegan.report import curve_row, write_curve, write_point
        from wavegan.samples import fixed_latents, score

        t = self.trainer
        final = step >= self.conf["wavegan_steps"]
        z = fixed_latents(int(self.conf["wavegan_samples"]), t.model.latent_dim, int(self.conf["seed"]))
        t.model.eval()
        scored = score(t.model, z, self.real, self.settings.sample_rate, step, self.device,
                       perceptual=final and bool(self.conf["dream_perceptual"]))
        t.model.train()
        folder = self.samples / f"step-{step:06d}"
        write_point(folder, scored, self.run.info.run_id, len(self.real), self.real, self.settings)
        row = curve_row(scored, t.train_seconds / 60, recent)
        t.curve = [r for r in t.curve if r["step"] != step] + [row]
        write_curve(self.samples, t.curve)
        extra = {"wavegan/curve/mean_ks": row["mean_ks"], "wavegan/curve/train_minutes": row["minutes"]}
        mlflow.log_metrics({k: v for k, v in {**scored.metrics, **extra}.items() if np.isfinite(v)}, step=step)
        self._upload(folder, f"samples/{folder.name}")
        if self.remote:
            for name in ("curve.md", "curve.csv"):
                mlflow.log_artifact(str(self.samples / name), "samples")
        self.last = scored
        log.info("step %d: %d samples -> %s (silent %s, mean KS D %s)", step, len(scored.waves), folder,
                 f"{row['silent']:.0%}" if np.isfinite(row["silent"]) else "-",
                 f"{row['mean_ks']:.3f}" if np.isfinite(row["mean_ks"]) else "-")

    def finish(self, wall_s: float) -> None:
        """The last point's acoustic table, the curve, and where everything is."""
        from pydreamer.dreams.acoustics import comparison_markdown
        from pydreamer.dreams.report import structure_verdict
        from runtime.tracking import tracking_uri
        from wavegan.report import curve_markdown

        t, run_id = self.trainer, self.run.info.run_id
        last = self.last
        if last is not None and last.rows:
            print(f"\nReal test clips ({len(self.real)}) vs the WaveGAN's {len(last.waves)} samples at step "
                  f"{last.step}:\n")
            print(comparison_markdown(last.rows) + structure_verdict(last.rows))
        print("Quality against training time (samples of each scored checkpoint vs the real clips):\n")
        print(curve_markdown(t.curve))
        uri = tracking_uri(self.conf)
        print(f"wavegan: run {run_id} finished at step {t.step} ({t.train_seconds / 60:.1f} min training, "
              f"{wall_s / 60:.1f} min in all); samples and curve: {self.samples.resolve()}; "
              f"checkpoint {t.latest.resolve()}")
        print(f"wavegan: beside world-model runs: python -m pydreamer.compare --runs {run_id} RUN_ID ... "
              f"--mlflow_dir {self.conf['mlflow_dir']}   (MLflow: {uri})")

