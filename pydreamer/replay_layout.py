"""Where everything of a run lives inside its replay store (a folder, or s3://bucket/prefix), in one place.

    <replay_dir>/episodes/w<worker>/*.npz        train episodes (generators write, the learner reads)
    <replay_dir>/episodes_eval/w<worker>/*.npz   val episodes (the learner's eval/* and model selection)
    <replay_dir>/checkpoints/latest.pt, best.pt  the learner's weights (artifact folder `checkpoints`)
    <replay_dir>/learner.lock                    the live learner's lease (runtime/lease.py): one per run
    <replay_dir>/episodes/w<worker>.lock          a live generator worker's lease: one writer per worker id
    <replay_dir>/evaluation/<split>/             `python -m pydreamer.evaluate` (artifacts `evaluation/<split>`)
    <replay_dir>/dreams/                         `python -m pydreamer.dream` at the end of a run (artifacts `dreams`)

When the MLflow run's artifacts are the replay store (the default), each folder is also the run's artifact
of the same name; the artifact paths below are the names to log under when they are not.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from runtime.s3 import RemotePath
from runtime.storage import store_path

EPISODE_FOLDERS = {"train": "episodes", "val": "episodes_eval"}  # generator split -> folder
CHECKPOINTS = "checkpoints"
CHECKPOINT_FILES = {"latest": "latest.pt", "best": "best.pt"}
DREAMS = "dreams"


@dataclass(frozen=True)
class ReplayLayout:
    root: Path | RemotePath

    @classmethod
    def of(cls, replay_dir: Path | str | RemotePath) -> "ReplayLayout":
        return cls(store_path(replay_dir))

    def episodes(self, split: str = "train") -> Path | RemotePath:
        """The episodes a generator of `split` (train or val) writes."""
        if split not in EPISODE_FOLDERS:
            raise ValueError(f"split must be one of {', '.join(EPISODE_FOLDERS)}, not {split!r}")
        return self.root / EPISODE_FOLDERS[split]

    def worker_episodes(self, split: str, worker: int) -> Path | RemotePath:
        return self.episodes(split) / f"w{worker}"

    @property
    def checkpoints(self) -> Path | RemotePath:
        return self.root / CHECKPOINTS

    def checkpoint(self, which: str = "latest") -> Path | RemotePath:
        """`latest` (the learner's latest weights, which the network policy follows) or `best` (the weights
        with the lowest val eval/nll_h1 so far: model selection)."""
        if which not in CHECKPOINT_FILES:
            raise ValueError(f"checkpoint must be 'latest' or 'best', not {which!r}")
        return self.checkpoints / CHECKPOINT_FILES[which]

    @property
    def learner_lease(self) -> Path | RemotePath:
        """Held by the run's live learner: a second one (a second resume) is refused."""
        return self.root / "learner.lock"

    def worker_lease(self, split: str, worker: int) -> Path | RemotePath:
        """Held by the live generator of (split, worker): a second one would overwrite its episodes."""
        return self.episodes(split) / f"w{worker}.lock"

    def evaluation(self, split: str) -> Path | RemotePath:
        return self.root / evaluation_artifacts(split)

    @property
    def dreams(self) -> Path | RemotePath:
        return self.root / DREAMS


def evaluation_artifacts(split: str) -> str:
    """The artifact path of a split's per-horizon evaluation."""
    return f"evaluation/{split}"


def checkpoint_path(replay_dir: Path | str | RemotePath, which: str = "latest") -> Path | RemotePath:
    """The replay store's checkpoint `which` (latest or best): ReplayLayout.of(replay_dir).checkpoint(which)."""
    return ReplayLayout.of(replay_dir).checkpoint(which)
