"""Rank 0's MLflow side of the learner's loop: metrics (none twice after a resume), the growing eval set,
and the unusable episode files named in the run."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

from pydreamer.learner.eval_metrics import load_eval_episodes
from pydreamer.learner.loop import Learner
from pydreamer.replay_layout import ReplayLayout


def learner_tracking(conf: Mapping[str, Any], learner: Learner, replay_dir: Path):
    """Rank 0's MLflow side of the loop: (log_fn, eval_episodes_fn, skip_fn)."""
    import mlflow

    eval_folder = ReplayLayout.of(replay_dir).episodes("val")
    eval_cache: dict[str, list] = {"episodes": []}
    run_id = mlflow.active_run().info.run_id
    client = mlflow.MlflowClient()
    named: dict[str, None] = {}  # every unusable episode file met, in order, named once

    def name_skipped(lines: list[str], step: int) -> None:
        new = [line for line in lines if line not in named]
        if new:
            named.update(dict.fromkeys(new))
            mlflow.log_text("\n".join(named) + "\n", "replay/skipped_episodes.txt")

    def eval_episodes() -> list[dict]:
        want = conf["eval_episodes"]
        if len(eval_cache["episodes"]) < want:  # the eval set grows until it is full, then stays fixed
            skipped: list[str] = []
            eval_cache["episodes"] = load_eval_episodes(eval_folder, want, spec=learner.episode_spec, skipped=skipped)
            name_skipped(skipped, learner.step)
        return eval_cache["episodes"]

    # A resumed learner redoes the steps after its checkpoint; their metrics are in the run already.
    logged_upto: dict[str, int] = {}

    def already_logged(key: str, step: int) -> bool:
        if learner.resumed_at is None:
            return False
        if key not in logged_upto:
            logged_upto[key] = max((m.step for m in client.get_metric_history(run_id, key)), default=-1)
        return step <= logged_upto[key]

    def log_fn(metrics: dict[str, float], step: int) -> None:
        metrics = {k: float(v) for k, v in metrics.items() if math.isfinite(float(v)) and not already_logged(k, step)}
        if metrics:
            mlflow.log_metrics(metrics, step=step)

    return log_fn, eval_episodes, name_skipped
