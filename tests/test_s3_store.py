"""Buckets: generators and a learner sharing `s3://bucket/replay`, and the tokenizer's stages on an `s3://` data_dir from
several hosts, on an S3-compatible server (moto's, started here on 127.0.0.1): damaged and vanished objects,
checkpoints, incremental listing, local copies kept in step both ways."""
from __future__ import annotations

import io
import json
import logging
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

from pydreamer.data import ReplayReader, ReplayStoreIndex, make_replay_loader
from pydreamer.episodes import EpisodeError, EpisodeListing, episode_filename, list_episodes, load_episode, save_episode
from pydreamer.models.checkpoint import load_checkpoint, save_checkpoint
from pydreamer.replay_layout import checkpoint_path
from runtime import s3, storage, sync
from runtime.config import ConfigError, load_config
from runtime.s3 import RemotePath
from runtime.storage import store_path
from test_replay import make_episode

pytest.importorskip("boto3")
pytest.importorskip("moto.server")
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory):
    """moto's S3 server on 127.0.0.1 (a subprocess), with the AWS_* variables pointing at it."""
    port = _free_port()
    log = tmp_path_factory.mktemp("moto") / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{url}/moto-api/data.json", timeout=2).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"moto's S3 server did not answer on {url} within 60 s:\n{log.read_text()[-2000:]}")
        try:  # the wait between polls doubles as the check that the server is still alive
            proc.wait(timeout=0.1)
            pytest.fail(f"moto's S3 server exited ({proc.returncode}):\n{log.read_text()[-2000:]}")
        except subprocess.TimeoutExpired:
            pass
    with pytest.MonkeyPatch.context() as mp:
        for key in ("AWS_PROFILE", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE"):
            mp.delenv(key, raising=False)
        mp.setenv("AWS_ENDPOINT_URL", url)
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
        for key, value in CREDENTIALS.items():
            mp.setenv(key, value)
        s3._clients.clear()  # made before the variables were set
        yield url
        s3._clients.clear()
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture
def bucket(s3_endpoint) -> str:
    """A fresh bucket; its URL."""
    name = f"replay-{uuid.uuid4().hex[:12]}"
    s3.s3_client().create_bucket(Bucket=name)
    return f"s3://{name}"


def npz_bytes(episode: dict) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **episode)
    return buf.getvalue()


def test_store_urls_pass_the_config_checks_and_bad_ones_are_named():
    conf = load_config(["defaults"], ["--replay_dir", "s3://my-bucket/runs/a", "--data_dir", "s3://my-bucket/data"])
    assert conf.replay_dir == "s3://my-bucket/runs/a"
    for value, words in [("s3://My_Bucket/x", "not an S3 bucket name"),
                         ("gs://bucket/x", "'gs://' URLs are not supported"),
                         ("s3://bucket//x", "empty, '.' or '..' part")]:
        with pytest.raises(ConfigError, match=f"'replay_dir' = '{value}': .*{words}"):
            load_config(["defaults"], ["--replay_dir", value])
    with pytest.raises(ConfigError, match="'mlflow_dir' .* must be a local folder"):
        load_config(["defaults"], ["--mlflow_dir", "s3://bucket/mlruns"])
    p = store_path("s3://bucket/replay/") / "episodes" / "w0"
    assert isinstance(p, RemotePath) and str(p) == "s3://bucket/replay/episodes/w0" and p.name == "w0"
    assert str(p.parent.parent) == "s3://bucket/replay" and isinstance(store_path("/tmp/x"), Path)


def test_a_generator_and_a_learner_share_a_bucket(bucket, conf, token_dir, tmp_path, monkeypatch):
    """The tokens are copied into the bucket; a generator process reads them from there and writes episodes
    into the bucket while the learner streams batches from it and checkpoints into it; the network policy
    then loads that checkpoint from the bucket."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # where the bucket's tokens are mirrored
    r = subprocess.run([sys.executable, "-m", "runtime.sync", "copy", str(token_dir / "tokens"),
                        f"{bucket}/data/tokens"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "copied" in r.stdout, r.stderr
    data, replay = f"{bucket}/data", f"{bucket}/replay"
    gen = subprocess.Popen(
        [sys.executable, "-m", "pydreamer.generator", "--configs", "defaults", "tiny", "--data_dir", data,
         "--replay_dir", replay, "--codebook_size", "32", "--worker", "0", "--n_workers", "1", "--n_env_steps", "400"],
        cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        conf.update(batch_size=4, batch_length=16, data_workers=1, replay_reload_interval=0.5, learner_wait_s=120.0)
        it = iter(make_replay_loader(conf, replay, n_tokens=32))  # waits for the generator's first episodes
        batches = [next(it) for _ in range(5)]
        assert batches[0]["tokens"].shape == (16, 4, 4) and all(int(b["tokens"].max()) < 32 for b in batches)
        out, _ = gen.communicate(timeout=240)
        assert gen.returncode == 0, out.decode()[-3000:]
        del it
    finally:
        if gen.poll() is None:
            gen.kill()
    episodes = list_episodes(f"{replay}/episodes")
    assert len(episodes) >= 400 // 60 and {p.parent.name for p in episodes} == {"w0"}
    assert all(isinstance(p, RemotePath) for p in episodes)
    steps = sum(len(load_episode(p)["reward"]) - 1 for p in episodes)
    assert steps >= 400

    # the learner (in this process): reads the bucket, writes checkpoints/latest.pt there
    from pydreamer.train import main as learner_main

    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    args = ["--configs", "defaults", "tiny", "--data_dir", data, "--codebook_size", "32",
            "--mlflow_dir", str(tmp_path / "mlruns"), "--replay_dir", replay, "--n_steps", "6", "--save_interval", "3",
            "--log_interval", "3", "--eval_interval", "1000", "--batch_size", "4", "--batch_length", "8",
            "--data_workers", "0", "--learner_wait_s", "30"]
    assert learner_main(args) == 0
    run_id = mlflow.last_active_run().info.run_id
    mlflow.end_run()
    run = mlflow.get_run(run_id)
    assert run.data.tags["replay_dir"] == replay
    mirrored = tmp_path / "cache" / "audio-world-model" / "s3" / bucket.removeprefix("s3://") / "data" / "tokens"
    local = sorted(p.name for p in (token_dir / "tokens").rglob("*.npz"))
    assert sorted(p.name for p in mirrored.rglob("*.npz")) == local
    ckpt = checkpoint_path(replay)
    assert str(ckpt) == f"{replay}/checkpoints/latest.pt" and ckpt.exists()
    assert load_checkpoint(ckpt)["step"] == 6
    assert not any(Path(run.info.artifact_uri.removeprefix("file://")).rglob("*.pt"))  # not copied into the run

    # evaluate / dream of this run: the checkpoint is copied down next to their outputs, never a local "s3:" folder
    from pydreamer.runs import run_checkpoint

    monkeypatch.chdir(tmp_path)
    folder, local_ckpt = run_checkpoint(run, load_config(["defaults", "tiny"], []), "best", tmp_path / "here")
    assert folder == tmp_path / "here" and local_ckpt == folder / "checkpoints" / "latest.pt"  # no best.pt: latest
    assert load_checkpoint(local_ckpt)["step"] == 6 and not (tmp_path / "s3:").exists()

    from envs import make_env
    from pydreamer.policy import NetworkPolicy

    env = make_env(conf)
    policy = NetworkPolicy(conf, env.observation_space, env.action_space, ckpt)
    assert policy.loaded_step == 6 and policy.reload() is False  # same ETag: nothing to load again
    save_checkpoint(ckpt, policy.model, None, step=9)
    assert policy.reload() is True and policy.loaded_step == 9


def test_damaged_and_vanished_objects_are_skipped_with_their_reasons(bucket, caplog, monkeypatch):
    folder = f"{bucket}/replay/episodes/w0"
    for i in range(3):
        save_episode(f"{folder}/{episode_filename(0, i, 30)}", make_episode(30, i))
    good = npz_bytes(make_episode(20, 50))
    # long names: the reader samples by length, so these are met first
    bad = {episode_filename(0, 900, 4000): (good[:200], "unreadable: truncated or damaged"),
           episode_filename(0, 901, 4001): (b"this is not a zip file at all" * 20, "not an npz file"),
           episode_filename(0, 902, 4002): (b"", "empty file (0 bytes)"),
           episode_filename(0, 903, 4003): (good, "unreadable (No such file or directory)")}  # deleted once listed
    for name, (data, _) in bad.items():
        storage.write_bytes_atomic(f"{folder}/{name}", data)
    doomed = store_path(f"{folder}/{episode_filename(0, 903, 4003)}")
    real_new = EpisodeListing.new

    def listed_then_deleted(self):  # the object vanishes between the listing and the read
        out = real_new(self)
        if any(rel.endswith(doomed.name) for rel, _ in out):
            storage.remove(doomed)
        return out

    monkeypatch.setattr(EpisodeListing, "new", listed_then_deleted)
    reader = ReplayReader(f"{bucket}/replay", batch_size=4, batch_length=8, seed=0, n_tokens=1000)
    it = iter(reader)
    with caplog.at_level(logging.WARNING, logger="pydreamer.data"):
        batches = [next(it) for _ in range(30)]
    named = [line for b in batches for line in b.get("skipped", [])]
    assert reader.n_skipped == len(bad) == len(named)
    for name, (_, reason) in bad.items():
        line = next(line for line in named if name in line)
        assert line == f"{folder}/{name}: {reason}" or line.startswith(f"{folder}/{name}: {reason}"), line
        assert name in caplog.text
    assert set(torch.cat([b["tokens"][:, :, 0] for b in batches]).unique().tolist()) <= {0, 1, 2}
    assert reader.cache is not None and reader.cache.hits > 0  # the good episodes are read once, then from memory
    with pytest.raises(EpisodeError, match="No such file or directory"):
        load_episode(f"{folder}/{episode_filename(0, 999, 10)}")


def test_damaged_objects_read_like_damaged_files(bucket, tmp_path):
    """The reasons are the words a local file gets: truncated, garbage, empty, missing."""
    good = npz_bytes(make_episode(20, 50))
    for i, data in enumerate([good[:300], b"garbage" * 10, b""]):
        name = episode_filename(0, i, 20)
        (tmp_path / name).write_bytes(data)
        storage.write_bytes_atomic(f"{bucket}/{name}", data)
        with pytest.raises(EpisodeError) as local:
            load_episode(tmp_path / name)
        with pytest.raises(EpisodeError) as remote:
            load_episode(f"{bucket}/{name}")
        assert str(remote.value).replace(f"{bucket}/", "") == str(local.value).replace(f"{tmp_path}/", "")
    for where in (str(tmp_path), bucket):
        with pytest.raises(EpisodeError, match=r"w00-e000009-n0020\.npz: unreadable \(No such file or directory\)"):
            load_episode(f"{where}/{episode_filename(0, 9, 20)}")


def test_a_checkpoint_round_trip_through_the_bucket(bucket):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    path = checkpoint_path(f"{bucket}/run")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(path)
    assert storage.stat_token(path) is None
    save_checkpoint(path, model, {"wm": opt}, step=42, extra={"val_nll_h1": 1.5})
    first = storage.stat_token(path)
    back = load_checkpoint(path)
    assert back["step"] == 42 and back["extra"] == {"val_nll_h1": 1.5}
    for k, v in model.state_dict().items():
        assert torch.equal(back["model"][k], v)
    assert back["optimizers"]["wm"]["state"][0]["step"] == 1
    save_checkpoint(path, model, None, step=43)
    assert storage.stat_token(path) != first  # what the network policy polls
    storage.write_bytes_atomic(path, storage.read_bytes(path)[:100])
    with pytest.raises(ValueError, match=f"cannot read checkpoint {path}"):  # CheckpointError
        load_checkpoint(path)


def test_listing_is_incremental(bucket):
    """A rescan asks only for the names after the last one seen in each worker folder (StartAfter):
    the objects listed once are not listed again, however many there are."""
    store = f"{bucket}/replay/episodes"
    for w in range(2):
        for i in range(30):
            save_episode(f"{store}/w{w}/{episode_filename(w, i, 10 + i)}", make_episode(10 + i, i))
    index = ReplayStoreIndex(store)
    s3.stats.reset()
    assert index.scan() == 60
    assert s3.stats.list_requests == 3  # the worker folders, then each folder once
    assert s3.stats.listed_keys == 2 + 60
    s3.stats.reset()
    assert index.scan() == 60
    assert s3.stats.listed_keys == 2  # just the worker folders: no episode listed again
    assert s3.stats.start_after == [f"replay/episodes/w{w}/{episode_filename(w, 29, 39)}" for w in range(2)]
    for i in range(30, 33):
        save_episode(f"{store}/w1/{episode_filename(1, i, 50)}", make_episode(50, i))
    save_episode(f"{store}/w2/{episode_filename(2, 0, 60)}", make_episode(60, 0))
    s3.stats.reset()
    assert index.scan() == 64
    assert s3.stats.listed_keys == 3 + 3 + 1 and s3.stats.list_requests == 4
    assert sorted(index.length[-4:].tolist()) == [50, 50, 50, 60]
    assert len(list_episodes(store)) == 64


def test_a_bucket_folder_is_mirrored_and_changes_go_back_markers_last(bucket, tmp_path, monkeypatch):
    from tokenizer.bucket import local_data_dir
    from tokenizer.tokens import MissingTokensError

    src = tmp_path / "src"
    for rel, data in {"tokens/a/x.bin": b"one", "tokens/meta.json": b"{}", "mels/m.npz": b"mel"}.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    assert sync.copy_tree(src, f"{bucket}/data") == 3
    s3.stats.reset()
    dest = sync.mirror(f"{bucket}/data", tmp_path / "copy", parts=("tokens",))
    assert (dest / "tokens" / "a" / "x.bin").read_bytes() == b"one" and not (dest / "mels").exists()
    assert s3.stats.listed_keys == 2  # only what lies under tokens/ was listed
    storage.write_bytes_atomic(f"{bucket}/data/tokens/a/x.bin", b"two")  # re-encoded: the same size, new ETag
    s3.stats.reset()
    sync.mirror(f"{bucket}/data", dest, parts=("tokens",))
    assert (dest / "tokens" / "a" / "x.bin").read_bytes() == b"two" and s3.stats.get_requests == 1  # only what changed

    # deleted in the bucket: removed here; made here and not sent yet: kept
    storage.remove(f"{bucket}/data/tokens/a/x.bin")
    (dest / "tokens" / "new.bin").write_bytes(b"new")
    sync.mirror(f"{bucket}/data", dest, parts=("tokens",))
    assert not (dest / "tokens" / "a" / "x.bin").exists() and (dest / "tokens" / "new.bin").read_bytes() == b"new"

    # what a stage did here goes back: new and changed files sent, the marker last; removed ones deleted, marker first
    sync.mirror(f"{bucket}/data", dest)  # the whole folder now
    (dest / "mels" / "m.npz").write_bytes(b"mel, again")
    (dest / "mels" / "n.npz").write_bytes(b"another")
    (dest / "tokens" / "meta.json").unlink()
    (dest / "tokens" / "meta.json").write_text('{"made": 2}')
    (dest / "mels" / ".n.npz.123.tmp").write_bytes(b"half")  # a temporary: never sent
    order = []
    monkeypatch.setattr(sync, "write_bytes_atomic", lambda p, d: order.append(("put", p.key)) or storage.write_bytes_atomic(p, d))
    assert sync.push(dest, f"{bucket}/data", last=lambda rel: rel == "tokens/meta.json") == (4, 0)
    assert order[-1] == ("put", "data/tokens/meta.json") and len(order) == 4
    objects = {rel: storage.read_bytes(f"{bucket}/data/{rel}") for rel, _, _ in s3.walk(f"{bucket}/data")}
    assert objects == {"tokens/new.bin": b"new", "tokens/meta.json": b'{"made": 2}', "mels/m.npz": b"mel, again",
                       "mels/n.npz": b"another"}
    order.clear()
    monkeypatch.setattr(sync, "remove", lambda p: order.append(("delete", p.key)) or storage.remove(p))
    (dest / "tokens" / "meta.json").unlink()
    (dest / "mels" / "n.npz").unlink()
    assert sync.push(dest, f"{bucket}/data", last=lambda rel: rel == "tokens/meta.json") == (0, 2)
    assert order == [("delete", "data/tokens/meta.json"), ("delete", "data/mels/n.npz")]
    assert sorted(rel for rel, _, _ in s3.walk(f"{bucket}/data")) == ["mels/m.npz", "tokens/new.bin"]
    assert sync.push(dest, f"{bucket}/data") == (0, 0)  # nothing new

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(MissingTokensError, match=r"no tokens in s3://.*/nothing .*runtime\.sync copy"):
        local_data_dir(f"{bucket}/nothing")


def test_a_missing_bucket_is_named(s3_endpoint):
    with pytest.raises(FileNotFoundError, match="no such bucket 'no-such-bucket-here'"):
        list_episodes("s3://no-such-bucket-here/replay/episodes")
    with pytest.raises(FileNotFoundError, match="no such bucket"):
        save_episode(f"s3://no-such-bucket-here/replay/episodes/w0/{episode_filename(0, 0, 5)}", make_episode(5, 0))


def test_the_bucket_cannot_be_reached_is_an_oserror(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_free_port()}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    for key, value in CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    s3._clients.clear()
    try:
        with pytest.raises(ConnectionError, match="cannot reach the S3 endpoint"):
            save_episode("s3://no-such-host-bucket/replay/episodes/w0/" + episode_filename(0, 0, 5), make_episode(5, 0))
    finally:
        s3._clients.clear()


@pytest.mark.slow
def test_tokenizer_stages_on_a_bucket_data_dir_from_several_hosts(bucket, tmp_path, monkeypatch, capsys):
    """prepare by two workers on two hosts, merge on a third, train on one, encode on another, all with
    `--data_dir s3://...`: the bucket ends up holding what one process makes in a local folder; each host
    fetched only what its stage reads; the tokens then feed a generator's env on a fifth host."""
    from envs import make_env
    from test_prepare_workers import SMALL, _json, _shards
    from tokenizer.__main__ import main as tokenizer_main

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    common = [*SMALL, "--mlflow_dir", str(tmp_path / "mlruns")]
    local = tmp_path / "local"
    for stage in ("prepare", "train", "encode"):
        assert tokenizer_main([stage, *common, "--data_dir", str(local)]) == 0

    data = f"{bucket}/data"

    def on_host(host: str, *argv: str) -> int:
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / host))
        try:
            return tokenizer_main([*argv, *common, "--data_dir", data])
        except SystemExit as e:  # a refusal before anything is written
            return e.code

    def copy_on(host: str) -> Path:
        return tmp_path / host / "audio-world-model" / "s3" / bucket.removeprefix("s3://") / "data"

    def in_bucket() -> set[str]:
        return {rel for rel, _, _ in s3.walk(data)}

    assert on_host("a", "prepare", "--worker", "0", "--n_workers", "2") == 0
    assert "parts/prepare/w0of2/part.json" in in_bucket() and "manifest.json" not in in_bucket()
    assert on_host("b", "prepare", "--worker", "1", "--n_workers", "2") == 0
    assert (copy_on("b") / "parts/prepare/w0of2/part.json").is_file()  # the other worker's record ...
    assert not [p for p in (copy_on("b") / "parts/prepare/w0of2").iterdir() if p.name != "part.json"]  # ... alone
    capsys.readouterr()
    assert on_host("c", "train") == 2  # refused: the parts wait for merge
    assert f"parts in {data}/parts/prepare are not merged yet" in capsys.readouterr().err
    assert on_host("c", "merge") == 0
    assert not any(rel.startswith("parts/") for rel in in_bucket()) and "manifest.json" in in_bucket()
    assert on_host("a", "train") == 0
    assert not (copy_on("a") / "parts" / "prepare" / "w0of2").exists()  # merged on c: gone from a's copy too
    assert on_host("b", "encode") == 0
    assert on_host("b", "encode") == 0  # done: nothing redone, nothing sent
    assert {"tokens/meta.json", "tokenizer/vqvae.pt", "settings/encode.json"} <= in_bucket()

    # the bucket holds what one process makes locally: manifest, settings, every shard array
    fetched = tmp_path / "fetched"
    sync.copy_tree(data, fetched)
    assert _json(fetched / "manifest.json", "seconds_elapsed") == _json(local / "manifest.json", "seconds_elapsed")
    for stage in ("prepare", "train", "encode"):
        assert (json.loads((fetched / "settings" / f"{stage}.json").read_text())
                == json.loads((local / "settings" / f"{stage}.json").read_text()))
    assert _shards(fetched, "mels") == _shards(local, "mels")
    # the VQ-VAE was trained on host a from the same log-mels with the same seed: the same tokens
    assert _shards(fetched, "tokens") == _shards(local, "tokens")

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "d"))
    conf = load_config(["defaults", "audio", "tiny"], ["--data_dir", data])
    env = make_env(conf, "train")
    obs, _ = env.reset(seed=0)
    assert obs["tokens"].shape == (conf.tokens_per_step,)
    assert not (copy_on("d") / "mels").exists()  # a reader fetches the tokens only


@pytest.mark.parametrize("argv, message", [
    (["copy", "/no/such/folder", "s3://some-bucket/data"], "/no/such/folder: no such folder"),
    (["copy", "a", "b"], "copy a local folder to s3://bucket/prefix, or s3://bucket/prefix to a local folder"),
    (["ls", "s3://x"], "'x' is not an S3 bucket name"),
])
def test_the_copy_command_refuses_a_bad_command_line_with_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        sync._main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_a_stage_whose_output_cannot_be_sent_keeps_it_and_sends_it_when_run_again(bucket, tmp_path, monkeypatch,
                                                                                  capsys):
    from test_prepare_workers import SMALL
    from tokenizer.__main__ import main as tokenizer_main

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    args = ["prepare", *SMALL, "--mlflow_dir", str(tmp_path / "mlruns"), "--data_dir", f"{bucket}/data"]
    real_put = sync.write_bytes_atomic

    def refused(path, data):
        raise PermissionError(13, "access denied by S3 (AccessDenied)", str(path))

    monkeypatch.setattr(sync, "write_bytes_atomic", refused)
    assert tokenizer_main(args) == 1
    err = capsys.readouterr().err
    assert "AccessDenied" in err and "the output is kept in" in err and "run the same command again" in err
    assert s3.walk(f"{bucket}/data") == []  # nothing half sent: no marker without its data
    monkeypatch.setattr(sync, "write_bytes_atomic", real_put)
    assert tokenizer_main(args) == 0
    out = capsys.readouterr().out
    assert "exists; skipping" in out and "sent" in out  # not redone, just sent
    assert "manifest.json" in {rel for rel, _, _ in s3.walk(f"{bucket}/data")}


@pytest.mark.slow
def test_launch_makes_the_tokens_into_a_bucket_data_dir_then_trains_evaluates_and_dreams_from_it(bucket, tmp_path):
    """`python launch.py --data_dir s3://...` on an empty prefix: the stages run in this host's copy and
    their output goes to the bucket; generators, learner, evaluation and dreams then read it from there."""
    from test_prepare_workers import SMALL

    data = f"{bucket}/data"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "XDG_CACHE_HOME": str(tmp_path / "cache")}
    for key in ("MLFLOW_RUN_ID", "MLFLOW_TRACKING_URI"):
        env.pop(key, None)
    cmd = [sys.executable, str(REPO / "launch.py"), *SMALL, "--data_dir", data, "--mlflow_dir", str(tmp_path / "mlruns"),
           "--n_steps", "6", "--batch_size", "2", "--batch_length", "8", "--n_env_steps", "300", "--log_interval", "3",
           "--eval_interval", "1000", "--save_interval", "6", "--generator_workers_eval", "0", "--evaluate_samples", "2",
           "--evaluate_horizons", "3", "--dream_unconditional", "1", "--dream_test_prompts", "1", "--dream_seconds", "1"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert f"launch: {data}: sent" in out and f"launch: tokens ready in {data}/tokens" in out
    assert "launch: metrics: " in out and "launch: dreams: " in out
    made = {rel for rel, _, _ in s3.walk(data)}
    assert {"manifest.json", "tokenizer/vqvae.pt", "tokens/meta.json", "settings/encode.json"} <= made
    assert any(rel.startswith("mels/test/") for rel in made) and not any(rel.startswith("parts/") for rel in made)
