"""Faults a newcomer met, each with its fix: bad episode files, NaN rewards, resumed metrics, the eval
split replayed on resume, leftover temporary files, disk full while writing an episode or a checkpoint."""
from __future__ import annotations

import errno
import logging
import os
import signal

import mlflow
import numpy as np
import pytest
import torch

from pydreamer.data import ReplayReader
from pydreamer.episodes import EpisodeError, episode_filename, load_episode
from pydreamer.generator import run_generator, run_worker, worker_budget
from pydreamer.models.checkpoint import load_checkpoint
from pydreamer.replay_layout import checkpoint_path
from pydreamer.train import EXIT_CANNOT_SAVE, main as learner_main
from runtime.files import remove_stale_temporaries
from test_learner import learner_args, toy_conf
from test_replay import fill_store, make_episode

torch.set_num_threads(1)


def _bad_episodes(folder, worker: int = 0) -> dict[str, str]:
    """Readable and unreadable bad episode files (long names: sampled first); name -> the reason expected."""
    folder.mkdir(parents=True, exist_ok=True)
    good = make_episode(20, 50)
    bad = {
        "truncated": open_bytes(good)[:200],
        "garbage": b"this is not a zip file at all" * 20,
    }
    cases = {
        "ids": ({**good, "tokens": good["tokens"] + 5000}, "token ids range"),
        "dtype": ({**good, "tokens": good["tokens"].astype(np.float32)}, "must be integer ids"),
        "nan": ({**good, "reward": np.where(np.arange(21) == 7, np.nan, good["reward"]).astype(np.float32)}, "NaN"),
        "flags": ({**good, "reset": np.full(21, 7, np.int64)}, "true/false"),
    }
    expected = {}
    for i, (kind, data) in enumerate(bad.items()):
        name = episode_filename(worker, 900 + i, 4000 + i)
        (folder / name).write_bytes(data)
        expected[name] = {"truncated": "truncated or damaged", "garbage": "not an npz file"}[kind]
    for i, (kind, (episode, reason)) in enumerate(cases.items()):
        name = episode_filename(worker, 910 + i, 4010 + i)
        np.savez(folder / name, **episode)
        expected[name] = reason
    return expected


def open_bytes(episode: dict) -> bytes:
    import io

    buf = io.BytesIO()
    np.savez(buf, **episode)
    return buf.getvalue()


def test_bad_episode_files_are_skipped_counted_and_named(tmp_path, caplog):
    fill_store(tmp_path / "episodes", [30, 30, 30])
    expected = _bad_episodes(tmp_path / "episodes" / "w0")
    for name, reason in expected.items():
        with pytest.raises(EpisodeError, match=reason):
            load_episode(tmp_path / "episodes" / "w0" / name, n_tokens=1000)
    reader = ReplayReader(tmp_path, batch_size=4, batch_length=8, seed=0, n_tokens=1000)
    it = iter(reader)
    with caplog.at_level(logging.WARNING, logger="pydreamer.data"):
        batches = [next(it) for _ in range(30)]
    assert reader.n_skipped == len(expected)
    named = [line for b in batches for line in b.get("skipped", [])]
    assert sorted(os.path.basename(line.split(":")[0]) for line in named) == sorted(expected)
    for name in expected:
        assert name in caplog.text
    assert set(torch.cat([b["tokens"][:, :, 0] for b in batches]).unique().tolist()) <= {0, 1, 2}


def test_the_learner_trains_past_bad_episodes_and_names_them_in_mlflow(tmp_path, monkeypatch):
    conf = toy_conf(tmp_path)
    run_generator(conf, conf.replay_dir, split="train", n_steps=240)
    run_generator(conf, conf.replay_dir, split="val", n_episodes=4)
    expected = _bad_episodes(tmp_path / "replay" / "episodes" / "w7", worker=7)
    eval_bad = tmp_path / "replay" / "episodes_eval" / "w0" / episode_filename(0, 0, 12)  # sorted first
    eval_bad.rename(eval_bad.with_name(episode_filename(0, 999, 12)))
    np.savez(tmp_path / "replay" / "episodes_eval" / "w0" / episode_filename(0, 0, 12),
             **{**make_episode(12, 0), "tokens": np.full((13, 2), 99, np.int16)})
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    args = learner_args(conf)
    assert learner_main(args + ["--n_steps", "20"]) == 0
    run_id = mlflow.last_active_run().info.run_id
    mlflow.end_run()
    run = mlflow.get_run(run_id)
    assert run.data.metrics["replay/skipped_episodes"] == len(expected)
    text = mlflow.artifacts.load_text(f"{run.info.artifact_uri}/replay/skipped_episodes.txt")
    for name in [*expected, episode_filename(0, 0, 12)]:
        assert name in text
    assert "token ids range 99..99" in text


def test_a_resumed_learner_logs_each_step_once_and_the_eval_split_is_not_replayed(tmp_path, monkeypatch):
    conf = toy_conf(tmp_path)
    run_generator(conf, conf.replay_dir, split="train", n_steps=240)
    plan = worker_budget(conf, "val", 0, 1)
    assert run_worker(conf, conf.replay_dir, plan, None)["episodes"] == 1  # the toy env: one pass = 1 episode
    assert run_worker(conf, conf.replay_dir, plan, None)["episodes"] == 0  # a resumed run: nothing replayed again
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    args = learner_args(conf)
    assert learner_main(args + ["--n_steps", "20"]) == 0
    run_id = mlflow.last_active_run().info.run_id
    for key in ("train/loss_tokens", "eval/nll_h1"):  # logged, then killed before saving
        mlflow.MlflowClient().log_metric(run_id, key, 9.0, step=30)
    monkeypatch.setenv("MLFLOW_RUN_ID", run_id)
    assert learner_main(args + ["--n_steps", "40"]) == 0  # resumes at 20, redoes 21..30
    mlflow.end_run()
    client = mlflow.MlflowClient()
    assert [m.step for m in client.get_metric_history(run_id, "train/loss_tokens")] == [10, 20, 30, 40]
    assert [m.step for m in client.get_metric_history(run_id, "eval/nll_h1")] == [20, 30, 40]


def test_disk_full_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch, capsys):
    conf = toy_conf(tmp_path)
    run_generator(conf, conf.replay_dir, split="train", n_steps=240)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    args = ["--configs", "defaults", "tiny", "--env_id", "ToyTokens-v0", "--mlflow_dir", conf.mlflow_dir,
            "--replay_dir", conf.replay_dir, "--log_interval", "10", "--eval_interval", "100", "--save_interval",
            "10", "--batch_size", "4", "--batch_length", "8", "--data_workers", "0", "--generator_workers_eval", "0"]
    assert learner_main(args + ["--n_steps", "10"]) == 0
    run_id = mlflow.last_active_run().info.run_id
    mlflow.end_run()
    before = checkpoint_path(conf.replay_dir).read_bytes()

    def full_disk(obj, f, *a, **kw):
        with open(f, "wb") as out:
            out.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))

    monkeypatch.setattr(torch, "save", full_disk)
    monkeypatch.setenv("MLFLOW_RUN_ID", run_id)
    assert learner_main(args + ["--n_steps", "30"]) == EXIT_CANNOT_SAVE
    mlflow.end_run()
    err = capsys.readouterr().err
    assert "No space left on device" in err and "previous checkpoint (step 10) is intact" in err
    assert checkpoint_path(conf.replay_dir).read_bytes() == before
    assert load_checkpoint(checkpoint_path(conf.replay_dir))["step"] == 10
    assert not list(checkpoint_path(conf.replay_dir).parent.glob("*.tmp"))


def test_a_real_full_disk_while_writing_a_checkpoint_exits_4_and_keeps_the_previous_one(tmp_path, monkeypatch, capsys):
    import subprocess

    conf = toy_conf(tmp_path)
    run_generator(conf, conf.replay_dir, split="train", n_steps=240)
    folder = checkpoint_path(conf.replay_dir).parent
    folder.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a small tmpfs here ({mounted.stderr.decode().strip() or 'not root'}); the test "
                    f"above fakes the error instead")
    try:
        monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
        args = learner_args(conf) + ["--eval_interval", "100", "--save_interval", "10"]
        assert learner_main(args + ["--n_steps", "10"]) == 0
        run_id = mlflow.last_active_run().info.run_id
        before = checkpoint_path(conf.replay_dir).read_bytes()
        with open(folder / "filler", "wb") as f:  # the disk fills up (another process's logs, say)
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError as e:
                assert e.errno == errno.ENOSPC
        monkeypatch.setenv("MLFLOW_RUN_ID", run_id)
        assert learner_main(args + ["--n_steps", "30"]) == EXIT_CANNOT_SAVE  # torch.save says RuntimeError here
        err = capsys.readouterr().err
        assert "No space left on device" in err and "previous checkpoint (step 10) is intact" in err, err
        assert "Traceback" not in err
        assert checkpoint_path(conf.replay_dir).read_bytes() == before
        assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]
    finally:
        subprocess.run(["umount", str(folder)], check=False)


def test_disk_full_while_writing_an_episode_keeps_the_others(tmp_path, monkeypatch, capsys):
    from pydreamer.generator import main as generator_main

    store = tmp_path / "replay"
    fill_store(store / "episodes", [10, 10])
    before = {p: p.read_bytes() for p in store.rglob("*.npz")}
    real_savez = np.savez

    def full_disk(f, **arrays):
        real_savez(f, **arrays)
        f.truncate(100)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(np, "savez", full_disk)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        code = generator_main(["--configs", "defaults", "tiny", "--env_id", "ToyTokens-v0", "--replay_dir", str(store),
                               "--mlflow_dir", str(tmp_path / "mlruns"), "--worker", "0", "--n_env_steps", "50"])
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert code == 1
    err = capsys.readouterr().err
    assert "No space left on device" in err and "episodes written before are intact" in err and "Traceback" not in err
    assert {p: p.read_bytes() for p in store.rglob("*.npz")} == before
    assert not [p for p in store.rglob("*") if p.name.endswith(".tmp")]


def test_temporaries_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(timeout=30)
    stale = tmp_path / f".w00-e000001-n0012.npz.{dead.pid}.tmp"
    live = tmp_path / f".w00-e000002-n0012.npz.{os.getppid()}.tmp"
    kept = tmp_path / "w00-e000000-n0012.npz"
    for p in (stale, live, kept):
        p.write_bytes(b"x")
    assert remove_stale_temporaries(tmp_path) == [stale]
    assert live.exists() and kept.exists()


def _malformed_audio(root) -> set[str]:
    """30+ bad files of every kind a real corpus holds, under `root/bad*`; returns their paths."""
    import soundfile as sf

    from audio_fixtures import speechlike

    bad = root / "bad"
    bad.mkdir(parents=True)
    made: list = []

    def add(name):
        made.append(bad / name)
        return bad / name

    for i in range(3):
        add(f"text{i}.mp3").write_text("a text file, not audio\n" * (i + 1))
        add(f"zero{i}.wav").write_bytes(b"")
        add(f"corrupt{i}.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" * (i + 2))
        add(f"png{i}.flac").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * (i + 1))
        sf.write(str(add(f"one{i}.wav")), np.array([0.5], np.float32), 16000)
        sf.write(str(add(f"onehz{i}.wav")), (0.5 * np.sin(np.arange(15 + i))).astype(np.float32), 1 + i)
        sf.write(str(add(f"dc{i}.wav")), np.full(8000, 0.2 + 0.1 * i, np.float32), 16000)
        sf.write(str(add(f"silent{i}.wav")), np.zeros(8000, np.float32), 16000)
        sf.write(str(add(f"short{i}.wav")), speechlike(0.01 + 0.01 * i), 16000)
        nan = speechlike(0.5, seed=i)
        nan[10 * i] = np.nan
        sf.write(str(add(f"nan{i}.wav")), nan, 16000, subtype="FLOAT")
    os.symlink("loop_b.wav", add("loop_a.wav"))
    os.symlink("loop_a.wav", add("loop_b.wav"))
    os.symlink("nowhere.wav", add("dangling.wav"))
    add("folder.wav").mkdir()
    os.mkfifo(add("pipe.wav"))
    sf.write(str(add("empty.wav")), np.zeros(0, np.float32), 16000)
    assert len(made) >= 30
    return {str(p) for p in made}


def test_malformed_audio_in_a_good_folder_corpus_is_named_and_every_good_file_kept(tmp_path, capsys, monkeypatch):
    import json

    from audio_fixtures import write_clip
    from tokenizer.__main__ import main as tokenizer_main

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    root = tmp_path / "corpus"
    good = [write_clip(root / f"spk{s}" / f"c{k}.wav", seconds=0.5, seed=10 * s + k) for s in range(7) for k in range(2)]
    truncated = good[0].read_bytes()
    good[0].write_bytes(truncated[: len(truncated) * 2 // 3])  # cut short in copying: kept, with a note
    bad = _malformed_audio(root)
    data = tmp_path / "data"
    assert tokenizer_main(["prepare", "--configs", "defaults", "audio", "tiny", "--data_dir", str(data),
                           "--mlflow_dir", str(tmp_path / "mlruns"), "--source", "folder",
                           "--data_root", str(root)]) == 0
    out = capsys.readouterr()
    assert "Traceback" not in out.out + out.err
    manifest = json.loads((data / "manifest.json").read_text())
    assert manifest["utterances_kept"] == len(good)  # every good file kept
    reasons = {s["path"]: s["reason"] for s in manifest["skipped"]}
    assert set(reasons) == bad  # every bad one named
    for path, reason in reasons.items():
        assert not any(w in reason for w in ("unexpected error", "System error", "possibly a pipe")), (path, reason)
    name = {os.path.basename(p): r for p, r in reasons.items()}
    for key, words in {"text0.mp3": "text file", "loop_a.wav": "symlink loop", "dangling.wav": "dangling symlink",
                       "one0.wav": "too short", "onehz0.wav": "sample rate 1 Hz", "dc0.wav": "constant",
                       "folder.wav": "a folder", "pipe.wav": "not a regular file", "zero0.wav": "0 bytes",
                       "nan0.wav": "NaN", "silent0.wav": "all silent"}.items():
        assert words in name[key], (key, name[key])
    notes = {os.path.basename(n["path"]): n["note"] for n in manifest["notes"]}
    assert "truncated: the header declares" in notes["c0.wav"]
    assert f"skipped {len(bad)}" in out.out


def _poisoned(folder, good: dict, worker: int = 7) -> dict[str, str]:
    """Episode files that crashed the learner before the store had a spec, as long episodes (sampled first);
    name -> the reason expected. Written beside good ones by another writer, not by save_episode."""
    import io
    import zipfile

    folder.mkdir(parents=True, exist_ok=True)
    rows = 400
    long = {k: (np.resize(v, (rows,) + v.shape[1:]) if v.ndim else v) for k, v in good.items()}
    cases = {
        "a member of raw bytes": ("raw", "is not an array"),
        "reward per step of two numbers": ({**long, "reward": np.zeros((rows, 2), np.float32)}, "one number per step"),
        "one token more per step": ({**long, "tokens": np.zeros((rows, long["tokens"].shape[1] + 1), np.int16)},
                                    "numbers per step; the store's spec"),
        "two action numbers more": ({**long, "action": np.zeros((rows, long["action"].shape[1] + 2), np.float32)},
                                    "numbers per step; the store's spec"),
        "50 M rows behind a short name": ("bomb", "inflates to"),
        "rows unlike its name": ({k: v[:50] if v.ndim else v for k, v in long.items()}, "its name says"),
    }
    expected = {}
    for i, (what, (episode, reason)) in enumerate(cases.items()):
        name = episode_filename(worker, 800 + i, rows - 1)
        if episode == "raw":
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w") as z:
                for key, value in long.items():
                    member = io.BytesIO()
                    np.lib.format.write_array(member, np.asarray(value))
                    z.writestr(key + ".npy" if key != "reward" else "reward", member.getvalue() if key != "reward"
                               else b"raw bytes, not an array")
            (folder / name).write_bytes(buf.getvalue())
        elif episode == "bomb":
            name = episode_filename(worker, 800 + i, 60)  # 2 MB on disk, gigabytes if decoded
            np.savez_compressed(folder / name, **{**{k: v[:61] if v.ndim else v for k, v in long.items()},
                                                  "tokens": np.zeros((50_000_000 // 8, long["tokens"].shape[1]), np.int16)})
        else:
            np.savez(folder / name, **episode)
        expected[name] = reason
    fifo = folder / episode_filename(worker, 899, rows - 1)
    os.mkfifo(fifo)  # opening it would block the reader for ever
    expected[fifo.name] = "not a regular file"
    return expected


def test_a_poisoned_store_is_refused_file_by_file_and_the_learner_trains_on(tmp_path, monkeypatch):
    from pydreamer.episodes import EpisodeSpec, list_episodes

    conf = toy_conf(tmp_path)
    run_generator(conf, conf.replay_dir, split="train", n_steps=240)
    run_generator(conf, conf.replay_dir, split="val", n_episodes=4)
    store = tmp_path / "replay"
    good = load_episode(list_episodes(store / "episodes")[0])
    spec = EpisodeSpec(n_tokens=8, tokens_per_step=good["tokens"].shape[1], action_dim=good["action"].shape[1])
    expected = _poisoned(store / "episodes" / "w7", good)
    for name, reason in expected.items():  # each refused with its reason, none opened past its checks
        with pytest.raises(EpisodeError, match=reason):
            load_episode(store / "episodes" / "w7" / name, spec=spec)
    eval_bad = _poisoned(store / "episodes_eval" / "v0", good, worker=0)  # sorted first: the eval reader meets them
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert learner_main(learner_args(conf) + ["--n_steps", "20"]) == 0
    run_id = mlflow.last_active_run().info.run_id
    run = mlflow.get_run(run_id)
    assert run.info.status == "FINISHED" and "eval/nll_h1" in run.data.metrics
    text = mlflow.artifacts.load_text(f"{run.info.artifact_uri}/replay/skipped_episodes.txt")
    train_named = [line for line in text.splitlines() if "/w7/" in line]
    assert train_named and all(any(r in line for r in expected.values()) for line in train_named)
    assert all(name in text for name in eval_bad)


def test_a_stand_alone_learner_stopped_by_sigterm_marks_its_run_killed(tmp_path, monkeypatch):
    from pydreamer.learner.loop import Learner
    from pydreamer.train import EXIT_INTERRUPTED

    conf = toy_conf(tmp_path)
    run_generator(conf, conf.replay_dir, split="train", n_steps=240)
    real_step = Learner.train_step

    def step_then_sigterm(self, batch):  # the signal arrives at step 5, as `kill PID` would send it
        out = real_step(self, batch)
        if self.step == 5:
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(Learner, "train_step", step_then_sigterm)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert learner_main(learner_args(conf) + ["--n_steps", "100"]) == EXIT_INTERRUPTED
    assert mlflow.get_run(mlflow.last_active_run().info.run_id).info.status == "KILLED"  # not FINISHED
    assert load_checkpoint(checkpoint_path(conf.replay_dir))["step"] == 5


class _Foreign:
    """An object a weights-only load refuses: what a poisoned checkpoint carries."""


@pytest.mark.parametrize("damage", ["truncated", "poisoned"])
def test_a_checkpoint_that_cannot_be_loaded_is_named_in_one_line_with_exit_2(tmp_path, monkeypatch, capsys, damage):
    conf = toy_conf(tmp_path)
    run_generator(conf, conf.replay_dir, split="train", n_steps=240)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    args = learner_args(conf)
    assert learner_main(args + ["--n_steps", "10"]) == 0
    run_id = mlflow.last_active_run().info.run_id
    ckpt = checkpoint_path(conf.replay_dir)
    if damage == "truncated":
        ckpt.write_bytes(ckpt.read_bytes()[:2000])
    else:
        torch.save({"step": 10, "model": _Foreign()}, ckpt)
    capsys.readouterr()
    monkeypatch.setenv("MLFLOW_RUN_ID", run_id)
    assert learner_main(args + ["--n_steps", "20"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    assert str(ckpt) in err[0] and "best.pt" in err[0] and "Traceback" not in err[0]
    assert "retry" not in err[0].lower() and "never load it with weights_only=False" in err[0]


def test_metrics_wait_through_a_tracking_outage_and_arrive_in_order():
    from pydreamer.learner.tracking import MetricBuffer

    class Server:
        def __init__(self):
            self.up, self.got, self.tries = True, [], 0

        def log_batch(self, run_id, metrics):
            self.tries += 1
            if not self.up:
                raise ConnectionError("Connection refused")
            self.got += [(m.key, m.step, m.value) for m in metrics]

    now = [0.0]
    server = Server()
    buffer = MetricBuffer("run", server, limit=5, retry_s=30.0, clock=lambda: now[0])
    buffer.log({"train/loss": 1.0}, 10)
    server.up = False
    for step in range(20, 90, 10):  # an outage of 7 log lines: training goes on, a send is tried every 30 s
        now[0] += 10.0
        buffer.log({"train/loss": step / 10}, step)
    assert server.tries <= 1 + 3 and len(buffer.held) == 5 and buffer.dropped == 2  # bounded: the oldest dropped
    server.up = True
    now[0] += 30.0
    buffer.log({"train/loss": 9.0}, 90)
    assert [s for _, s, _ in server.got] == [10, 50, 60, 70, 80, 90] and not buffer.held  # in order, 5 kept
    assert buffer.dropped == 3 and buffer.flush()


def test_a_full_disk_under_a_tokenizer_stage_names_the_stage_and_the_folder(tmp_path, capsys, monkeypatch):
    import subprocess

    from tokenizer.__main__ import main as tokenizer_main

    data = tmp_path / "data"
    data.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(data)], capture_output=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a small tmpfs here ({mounted.stderr.decode().strip() or 'not root'})")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    try:
        code = tokenizer_main(["prepare", "--configs", "defaults", "audio", "tiny", "--data_dir", str(data),
                               "--mlflow_dir", str(tmp_path / "mlruns")])
    finally:
        subprocess.run(["umount", str(data)], check=False)
    err = capsys.readouterr().err
    assert code == 1 and "prepare: no space left on the device of" in err and str(data) in err, err
    assert "Traceback" not in err
