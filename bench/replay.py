"""Replay reader throughput and memory: batches/s of 32 x 48 steps from a store of 10,000 episodes.

    python bench/replay.py                        # 10,000 episodes, 1 DataLoader worker
    python bench/replay.py --scale 10             # a store 10x larger: memory should not grow
    python bench/replay.py --store /tmp/store     # keep (and reuse) the store there
    python bench/replay.py --store s3://bench-replay/store --moto --seconds 120 --listing 100000
        # the store in a bucket of moto's S3 server, started here on 127.0.0.1 (a subprocess, filled
        # in its own memory: fast), then the listing cost at 100,000 episodes: incremental vs full
    AWS_ENDPOINT_URL=... python bench/replay.py --store s3://bucket/prefix   # any S3 (filled by PUTs)

Episodes have 50..250 steps (2..10 s of speech at 25 steps/s) and are written by the same
`save_episode` the generators use. Memory is the proportional set size (PSS) of the learner
process plus its DataLoader workers, sampled while batches stream. On a bucket the reader caches
the episodes it read (`--cache_mb`), so the rate climbs as the cache fills: it is reported per
window of `--window` seconds. moto is a Python server, far slower per request than S3 itself.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pydreamer.data import make_replay_loader  # noqa: E402
from pydreamer.episodes import EpisodeListing, episode_filename, list_episodes, save_episode  # noqa: E402
from runtime import s3, storage  # noqa: E402
from runtime.config import load_config  # noqa: E402
from runtime.s3 import RemotePath  # noqa: E402
from runtime.storage import store_path  # noqa: E402


def pss_mb(pid: int) -> float:
    """Proportional set size: shared pages (torch's libraries, forked workers) are counted once in a sum."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def bench_episodes(n_episodes: int, n_workers: int = 4, tokens_per_step: int = 4, seed: int = 0):
    """(path relative to the store's episodes folder, episode) of a synthetic store."""
    rng = np.random.default_rng(seed)
    for i in range(n_episodes):
        w = i % n_workers
        T = int(rng.integers(50, 251))
        reset = np.zeros(T + 1, bool)
        reset[0] = True
        terminal = np.zeros(T + 1, bool)
        terminal[-1] = True
        action = np.ones((T + 1, 1), np.float32)
        action[0] = 0
        episode = dict(
            tokens=rng.integers(0, 1024, size=(T + 1, tokens_per_step)).astype(np.int16),
            action=action,
            reward=rng.random(T + 1).astype(np.float32),
            terminal=terminal,
            reset=reset,
            utterance_id=np.asarray(f"utt-{i:07d}"),
            worker=np.asarray(w),
            episode=np.asarray(i // n_workers),
            split=np.asarray("train"),
        )
        yield f"w{w}/{episode_filename(w, i // n_workers, T)}", episode


def make_store(folder, n_episodes: int, n_workers: int = 4, tokens_per_step: int = 4, seed: int = 0) -> float:
    """Write the store with save_episode (a bucket: by PUTs from 8 threads); returns episodes written per second."""
    folder = store_path(folder)
    start = time.perf_counter()
    episodes = bench_episodes(n_episodes, n_workers, tokens_per_step, seed)
    with ThreadPoolExecutor(8 if isinstance(folder, RemotePath) else 1) as pool:
        for i, _ in enumerate(pool.map(lambda item: save_episode(folder / item[0], item[1]), episodes)):
            if (i + 1) % 10000 == 0:
                print(f"  wrote {i + 1} episodes ({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    return n_episodes / (time.perf_counter() - start)


# ---- a local S3-compatible server (moto), filled in its own memory --------------------------------

def serve_moto(port: int, store: str, n_episodes: int, n_listing: int) -> None:
    """Runs in a subprocess: moto's S3 backend filled directly (no HTTP: 100,000 PUTs through moto take
    many minutes), then served on 127.0.0.1:port until killed. `<store>/episodes` gets the bench's
    episodes, `listing_store(store)` gets `n_listing` small objects named like episodes (for the listing cost)."""
    import logging

    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    root = RemotePath(store)
    backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
    backend.create_bucket(root.bucket, "us-east-1")
    start = time.perf_counter()
    for rel, episode in bench_episodes(n_episodes):
        buf = io.BytesIO()
        np.savez(buf, **episode)
        backend.put_object(root.bucket, (root / "episodes" / rel).key, buf.getvalue())
    if n_listing:
        listing = listing_store(root)
        backend.create_bucket(listing.bucket, "us-east-1")
    for i in range(n_listing):
        w = i % 4
        backend.put_object(listing.bucket, (listing / f"w{w}" / episode_filename(w, i // 4, 100)).key, b"x")
    print(f"moto: filled with {n_episodes} episodes and {n_listing} listing objects in "
          f"{time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    while True:
        time.sleep(3600)


def listing_store(root: RemotePath) -> RemotePath:
    """Where the listing measure's objects lie: a bucket of their own (moto's listing cost grows with the
    bucket, so they would slow the reader's measure)."""
    return RemotePath(f"s3://{root.bucket}-listing/{root.key}/listing")


def start_moto(store: str, n_episodes: int, n_listing: int) -> subprocess.Popen:
    """moto's server for `store`, filled; sets AWS_ENDPOINT_URL and fake credentials for this process."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, __file__, "--serve_moto", str(port), "--store", store,
                             "--episodes", str(n_episodes), "--listing", str(n_listing)])
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 1800
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=2).close()  # it listens once filled
            break
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise SystemExit(f"moto's server did not answer on {url}")
        try:
            proc.wait(timeout=0.2)
            raise SystemExit(f"moto's server exited ({proc.returncode})")
        except subprocess.TimeoutExpired:
            pass
    os.environ.update(AWS_ENDPOINT_URL=url, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                      AWS_DEFAULT_REGION="us-east-1")
    s3._clients.clear()
    return proc


def listing_cost(folder, new_per_worker: int = 10, repeats: int = 3) -> dict:
    """Seconds, requests and keys of (a) a full listing of `folder` and (b) the incremental listing that
    follows the writing of `new_per_worker` episodes into each of its 4 worker folders."""
    folder = store_path(folder)
    out: dict[str, list] = {"full": [], "incremental": [], "incremental_none_new": []}
    listing = None
    for r in range(repeats):
        s3.stats.reset()
        t0, c0 = time.perf_counter(), time.thread_time()
        listing = EpisodeListing(folder)
        n = len(listing.new())
        out["full"].append((time.perf_counter() - t0, time.thread_time() - c0, s3.stats.list_requests,
                            s3.stats.listed_keys, n))
    for r in range(repeats):
        for w in range(4):
            for i in range(new_per_worker):
                storage.write_bytes_atomic(folder / f"w{w}" / episode_filename(w, 900_000 + r * 1000 + i, 100), b"x")
        s3.stats.reset()
        t0, c0 = time.perf_counter(), time.thread_time()
        n = len(listing.new())
        out["incremental"].append((time.perf_counter() - t0, time.thread_time() - c0, s3.stats.list_requests,
                                   s3.stats.listed_keys, n))
        s3.stats.reset()
        t0, c0 = time.perf_counter(), time.thread_time()
        n = len(listing.new())
        out["incremental_none_new"].append((time.perf_counter() - t0, time.thread_time() - c0,
                                            s3.stats.list_requests, s3.stats.listed_keys, n))
    result = {}
    for kind, rows in out.items():
        wall, cpu, requests, keys, n = (float(np.median([row[j] for row in rows])) for j in range(5))
        result[kind] = {"seconds": round(wall, 3), "client_cpu_s": round(cpu, 3), "list_requests": int(requests),
                        "keys_listed": int(keys), "episodes_found": int(n)}
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--episodes", type=int, default=10_000)
    p.add_argument("--scale", type=int, default=1, help="multiply the store size")
    p.add_argument("--store", default="", help="replay store folder (made if it has no episodes; default: a temp folder)")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--batch_length", type=int, default=48)
    p.add_argument("--data_workers", type=int, default=1)
    p.add_argument("--seconds", type=float, default=10.0, help="measure for this long")
    p.add_argument("--window", type=float, default=10.0, help="report the rate per window of this many seconds")
    p.add_argument("--cache_mb", type=float, default=512.0, help="a bucket reader's episode cache (per worker)")
    p.add_argument("--moto", action="store_true", help="with an s3:// --store: start moto's S3 server here, filled")
    p.add_argument("--listing", type=int, default=0,
                   help="also measure listing a store of this many episodes (a bucket: <store>/listing)")
    p.add_argument("--listing_repeats", type=int, default=3, help="median of this many listings")
    p.add_argument("--serve_moto", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()

    n = args.episodes * args.scale
    if args.serve_moto:
        serve_moto(args.serve_moto, args.store, n, args.listing)
        return
    tmp = None if args.store else tempfile.mkdtemp(prefix="replay-bench-")
    replay_dir = store_path(args.store or tmp)
    remote = isinstance(replay_dir, RemotePath)
    server = None
    if args.moto:
        if not remote:
            raise SystemExit("--moto needs --store s3://bucket/prefix")
        print(f"starting moto's S3 server with {n} episodes and {args.listing} listing objects ...", file=sys.stderr)
        server = start_moto(str(replay_dir), n, args.listing)
    try:
        writes_per_s = None
        have = len(list_episodes(replay_dir / "episodes"))
        if have < n:
            print(f"writing {n - have} episodes to {replay_dir}/episodes ...", file=sys.stderr)
            writes_per_s = make_store(replay_dir / "episodes", n - have, seed=have)
        elif remote:  # the write rate a generator gets: a sample of single PUTs
            sample = replay_dir / "put-sample"
            start = time.perf_counter()
            for rel, episode in bench_episodes(200, seed=99):
                save_episode(sample / rel, episode)
            writes_per_s = 200 / (time.perf_counter() - start)
        t0 = time.perf_counter()
        n_files = len(list_episodes(replay_dir / "episodes"))
        full_list_s = time.perf_counter() - t0

        conf = load_config(["defaults"])
        conf.update(batch_size=args.batch_size, batch_length=args.batch_length, data_workers=args.data_workers)
        torch.set_num_threads(1)
        loader = make_replay_loader(conf, replay_dir, cache_mb=args.cache_mb)
        it = iter(loader)
        t0 = time.perf_counter()
        next(it)
        first_batch_s = time.perf_counter() - t0
        for _ in range(20):  # warm up: workers started, lanes filled
            next(it)
        me = os.getpid()
        server_pid = server.pid if server is not None else None  # moto's memory is not the reader's
        mem = []
        windows: list[float] = []
        count, start = 0, time.perf_counter()
        window_start, window_count = start, 0
        while time.perf_counter() - start < args.seconds:
            batch = next(it)
            assert batch["tokens"].shape == (args.batch_length, args.batch_size, 4)
            count += 1
            window_count += 1
            if count % 100 == 0:
                mem.append(pss_mb(me) + sum(pss_mb(c) for c in children(me) if c != server_pid))
            if time.perf_counter() - window_start >= args.window:
                windows.append(round(window_count / (time.perf_counter() - window_start), 1))
                window_start, window_count = time.perf_counter(), 0
        elapsed = time.perf_counter() - start
        if time.perf_counter() - window_start >= args.window / 2:  # the last window, if not too short
            windows.append(round(window_count / (time.perf_counter() - window_start), 1))
        mem.append(pss_mb(me) + sum(pss_mb(c) for c in children(me) if c != server_pid))
        del it, loader
        result = {
            "episodes_in_store": n_files,
            "batch": f"{args.batch_size} x {args.batch_length}",
            "data_workers": args.data_workers,
            "batches_per_s": round(count / elapsed, 1),
            "steps_per_s": round(count * args.batch_size * args.batch_length / elapsed),
            "first_batch_s": round(first_batch_s, 2),
            "pss_mb_start": round(mem[0], 1),
            "pss_mb_end": round(mem[-1], 1),
            "pss_mb_max": round(max(mem), 1),
            "batches_per_s_by_window": windows,
            "window_s": args.window,
            "list_store_s": round(full_list_s, 2),
        }
        if remote:
            result.update(store=str(replay_dir), server="moto (local, Python)" if args.moto else "AWS_ENDPOINT_URL",
                          cache_mb=args.cache_mb, episode_writes_per_s=round(writes_per_s or 0, 1))
        if args.listing:
            folder = listing_store(replay_dir) if remote else Path(tmp or args.store) / "listing"
            if not remote and len(list_episodes(folder)) < args.listing:
                for i in range(args.listing):
                    w = i % 4
                    (folder / f"w{w}").mkdir(parents=True, exist_ok=True)
                    (folder / f"w{w}" / episode_filename(w, i // 4, 100)).write_bytes(b"x")
            result["listing"] = {"episodes": args.listing, **listing_cost(folder, repeats=args.listing_repeats)}
        print(json.dumps(result))
        print(f"reader: {result['batches_per_s']} batches/s of {result['batch']} steps "
              f"({n_files} episodes, {args.data_workers} data workers, memory (PSS, learner + workers) {result['pss_mb_max']} MB)")
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
        if server is not None:
            server.kill()


if __name__ == "__main__":
    main()
