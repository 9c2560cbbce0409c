"""Shared fixtures: small token corpora made here with ShardWriter, never by the tokenizer stages."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

# librosa's numba gufuncs (pyin's) cache their machine code beside librosa's sources, as two files per function. Two
# processes compiling them at once can leave the pair from different processes, and a process that loads it dies
# with SIGSEGV inside pyin (numba issue 10128; seen in CI in test processes and in the commands they start, also
# with a cache folder per test process). So the first test process compiles and caches pyin while the others wait on
# a lock, and then every process, and every command a test starts, only reads that one writer's cache.
import fcntl  # noqa: E402

with open(Path(tempfile.gettempdir()) / "awm-tests-numba.lock", "w") as _lock:
    fcntl.flock(_lock, fcntl.LOCK_EX)
    try:
        import librosa as _librosa
        import numpy as _np

        for _dtype in (_np.float32, _np.float64):
            _librosa.pyin(_np.zeros(4096, _dtype), fmin=60.0, fmax=500.0, sr=16000)
    finally:
        fcntl.flock(_lock, fcntl.LOCK_UN)

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from tokenizer.shards import ShardWriter  # noqa: E402

CODEBOOK = 32
G = 4


def corpus_labels(split: str, u: int) -> dict[str, str]:
    """The labels `make_token_corpus(labels=True)` gives utterance u of a split: language alternates, the
    train voices are m0..m2 while val and test add f9 (never heard in train), and every 4th has no kind."""
    voice = f"m{u % 3}" if split == "train" or u == 0 else "f9"
    return {"language": ("de", "en")[u % 2], "voice": voice, **({"kind": "counting"} if u % 4 else {})}


def make_token_corpus(
    data_dir: Path,
    n_utterances: dict[str, int] | None = None,
    lengths: tuple[int, int] = (20, 60),
    codebook_size: int = CODEBOOK,
    tokens_per_step: int = G,
    shard_rows: int = 150,
    seed: int = 0,
    meta: bool = True,
    labels: bool = False,
) -> Path:
    """`<data_dir>/tokens/{split}/shard-*.npz` + meta.json, with every utterance's tokens
    recognisable: step t of utterance u holds tokens derived from (u, t). With `labels`, `label_*`
    arrays as `corpus_labels` says ('' where none) and meta.json's `labels` (the train values)."""
    rng = np.random.default_rng(seed)
    n_utterances = n_utterances or {"train": 12, "val": 3, "test": 2}
    for split, n in n_utterances.items():
        with ShardWriter(data_dir / "tokens" / split, max_rows=shard_rows) as writer:
            for u in range(n):
                T = int(rng.integers(lengths[0], lengths[1] + 1))
                tokens = rng.integers(0, codebook_size, size=(T, tokens_per_step)).astype(np.int16)
                voice = rng.random(T).astype(np.float32)
                utt_labels = corpus_labels(split, u) if labels else {}
                writer.add(
                    per_step={"tokens": tokens, "voice": voice},
                    per_utterance={"utterance_id": f"{split}-{u:03d}", "speaker": f"spk{u % 3}", "source": "test",
                                   **{f"label_{k}": utt_labels.get(k, "") for k in ("kind", "language", "voice")
                                      if labels}},
                )
    vocab = {k: sorted({v for u in range(n_utterances.get("train", 0)) for n, v in corpus_labels("train", u).items()
                        if n == k}) for k in ("kind", "language", "voice")}
    if meta:
        (data_dir / "tokens" / "meta.json").write_text(
            json.dumps({"codebook_size": codebook_size, "tokens_per_step": tokens_per_step, "steps_per_second": 25.0,
                        **({"labels": vocab} if labels else {})})
        )
    return data_dir


_SESSION_TRACKING_URI = os.environ.get("MLFLOW_TRACKING_URI")  # the one the suite was started with (normally none)


def _reset_tracking_uri() -> None:
    if _SESSION_TRACKING_URI is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = _SESSION_TRACKING_URI


@pytest.fixture(autouse=True)
def _tracking_uri_stays_in_its_test():
    """MLflow 3's set_tracking_uri also exports MLFLOW_TRACKING_URI, which runtime.tracking lets win over
    --mlflow_dir: without this, one test's (or one module fixture's) temporary store would become the next
    one's. Each test starts, and leaves, with the suite's own value (with the test files spread over processes,
    which file ran before is not fixed); a test that wants another sets it."""
    _reset_tracking_uri()
    yield
    _reset_tracking_uri()


@pytest.fixture(scope="session")
def token_dir(tmp_path_factory) -> Path:
    """A tiny token corpus: 12 train, 3 val, 2 test utterances of 20..60 steps, in several shards."""
    return make_token_corpus(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="session")
def labelled_token_dir(tmp_path_factory) -> Path:
    """The tiny corpus with conditioning labels (`corpus_labels`) in its shards and meta.json."""
    return make_token_corpus(tmp_path_factory.mktemp("labelled"), labels=True)


@pytest.fixture
def conf(token_dir):
    """The tiny config pointed at the tiny corpus."""
    from runtime.config import load_config

    c = load_config(["defaults", "tiny"])
    c.data_dir = str(token_dir)
    c.codebook_size = CODEBOOK
    return c
