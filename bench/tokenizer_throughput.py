"""Throughput and peak memory of the tokenizer's prepare and encode stages.

    python bench/tokenizer_throughput.py --configs defaults audio --minutes 10 40

For each corpus size it runs `prepare` and `encode` as separate processes (like a user
would) and reports seconds of audio per wall-clock second and the peak resident memory of
the largest process. Prepare's memory should stay flat as the corpus grows (it streams);
encode's real-time factor is compared against the >= 500x target. Encode uses the trained
tokenizer given by --vqvae, else an untrained one of the configured size (speed does not
depend on the weights).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime.config import parse_args  # noqa: E402


def timed(cmd: list[str], env: dict) -> tuple[float, float, int]:
    """(wall seconds, peak RSS in MiB of the child and its waited-for processes, exit code)."""
    with tempfile.TemporaryFile("w+") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage, not a running maximum
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            log.seek(0)
            print(log.read()[-3000:], file=sys.stderr)
    return wall, usage.ru_maxrss / 1024, proc.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, nargs="+", default=[10.0, 40.0], help="synth corpus sizes to measure")
    parser.add_argument("--vqvae", default="", help="a trained tokenizer checkpoint to encode with (default: untrained, same size)")
    parser.add_argument("--out", default="", help="write the results as JSON here too")
    conf, args = parse_args(None, parser)
    base = Path(conf.data_dir if conf.data_dir != "data" else "/tmp/bench-tokenizer")
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    results = []
    for minutes in args.minutes:
        data = base / f"synth-{minutes:g}min"
        shutil.rmtree(data, ignore_errors=True)
        tail = ["--configs", *conf.configs, "--data_dir", str(data), "--synth_minutes", str(minutes),
                "--mlflow_dir", str(base / "mlruns"), "--force"]
        wall_p, peak_p, rc = timed([sys.executable, "-c", _STAGE, "prepare", *tail], env)
        if rc:
            sys.exit(f"prepare failed for {minutes} min")
        manifest = json.loads((data / "manifest.json").read_text())
        seconds = sum(v["seconds"] for v in manifest["splits"].values())
        vq = Path(args.vqvae) if args.vqvae else base / "vqvae.pt"
        if not vq.exists():
            subprocess.run([sys.executable, "-c", _UNTRAINED, str(vq), *conf.configs], check=True)
        (data / "tokenizer").mkdir(parents=True, exist_ok=True)
        shutil.copy(vq, data / "tokenizer" / "vqvae.pt")
        wall_e, peak_e, rc = timed([sys.executable, "-c", _STAGE, "encode", *tail], env)
        if rc:
            sys.exit(f"encode failed for {minutes} min")
        row = {"minutes": minutes, "audio_seconds": round(seconds, 1),
               "prepare_x_realtime": round(seconds / wall_p, 1), "prepare_wall_s": round(wall_p, 1),
               "prepare_peak_mib": round(peak_p), "encode_x_realtime_incl_startup": round(seconds / wall_e, 1),
               "encode_x_realtime": round(json.loads((data / "tokens" / "meta.json").read_text())["encode_realtime_factor"], 1),
               "encode_peak_mib": round(peak_e)}
        results.append(row)
        print(json.dumps(row), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


# Each stage runs in its own interpreter so its peak memory is its own.
_STAGE = "import sys; from tokenizer.__main__ import main; sys.exit(main(sys.argv[1:]))"
_UNTRAINED = ("import sys; from runtime.config import load_config; from tokenizer.vqvae import VQVAE, save_vqvae; "
              "save_vqvae(sys.argv[1], VQVAE.from_conf(load_config(sys.argv[2:])))")

if __name__ == "__main__":
    main()
