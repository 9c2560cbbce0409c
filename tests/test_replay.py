"""Episode files and the replay reader: round trips, bad files, batches, resets and chunk continuity."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from pydreamer.data import ReplayReader, ReplayStoreIndex, make_replay_loader
from pydreamer.episodes import (
    EpisodeError,
    episode_filename,
    episode_length,
    list_episodes,
    load_episode,
    parse_episode_filename,
    save_episode,
)


def make_episode(n: int, tag: int, n_actions: int = 1) -> dict:
    """An episode of n env steps whose tokens say (tag, row) so batches can be traced back."""
    rows = n + 1
    action = np.zeros((rows, n_actions), np.float32)
    action[1:, 0] = 1
    reset = np.zeros(rows, bool)
    reset[0] = True
    terminal = np.zeros(rows, bool)
    terminal[-1] = True
    tokens = np.stack([np.full(rows, tag), np.arange(rows), np.full(rows, n), np.zeros(rows)], 1).astype(np.int16)
    return dict(tokens=tokens, action=action, reward=np.linspace(0, 1, rows, dtype=np.float32), terminal=terminal,
                reset=reset, utterance_id=np.asarray(f"u{tag}"), worker=np.asarray(0), episode=np.asarray(tag))


def fill_store(folder, lengths, worker=0, first_tag=0):
    for i, n in enumerate(lengths):
        save_episode(folder / f"w{worker}" / episode_filename(worker, first_tag + i, n), make_episode(n, first_tag + i))


def test_episode_round_trip_and_names(tmp_path):
    ep = make_episode(30, 7)
    path = save_episode(tmp_path / "w3" / episode_filename(3, 12, 30), ep)
    assert parse_episode_filename(path.name) == (3, 12, 30) and episode_length(path) == 30
    back = load_episode(path)
    assert set(back) == set(ep)
    for k in ep:
        np.testing.assert_array_equal(back[k], ep[k])
        assert back[k].dtype == ep[k].dtype
    assert str(back["utterance_id"]) == "u7"
    assert list_episodes(tmp_path) == [path]
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == [path.name]  # no temporary left behind


def test_save_rejects_bad_episodes(tmp_path):
    ep = make_episode(5, 0)
    with pytest.raises(EpisodeError, match="lacks reset"):
        save_episode(tmp_path / "a.npz", {k: v for k, v in ep.items() if k != "reset"})
    with pytest.raises(EpisodeError, match="'action' has shape"):
        save_episode(tmp_path / "a.npz", {**ep, "action": ep["action"][:-1]})
    with pytest.raises(EpisodeError, match="Python objects"):
        save_episode(tmp_path / "a.npz", {**ep, "note": np.array([{"a": 1}], dtype=object)})
    assert not list(tmp_path.iterdir())


def test_load_names_the_file_it_cannot_use(tmp_path):
    path = save_episode(tmp_path / episode_filename(0, 0, 20), make_episode(20, 0))
    path.write_bytes(path.read_bytes()[:300])  # cut short
    with pytest.raises(EpisodeError, match=rf"{path.name}: unreadable"):
        load_episode(path)
    np.savez(tmp_path / "x.npz", tokens=np.zeros((3, 4)), reward=np.zeros(2))
    with pytest.raises(EpisodeError, match="lacks"):
        load_episode(tmp_path / "x.npz")


def test_batches_follow_the_contract(tmp_path):
    fill_store(tmp_path / "episodes", [30, 50, 70])
    batch = next(iter(ReplayReader(tmp_path, batch_size=5, batch_length=12, seed=0)))
    shapes = {k: (tuple(v.shape), v.dtype) for k, v in batch.items()}
    assert shapes == {
        "tokens": ((12, 5, 4), torch.int64),
        "action": ((12, 5, 1), torch.float32),
        "reward": ((12, 5), torch.float32),
        "terminal": ((12, 5), torch.float32),
        "reset": ((12, 5), torch.bool),
        "worker": ((), torch.int64),
    }


def trace_lanes(batches):
    """Per lane: the (episode tag, row) of every step, concatenated over consecutive batches."""
    tokens = torch.cat([b["tokens"] for b in batches]).numpy()  # [K*T, B, G]
    resets = torch.cat([b["reset"] for b in batches]).numpy()
    terminal = torch.cat([b["terminal"] for b in batches]).numpy()
    return tokens, resets, terminal


def test_lanes_walk_whole_episodes_in_consecutive_chunks(tmp_path):
    fill_store(tmp_path / "episodes", [5, 17, 40, 90])  # shorter and longer than a chunk
    it = iter(ReplayReader(tmp_path, batch_size=6, batch_length=16, seed=1))
    tokens, resets, terminal = trace_lanes([next(it) for _ in range(25)])
    n_resets = 0
    for b in range(tokens.shape[1]):
        tag, row, n = tokens[:, b, 0], tokens[:, b, 1], tokens[:, b, 2]
        for t in range(1, len(tag)):
            if resets[t, b]:
                n_resets += 1
                assert row[t] == 0 and row[t - 1] == n[t - 1]  # the previous episode ran to its end
                assert terminal[t - 1, b] == 1
            else:
                assert tag[t] == tag[t - 1] and row[t] == row[t - 1] + 1  # no step skipped or repeated
        assert (resets[:, b] == (row == 0)).all()
    assert n_resets > 20


def test_episodes_are_sampled_by_length(tmp_path):
    fill_store(tmp_path / "episodes", [9, 99])
    index = ReplayStoreIndex(tmp_path / "episodes")
    assert index.scan() == 2 and index.n_steps == 108
    rng = np.random.default_rng(0)
    picks = np.bincount([index.sample(rng) for _ in range(4000)], minlength=2)
    long_share = picks[int(np.argmax(index.length))] / 4000
    assert abs(long_share - 100 / 110) < 0.03


def test_new_episodes_join_the_sampling(tmp_path):
    fill_store(tmp_path / "episodes", [20, 20], first_tag=0)
    reader = ReplayReader(tmp_path, batch_size=8, batch_length=10, seed=0, reload_interval=5.0)
    now = [0.0]
    reader.clock = lambda: now[0]  # the test decides when the rescan is due: no race on a sleep
    it = iter(reader)
    tags = set(next(it)["tokens"][:, :, 0].unique().tolist())
    assert tags <= {0, 1}
    fill_store(tmp_path / "episodes", [20] * 40, worker=1, first_tag=100)
    for _ in range(3):  # not due yet: only the old episodes
        tags |= set(next(it)["tokens"][:, :, 0].unique().tolist())
    assert tags <= {0, 1}
    now[0] = 5.0
    for _ in range(20):
        tags |= set(next(it)["tokens"][:, :, 0].unique().tolist())
    assert any(t >= 100 for t in tags)


def test_unreadable_files_are_skipped_counted_and_named(tmp_path, caplog):
    fill_store(tmp_path / "episodes", [30, 30])
    bad = tmp_path / "episodes" / "w0" / episode_filename(0, 9, 5000)  # long: sampled first, surely
    bad.write_bytes(b"PK\x03\x04 half an episode")
    reader = ReplayReader(tmp_path, batch_size=4, batch_length=8, seed=0)
    it = iter(reader)
    with caplog.at_level(logging.WARNING, logger="pydreamer.data"):
        batches = [next(it) for _ in range(10)]
    assert reader.n_skipped == 1
    assert bad.name in caplog.text
    assert set(torch.cat([b["tokens"][:, :, 0] for b in batches]).unique().tolist()) <= {0, 1}


def test_an_empty_store_times_out_with_a_clear_message(tmp_path):
    with pytest.raises(TimeoutError, match=r"no usable episodes in .*episodes_eval.*pydreamer\.generator"):
        next(iter(ReplayReader(tmp_path, split="val", wait_seconds=0.2)))


def test_dataloader_workers_make_distinct_continuing_streams(tmp_path, conf):
    fill_store(tmp_path / "episodes", list(range(10, 90, 4)))
    conf.update(data_workers=2, batch_size=4, batch_length=10)
    loader = make_replay_loader(conf, tmp_path)
    it = iter(loader)
    batches = [next(it) for _ in range(8)]
    workers = [int(b["worker"]) for b in batches]
    assert sorted(set(workers)) == [0, 1]
    by_worker = {w: [b for b in batches if int(b["worker"]) == w] for w in (0, 1)}
    traced = {w: trace_lanes(bs) for w, bs in by_worker.items()}
    assert not np.array_equal(traced[0][0], traced[1][0])  # not the same stream twice
    for tokens, resets, _ in traced.values():  # each worker's batches continue each other
        tag, row, go_on = tokens[:, :, 0], tokens[:, :, 1], ~resets[1:]
        assert (tag[1:][go_on] == tag[:-1][go_on]).all()
        assert (row[1:][go_on] == row[:-1][go_on] + 1).all()
    del it, loader
