import numpy as np

from tokenizer.shards import ShardWriter, iter_utterances, shard_paths


def _write(folder, lengths, max_rows):
    with ShardWriter(folder, max_rows=max_rows) as w:
        for i, n in enumerate(lengths):
            w.add({"tokens": np.full((n, 2), i, np.int16), "voice": np.linspace(0, 1, n, dtype=np.float32)},
                  {"utterance_id": f"u{i}", "speaker": f"s{i % 2}", "mean": float(i)})


def test_round_trip_across_shards(tmp_path):
    lengths = [3, 1, 1, 5, 2]
    _write(tmp_path, lengths, max_rows=4)
    assert len(shard_paths(tmp_path)) > 1
    utts = list(iter_utterances(tmp_path))
    assert [u["utterance_id"] for u in utts] == [f"u{i}" for i in range(5)]
    for i, (u, n) in enumerate(zip(utts, lengths)):
        assert u["tokens"].shape == (n, 2) and (u["tokens"] == i).all()
        assert u["voice"].shape == (n,) and u["mean"] == float(i)


def test_one_step_utterances_are_not_mistaken_for_per_utterance_values(tmp_path):
    _write(tmp_path, [1, 1, 1], max_rows=100)
    u = list(iter_utterances(tmp_path))[2]
    assert u["tokens"].shape == (1, 2) and u["speaker"] == "s0"


def test_no_pickles_and_no_temp_files_left(tmp_path):
    _write(tmp_path, [2, 2], max_rows=1)
    for p in shard_paths(tmp_path):
        with np.load(p, allow_pickle=False) as z:
            assert all(z[k].dtype != object for k in z.files)
    assert not list(tmp_path.glob(".*tmp"))


def test_failed_write_leaves_no_file_and_no_temp(tmp_path):
    import pytest

    from runtime.files import atomic_path

    target = tmp_path / "out.npz"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("writer died")
    assert not target.exists() and list(tmp_path.iterdir()) == []
