"""Fit and scoring time, and peak memory, of the baselines (the n-gram, cache and ngram_cache above all).

    python bench/baselines.py                     # a synthetic 1-hour corpus, then the real one if present
    python bench/baselines.py --hours 1 10 100    # each size in its own process (its own peak memory)

A synthetic corpus has utterances of 50..250 steps (25 steps/s), G = 4 positions, tokens from a slow
random walk per position mixed with each utterance's favourite tokens (so contexts repeat, as in
speech). 90% train, 5% val, and a test split of at most 140 utterances scored at every start and
h = 1..15, as the evaluation does. Peak memory is the child process' max RSS (``ru_maxrss``).
With ``--corpus`` (a data dir whose tokens/ has train, val and test) it also reports the bits per
token of every baseline at h = 1 / 5 / 15 on that test split, every start step.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from pydreamer.baselines import NAMES, NEW_NAMES, Baselines  # noqa: E402

STEPS_PER_HOUR = 3600 * 25
SHOW = (1, 5, 15)


def synthetic(hours: float, K: int, G: int, seed: int) -> list[np.ndarray]:
    """Utterances of 50..250 steps; vectorised over the whole corpus (no loop over steps)."""
    rng = np.random.default_rng(seed)
    lens = rng.integers(50, 251, size=max(3, int(hours * STEPS_PER_HOUR / 150)))
    M = int(lens.sum())
    utt = np.repeat(np.arange(len(lens)), lens)
    walk = np.cumsum(rng.integers(-2, 3, size=(M, G)) * (rng.random((M, G)) < 0.4), axis=0)
    favourite = rng.integers(0, K, size=(len(lens), G, 8))[utt[:, None], np.arange(G)[None], rng.integers(0, 8, size=(M, G))]
    x = np.where(rng.random((M, G)) < 0.3, favourite, walk % K)
    return np.split(x.astype(np.int64), np.cumsum(lens)[:-1])


def run(train, val, test, K: int, horizons: int) -> dict:
    """Fit, then score the new baselines at every start of every test utterance, h = 1..horizons."""
    t0 = time.perf_counter()
    model = Baselines.fit(train, val, K, horizons)
    fit_s = time.perf_counter() - t0
    bits = {n: np.zeros(horizons) for n in NAMES}
    score_s = dict.fromkeys(NAMES, 0.0)
    for h in range(1, horizons + 1):
        sums = {n: [0.0, 0] for n in NAMES}
        for u in test:
            for name in NAMES:  # as evaluate_split asks: name after name on the same cells
                t1 = time.perf_counter()
                b, _ = model.score(name, u, np.arange(len(u)), h)
                score_s[name] += time.perf_counter() - t1
                sums[name][0] += b.sum()
                sums[name][1] += b.size
        for name in NAMES:
            bits[name][h - 1] = sums[name][0] / max(sums[name][1], 1)
    steps = {k: int(sum(map(len, v))) for k, v in (("train", train), ("val", val), ("test", test))}
    return {"steps": steps, "fit_s": round(fit_s, 2), "score_s": {k: round(v, 2) for k, v in score_s.items()},
            "score_new_s": round(sum(score_s[n] for n in NEW_NAMES), 2),
            "ngram_table_mb": round(model.ngram.nbytes / 2**20, 1),
            "bits": {n: {f"h{h}": round(float(bits[n][h - 1]), 3) for h in SHOW if h <= horizons} for n in NAMES},
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def one_synthetic(hours: float, K: int, horizons: int) -> dict:
    utts = synthetic(hours, K, 4, seed=0)
    n_val = max(1, len(utts) // 20)
    test, val, train = utts[:min(140, n_val)], utts[n_val:2 * n_val], utts[2 * n_val:]
    return {"hours": hours, "K": K, **run(train, val, test, K, horizons)}


def one_corpus(path: str, horizons: int) -> dict:
    from tokenizer.layout import DataLayout
    from tokenizer.tokens import TokenSplit, read_token_spec

    layout = DataLayout.of(Path(path))
    spec = read_token_spec(layout)
    splits = {s: [u["tokens"] for u in TokenSplit(layout, s, spec)] for s in ("train", "val", "test")}
    return {"corpus": path, "K": spec.codebook_size,
            **run(splits["train"], splits["val"], splits["test"], spec.codebook_size, horizons)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hours", type=float, nargs="*", default=[1.0], help="synthetic corpus sizes")
    parser.add_argument("--tokens", type=int, default=128, help="codebook size K of the synthetic corpora")
    parser.add_argument("--horizons", type=int, default=15)
    parser.add_argument("--corpus", default="/tmp/ci-check/data", help="a real token corpus (skipped if absent)")
    parser.add_argument("--one", default="", help=argparse.SUPPRESS)  # a child: 'hours' or 'corpus:PATH'
    parser.add_argument("--out", default="", help="write the results as JSON here too")
    args = parser.parse_args()
    if args.one:
        res = one_corpus(args.one[7:], args.horizons) if args.one.startswith("corpus:") else \
            one_synthetic(float(args.one), args.tokens, args.horizons)
        print(json.dumps(res))
        return
    jobs = [str(h) for h in args.hours]
    if (Path(args.corpus) / "tokens" / "test").is_dir():
        jobs.append(f"corpus:{args.corpus}")
    results = []
    for job in jobs:
        cmd = [sys.executable, __file__, "--one", job, "--tokens", str(args.tokens), "--horizons", str(args.horizons)]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode:
            print(out.stderr[-3000:], file=sys.stderr)
            continue
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1], indent=1), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
