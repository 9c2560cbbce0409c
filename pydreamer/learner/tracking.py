"""Rank 0's MLflow side of the learner's loop: metrics (none twice after a resume), the growing eval set,
and the unusable episode files named in the run."""
from __future__ import annotations

import collections
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Mapping

from pydreamer.learner.eval_metrics import load_eval_episodes
from pydreamer.learner.loop import Learner
from pydreamer.replay_layout import ReplayLayout

log = logging.getLogger("pydreamer.learner")


def learner_tracking(conf: Mapping[str, Any], learner: Learner, replay_dir: Path):
    """Rank 0's MLflow side of the loop: (log_fn, eval_episodes_fn, skip_fn)."""
    import mlflow

    eval_folder = ReplayLayout.of(replay_dir).episodes("val")
    eval_cache: dict[str, list] = {"episodes": []}
    run_id = mlflow.active_run().info.run_id
    # A tracking server that is down costs a request 2 retries of 20 s at most, not MLflow's minutes of backoff:
    # the metrics wait in MetricBuffer meanwhile (both settings stay the user's to choose).
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    client = mlflow.MlflowClient()
    named: dict[str, None] = {}  # every unusable episode file met, in order, named once

    def name_skipped(lines: list[str], step: int) -> None:
        new = [line for line in lines if line not in named]
        if new:
            named.update(dict.fromkeys(new))
            try:
                mlflow.log_text("\n".join(named) + "\n", "replay/skipped_episodes.txt")
            except Exception as e:  # the store is down: the next new name writes the whole list again
                log.warning("cannot record the skipped episode files now (%s)", type(e).__name__)

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
            try:
                logged_upto[key] = max((m.step for m in client.get_metric_history(run_id, key)), default=-1)
            except Exception:  # the store is down: asked again at the next step
                return False
        return step <= logged_upto[key]

    buffer = MetricBuffer(run_id, client)

    def log_fn(metrics: dict[str, float], step: int) -> None:
        metrics = {k: float(v) for k, v in metrics.items() if math.isfinite(float(v)) and not already_logged(k, step)}
        buffer.log(metrics, step)

    log_fn.flush = buffer.flush  # type: ignore[attr-defined]  # the learner's last call: what is still held
    return log_fn, eval_episodes, name_skipped


class MetricBuffer:
    """The learner's metrics on their way to the tracking store. While the store cannot be reached (a tracking
    server restarting, a network cut) they wait here, the oldest dropped and counted past `limit` points, and
    a send is tried again only every `retry_s`: an outage pauses logging, never training. When the store is
    back they are sent in order, with their own steps and times."""

    def __init__(self, run_id: str, client: Any, limit: int = 200_000, retry_s: float = 30.0, clock=time.monotonic):
        self.run_id, self.client, self.limit, self.retry_s, self.clock = run_id, client, int(limit), retry_s, clock
        self.held: collections.deque = collections.deque()
        self.dropped = 0
        self.down_since: float | None = None
        self.next_try = 0.0

    def log(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.held.extend(Metric(k, float(v), now, int(step)) for k, v in metrics.items())
        while len(self.held) > self.limit:
            self.held.popleft()
            self.dropped += 1
        if self.clock() >= self.next_try:
            self.flush()

    def flush(self) -> bool:
        """Send what is held (1,000 points a request, MLflow's limit); False while the store cannot be reached."""
        while self.held:
            batch = [self.held[i] for i in range(min(1000, len(self.held)))]
            try:
                self.client.log_batch(self.run_id, metrics=batch)
            except Exception as e:  # MlflowException, a refused connection, a timeout: all the same here
                if self.down_since is None:
                    self.down_since = self.clock()
                    log.warning("the tracking store cannot be reached (%s: %s): training goes on, metrics are held "
                                "(up to %d points, the oldest dropped past that) and sent when it is back",
                                type(e).__name__, str(e).splitlines()[0][:200] if str(e) else "", self.limit)
                self.next_try = self.clock() + self.retry_s
                return False
            for _ in batch:
                self.held.popleft()
        if self.down_since is not None:
            lost = f"; {self.dropped} of the oldest points were dropped" if self.dropped else ""
            log.warning("the tracking store is back after %.0f s: the held metrics were sent%s",
                        self.clock() - self.down_since, lost)
            self.down_since = None
        return True
