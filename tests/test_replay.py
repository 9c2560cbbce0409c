"""Episode files and the replay reader: round trips, bad files, batches, resets and chunk continuity."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from pydreamer.data import ReplayReader, ReplayStoreIndex, episode_batch, make_replay_loader
from pydreamer.episodes import (
    EpisodeError,
    EpisodeBuilder,
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


# ---- conditioning labels: episode members -> `condition` ids in the batches ------------------------------

CONDITION = [("language", ["de", "en"]), ("voice", ["m1", "m2"])]
LABELS = {0: {"language": "de", "voice": "m1"}, 1: {"language": "en", "voice": "f9"},  # f9: never heard in train
          2: {"language": "xx", "kind": "counting"}, 3: {}}
CODES = {0: [1, 1], 1: [2, 0], 2: [0, 0], 3: [0, 0]}  # 1 + index in the vocabulary; 0: none or unknown


def labelled_episode(n: int, tag: int) -> dict:
    labels = {f"label_{k}": np.asarray(v) for k, v in LABELS[tag % 4].items()}
    return {**make_episode(n, tag), **labels}


def test_episodes_keep_their_labels_and_the_builder_writes_them(tmp_path):
    builder = EpisodeBuilder({"tokens": np.zeros(2, np.int64)}, 1)
    builder.add(0, {"tokens": np.ones(2, np.int64)}, 0.5, True)
    ep = builder.finish(utterance_id="u", worker=0, episode=0, split="train", label_voice="m1", label_language="de")
    back = load_episode(save_episode(tmp_path / episode_filename(0, 0, 1), ep))
    assert back["label_voice"].shape == () and str(back["label_voice"]) == "m1" and str(back["label_language"]) == "de"
    assert "label_voice" not in load_episode(tmp_path / episode_filename(0, 0, 1), keys=("label_language",))


def test_a_label_that_is_not_a_string_is_refused_naming_the_key(tmp_path, caplog):
    with pytest.raises(EpisodeError, match="'label_voice' must be a 0-d string"):
        save_episode(tmp_path / "a.npz", {**make_episode(5, 0), "label_voice": np.array(["m1", "m2"])})
    folder = tmp_path / "episodes" / "w0"
    fill_store(tmp_path / "episodes", [20])
    bad = folder / episode_filename(0, 1, 20)
    np.savez(bad, **{**make_episode(20, 1), "label_voice": np.asarray(3)})  # another writer's file
    with pytest.raises(EpisodeError, match=rf"{bad.name}: 'label_voice' must be a 0-d string"):
        load_episode(bad)
    reader = ReplayReader(tmp_path, batch_size=2, batch_length=30, seed=0, condition=CONDITION)
    with caplog.at_level(logging.WARNING):
        batch = next(iter(reader))
    assert reader.n_skipped == 1 and "label_voice" in batch["skipped"][0] and "label_voice" in caplog.text
    assert (batch["tokens"][:, :, 0] == 0).all() and (batch["condition"] == 0).all()  # episode 0 has no labels


def test_batches_hold_each_steps_own_episodes_condition(tmp_path):
    for i, n in enumerate([5, 7, 9, 11, 6, 8]):
        save_episode(tmp_path / "episodes" / "w0" / episode_filename(0, i, n), labelled_episode(n, i))
    reader = ReplayReader(tmp_path, batch_size=4, batch_length=16, seed=0, condition=CONDITION)
    assert reader.load_keys[-2:] == ("label_language", "label_voice")  # label_kind is never read
    it = iter(reader)
    spans = 0
    for _ in range(6):
        batch = next(it)
        cond, tags, resets = batch["condition"], batch["tokens"][:, :, 0].numpy(), batch["reset"].numpy()
        assert cond.shape == (16, 4, 2) and cond.dtype == torch.int64
        for t in range(16):
            for b in range(4):
                assert cond[t, b].tolist() == CODES[tags[t, b] % 4], (t, b)
        spans += int(sum(tags[t, b] % 4 != tags[t - 1, b] % 4 for t in range(1, 16) for b in range(4) if resets[t, b]))
    assert spans > 5  # chunks that span two episodes with other labels
    assert "condition" not in next(iter(ReplayReader(tmp_path, batch_size=2, batch_length=4, seed=0)))


def test_eval_batches_fill_condition_the_same_way():
    eps = [labelled_episode(5, 0), labelled_episode(8, 1), labelled_episode(3, 3)]
    arrays, mask = episode_batch(eps, 7, condition=CONDITION)
    assert arrays["condition"].shape == (7, 3, 2) and arrays["condition"].dtype == np.int64
    for b, tag in enumerate((0, 1, 3)):
        assert (arrays["condition"][mask[:, b], b] == CODES[tag]).all() and (arrays["condition"][~mask[:, b], b] == 0).all()
    assert "condition" not in episode_batch(eps, 7)[0]


def test_the_loader_reads_the_vocabulary_from_the_corpus(tmp_path, conf, labelled_token_dir):
    from tokenizer.tokens import ConditionError

    for i, n in enumerate([10, 12, 14, 16]):
        save_episode(tmp_path / "episodes" / "w0" / episode_filename(0, i, n), labelled_episode(n, i))
    conf.update(data_workers=0, batch_size=3, batch_length=10, condition=["voice"])
    with pytest.raises(ConditionError, match="has no labels"):  # the conf fixture's corpus has none
        make_replay_loader(conf, tmp_path)
    conf.data_dir = str(labelled_token_dir)  # voices m0, m1, m2 in its train split
    batch = next(iter(make_replay_loader(conf, tmp_path)))
    want = {0: 2, 1: 0, 2: 0, 3: 0}
    tags = batch["tokens"][:, :, 0].numpy()
    assert batch["condition"].shape == (10, 3, 1)
    assert (batch["condition"][:, :, 0].numpy() == np.vectorize(want.get)(tags)).all()
