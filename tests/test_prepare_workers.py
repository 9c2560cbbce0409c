"""prepare and encode on several hosts: `--worker i --n_workers N` shares, then `merge`, give the data
folder one process gives (the same manifest, split and shard arrays, in the same order); bad shares and
mixed parts are refused with one line, exit status 2, and nothing written."""
import json
import shutil

import numpy as np
import pytest

from audio_fixtures import write_clip
from tokenizer.__main__ import main

SPLITS = ("train", "val", "test")
# small shards, so utterances of different workers interleave within and across shard files
SMALL = ["--configs", "defaults", "audio", "tiny", "--shard_frames", "700", "--vq_steps", "20", "--vq_log_interval", "10",
         "--vq_eval_interval", "10", "--griffin_lim_iters", "2", "--min_steps", "5"]


@pytest.fixture(autouse=True)
def local_mlflow(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def _run(stage, data, mlruns, *extra):
    """main()'s exit status (argparse-level refusals raise SystemExit: their code)."""
    try:
        return main([stage, *SMALL, "--data_dir", str(data), "--mlflow_dir", str(mlruns), *extra])
    except SystemExit as e:
        return e.code


def _shards(root, kind):
    """Every shard's arrays, split by split, file by file: names, keys (in order), dtypes and bytes."""
    out = {}
    for split in SPLITS:
        files = sorted((root / kind / split).glob("shard-*.npz"))
        out[split] = []
        for f in files:
            with np.load(f, allow_pickle=False) as z:
                out[split].append((f.name, [(k, z[k].dtype.str, z[k].shape, z[k].tobytes()) for k in z.files]))
    return out


def _json(path, *drop):
    data = json.loads(path.read_text())
    for key in drop:
        data.pop(key)
    return data


def _tree(root):
    return sorted((str(p.relative_to(root)), p.stat().st_mtime_ns) for p in root.rglob("*")) if root.exists() else []


@pytest.fixture(scope="module")
def mlruns(tmp_path_factory):
    """One tracking store for the module: each new one costs seconds."""
    return tmp_path_factory.mktemp("mlruns")


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, mlruns):
    """The tiny synth corpus prepared, trained on and encoded by one process each."""
    data = tmp_path_factory.mktemp("one") / "data"
    for stage in ("prepare", "train", "encode"):
        assert _run(stage, data, mlruns) == 0
    return data


def test_two_workers_then_merge_give_the_one_process_folder(one_process, mlruns, tmp_path, capsys):
    data = tmp_path / "data"
    assert _run("prepare", data, mlruns, "--worker", "1", "--n_workers", "2") == 0
    out = capsys.readouterr().out
    assert "worker 1 of 2" in out and "1 of 2 parts done, missing w0of2" in out
    assert not (data / "manifest.json").exists() and not (data / "mels").exists()

    # the next stage, or the same stage in one process, refuses while the parts wait
    assert _run("train", data, mlruns) == 2
    err = capsys.readouterr().err
    assert "not merged yet (1 of 2 parts done, missing w0of2)" in err and "merge" in err and "\n" not in err.strip()
    assert _run("merge", data, mlruns) == 2
    err = capsys.readouterr().err
    assert "part of worker 0 of 2 is missing" in err and "--worker 0 --n_workers 2" in err

    assert _run("prepare", data, mlruns, "--worker", "0", "--n_workers", "2") == 0
    assert "all 2 parts done; merge with" in capsys.readouterr().out
    assert _run("prepare", data, mlruns, "--worker", "0", "--n_workers", "2") == 0  # a complete part is kept
    assert "is complete; skipping" in capsys.readouterr().out
    assert _run("merge", data, mlruns) == 0
    assert "merge: prepare: 12 utterances" in capsys.readouterr().out
    assert not (data / "parts").exists()

    assert _json(data / "manifest.json", "seconds_elapsed") == _json(one_process / "manifest.json", "seconds_elapsed")
    assert (data / "settings" / "prepare.json").read_text() == (one_process / "settings" / "prepare.json").read_text()
    mels = _shards(data, "mels")
    assert mels == _shards(one_process, "mels") and len(mels["train"]) > 2

    # encode in 3 shares of the log-mel shards, with the one process' checkpoint
    shutil.copy(one_process / "tokenizer" / "vqvae.pt", data / "tokenizer" / "vqvae.pt")
    shutil.copy(one_process / "settings" / "train.json", data / "settings" / "train.json")
    for w in (2, 0, 1):
        assert _run("encode", data, mlruns, "--worker", str(w), "--n_workers", "3") == 0
    assert "all 3 parts done" in capsys.readouterr().out
    assert not (data / "tokens").exists()
    assert _run("merge", data, mlruns) == 0
    assert "merge: encode: train" in capsys.readouterr().out
    assert _shards(data, "tokens") == _shards(one_process, "tokens")
    drop = "encode_realtime_factor"
    assert _json(data / "tokens" / "meta.json", drop) == _json(one_process / "tokens" / "meta.json", drop)
    assert set(_json(data / "tokens" / "meta.json")["labels"]) == {"kind", "language", "voice"}
    assert (data / "settings" / "encode.json").read_text() == (one_process / "settings" / "encode.json").read_text()
    assert not (data / "parts").exists()
    assert _run("merge", data, mlruns) == 2 and "nothing to merge" in capsys.readouterr().err


def test_skipped_files_and_notes_merge_in_corpus_order(mlruns, tmp_path, capsys):
    corpus = tmp_path / "corpus"
    for s in range(6):
        for k in range(2):
            write_clip(corpus / f"spk{s}" / f"c{k}.wav", seconds=0.6, seed=10 * s + k, rate=22050 if s % 2 else 16000)
    write_clip(corpus / "spk1" / "long.wav", seconds=3.0, seed=7)                     # cut: a note
    (corpus / "spk2" / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")    # skipped
    (corpus / "spk4" / "junk.flac").write_bytes(b"not audio")                       # skipped
    src = ["--source", "folder", "--data_root", str(corpus), "--max_seconds", "2.0"]
    one, many = tmp_path / "one", tmp_path / "many"
    assert _run("prepare", one, mlruns, *src) == 0
    for w in range(3):
        assert _run("prepare", many, mlruns, *src, "--worker", str(w), "--n_workers", "3") == 0
    assert _run("merge", many, mlruns) == 0
    manifest = _json(many / "manifest.json", "seconds_elapsed")
    assert manifest == _json(one / "manifest.json", "seconds_elapsed")
    assert manifest["skipped_count"] == 2 and len(manifest["notes"]) >= 1 and manifest["split_mode"] == "speaker"
    assert _shards(many, "mels") == _shards(one, "mels")


def test_bad_shares_and_mixed_parts_are_refused_and_write_nothing(tmp_path, capsys):
    data, mlruns = tmp_path / "data", tmp_path / "mlruns"  # workers and refusals never touch MLflow
    for stage, extra, says in (("prepare", ["--worker", "2", "--n_workers", "2"], "between 0 and 1"),
                               ("prepare", ["--worker", "-1", "--n_workers", "2"], "between 0 and 1"),
                               ("encode", ["--worker", "0", "--n_workers", "0"], "at least 1"),
                               ("prepare", ["--worker", "0"], "go together"),
                               ("prepare", ["--n_workers", "2"], "go together"),
                               ("train", ["--worker", "0", "--n_workers", "2"], "prepare and encode only"),
                               ("all", ["--worker", "0", "--n_workers", "1"], "prepare and encode only"),
                               ("merge", ["--worker", "0", "--n_workers", "1"], "prepare and encode only"),
                               ("merge", [], "nothing to merge")):
        assert _run(stage, data, mlruns, *extra) == 2, (stage, extra)
        err = capsys.readouterr().err
        assert says in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert not data.exists() and not mlruns.exists()

    # a worker still writing (or killed while writing) has only its staging folder: that counts too
    other = tmp_path / "other"
    (other / "parts" / "prepare" / ".w1of2.somehost.123").mkdir(parents=True)
    assert _run("train", other, mlruns) == 2
    assert "no part done yet (1 being written, or left by a stopped worker" in capsys.readouterr().err
    assert _run("merge", other, mlruns) == 2
    assert "no prepare part is done" in capsys.readouterr().err
    shutil.rmtree(other)

    assert _run("prepare", data, mlruns, "--worker", "0", "--n_workers", "2") == 0
    before = _tree(tmp_path)
    # another worker count, or other settings, beside the part already there
    assert _run("prepare", data, mlruns, "--worker", "1", "--n_workers", "3") == 2
    assert "holds parts of 2 workers (w0of2)" in capsys.readouterr().err
    assert _run("prepare", data, mlruns, "--worker", "1", "--n_workers", "2", "--n_mels", "64") == 2
    err = capsys.readouterr().err
    assert "w0of2" in err and "n_mels 80 (w0of2) vs 64 (w1of2)" in err and err.count("\n") == 1
    assert _run("encode", data, mlruns, "--worker", "0", "--n_workers", "2") == 2  # prepare is not merged
    assert "prepare worker parts" in capsys.readouterr().err
    assert _run("prepare", data, mlruns) == 2  # one process would make the parts stale without a word
    assert "wait for" in capsys.readouterr().err
    assert _tree(tmp_path) == before

    # parts that disagree (another host saw another corpus) are not merged
    assert _run("prepare", data, mlruns, "--worker", "1", "--n_workers", "2") == 0
    capsys.readouterr()
    record = data / "parts" / "prepare" / "w1of2" / "part.json"
    part = json.loads(record.read_text())
    part["made_with"]["corpus"] = "11 utterances listed, 0 skipped while listing, digest 0"
    record.write_text(json.dumps(part))
    before = _tree(tmp_path)
    assert _run("merge", data, mlruns) == 2
    err = capsys.readouterr().err
    assert "different settings or input" in err and "corpus" in err and err.count("\n") == 1
    assert _tree(tmp_path) == before
    assert not mlruns.exists()
