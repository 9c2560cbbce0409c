"""What the README's commands expect around them, made on the spot for bench/readme_commands.py: corpora in each
layout the README names (speech-like clips, not speech), the prompts me.mp3 and you.wav, and servers on 127.0.0.1
(`mlflow server`, moto's S3 for `s3://BUCKET`), started on first need and stopped at the end."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from audio_fixtures import write_clip  # noqa: E402

BUCKET = "readme-bench"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_corpora(work: Path, clone: Path) -> dict[str, Path]:
    """Speech-like clips in each layout the README names (8 speakers: tiny's split wants 6)."""
    c = work / "corpora"
    speakers = [f"spk{k}" for k in range(8)]
    if not (c / ".done").exists():
        for k, spk in enumerate(speakers):
            for n in range(4):
                write_clip(c / "recordings" / spk / f"{spk}_{n:03d}.wav", seconds=3.0, seed=10 * k + n)
                write_clip(c / "digits" / spk / f"{n}_{spk}_{n}.wav", seconds=0.6, seed=100 + 10 * k + n, rate=8000)
            for chapter in ("100", "200"):
                for n in range(2):
                    write_clip(c / "LibriSpeech" / "train-clean-100" / str(k + 19) / chapter
                               / f"{k + 19}-{chapter}-{n:04d}.flac", seconds=3.0, seed=1000 + 10 * k + n)
        rows = ["client_id\tpath\tsentence\tup_votes\tdown_votes\tage\tgender\taccents\tlocale"]
        for k, spk in enumerate(speakers):
            for n in range(4):
                name = f"common_voice_en_{k}{n}.mp3"
                write_clip(c / "cv" / "clips" / name, seconds=3.0, seed=2000 + 10 * k + n, fmt="MP3")
                rows.append(f"{spk}\t{name}\tsay {n}\t2\t0\ttwenties\t{'female' if k % 2 else 'male'}\tus\ten")
        (c / "cv" / "validated.tsv").write_text("\n".join(rows) + "\n")
        (c / ".done").write_text("")
    write_clip(clone / "me.mp3", seconds=2.0, seed=7, fmt="MP3")
    write_clip(clone / "you.wav", seconds=2.0, seed=8)
    return {"~/recordings": c / "recordings", "/nfs/corpus": c / "recordings", "~/digits": c / "digits",
            "~/LibriSpeech/train-clean-100": c / "LibriSpeech" / "train-clean-100",
            "/data/cv-corpus-17.0/en": c / "cv", "/corpus/cv-en": c / "cv"}


class Services:
    """Background servers the commands talk to, started on first need and stopped at the end."""

    def __init__(self, work: Path, env: dict[str, str]):
        self.work, self.env, self.procs, self.urls = work, env, [], {}

    def _wait(self, proc: subprocess.Popen, url: str, log: Path, what: str) -> str:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(url, timeout=2).close()
                return url
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{what} did not answer on {url}: {log.read_text()[-1500:]}")
                time.sleep(0.5)

    def start(self, argv: list[str], url: str, what: str, log: Path) -> subprocess.Popen:
        out = open(log, "wb")
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=self.env, cwd=self.work,
                                start_new_session=True)
        self.procs.append(proc)
        self._wait(proc, url, log, what)
        return proc

    def moto(self) -> str:
        if "s3" not in self.urls:
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            self.start(["python", "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                       f"{url}/moto-api/data.json", "moto's S3 server", self.work / "logs" / "moto.log")
            self.urls["s3"] = url
            make_bucket(url)
        return self.urls["s3"]

    def mlflow(self, argv: list[str] | None = None) -> str:
        """The README's own `mlflow server` line (argv), or one of ours for a tracking server it names."""
        if "mlflow" not in self.urls:
            port = free_port()
            store = self.work / "tracking"
            store.mkdir(exist_ok=True)
            argv = argv or ["mlflow", "server", "--backend-store-uri", f"sqlite:///{store}/mlflow.db",
                            "--default-artifact-root", str(store / "artifacts"), "--no-serve-artifacts"]
            argv = [*argv, "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
            url = f"http://127.0.0.1:{port}"
            self.start(argv, f"{url}/health", "mlflow server", self.work / "logs" / "mlflow-server.log")
            self.urls["mlflow"] = url
        return self.urls["mlflow"]

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
        self.procs.clear()
        self.urls.clear()


def make_bucket(url: str) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="testing",
                      aws_secret_access_key="testing")
    try:
        s3.create_bucket(Bucket=BUCKET)
    except s3.exceptions.BucketAlreadyOwnedByYou:
        pass
