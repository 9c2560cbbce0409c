"""The tokenizer's four stages end to end on a small folder corpus full of bad files."""
import json

import numpy as np
import pytest
import soundfile as sf

from audio_fixtures import speechlike, write_clip
from tokenizer.__main__ import main
from tokenizer.shards import iter_utterances

FAST = ["--vq_steps", "30", "--vq_log_interval", "10", "--vq_eval_interval", "15", "--griffin_lim_iters", "2"]


@pytest.fixture(autouse=True)
def local_mlflow(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def _args(stage, data_dir, tmp_path, *extra):
    return [stage, "--configs", "defaults", "audio", "tiny", "--data_dir", str(data_dir),
            "--mlflow_dir", str(tmp_path / "mlruns"), *FAST, *extra]


@pytest.fixture(scope="module")
def messy_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    for s in range(8):
        for k in range(2):
            write_clip(root / f"spk{s}" / f"c{k}.wav", seconds=1.5, seed=10 * s + k, rate=22050 if s % 2 else 16000)
    write_clip(root / "spk0" / "voice.mp3", seconds=1.5, seed=3, fmt="MP3")
    write_clip(root / "spk1" / "flac_named.wav", seconds=1.5, seed=4, fmt="FLAC")           # wrong extension: kept
    write_clip(root / "spk2" / "many.wav", seconds=1.5, seed=5, channels=6)                  # 6 channels: downmixed
    write_clip(root / "spk3" / "long.wav", seconds=4.0, seed=6)                              # cut to max_seconds
    bad = root / "bad"
    bad.mkdir()
    (bad / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk")
    sf.write(str(bad / "empty.wav"), np.zeros(0, np.float32), 16000)
    sf.write(str(bad / "silent.flac"), np.zeros(16000, np.float32), 16000)
    nan = speechlike(1.0)
    nan[5] = np.nan
    sf.write(str(bad / "nan.wav"), nan, 16000, subtype="FLOAT")
    (bad / "readme.txt").write_text("not audio")
    return root


def test_prepare_train_encode_evaluate(messy_folder, tmp_path, capsys):
    data = tmp_path / "data"
    src = ["--source", "folder", "--data_root", str(messy_folder), "--max_seconds", "2.5"]
    assert main(_args("prepare", data, tmp_path, *src)) == 0
    out = capsys.readouterr().out
    assert "prepare: 20 utterances" in out and "skipped 4" in out
    manifest = json.loads((data / "manifest.json").read_text())
    reasons = {p.split("/")[-1]: r for p, r in ((s["path"], s["reason"]) for s in manifest["skipped"])}
    assert set(reasons) == {"corrupt.wav", "empty.wav", "silent.flac", "nan.wav"}
    assert "cannot decode" in reasons["corrupt.wav"] and "all silent" in reasons["silent.flac"]
    assert "empty" in reasons["empty.wav"] and "NaN" in reasons["nan.wav"]
    notes = {n["path"].split("/")[-1]: n["note"] for n in manifest["notes"]}
    assert "downmixed from 6 channels" in notes["many.wav"] and "cut from 4.0 s" in notes["long.wav"]
    assert manifest["split_mode"] == "speaker"
    speakers = [set(v) for v in manifest["speakers"].values()]
    assert not (speakers[0] & speakers[1] or speakers[0] & speakers[2] or speakers[1] & speakers[2])

    assert main(_args("train", data, tmp_path)) == 0
    assert (data / "tokenizer" / "vqvae.pt").is_file()
    assert main(_args("encode", data, tmp_path)) == 0
    meta = json.loads((data / "tokens" / "meta.json").read_text())
    assert meta["codebook_size"] == 1024 and meta["tokens_per_step"] == 4 and meta["bits_per_second"] == 1000
    utts = list(iter_utterances(data / "tokens" / "train"))
    assert len(utts) == manifest["splits"]["train"]["utterances"] - meta["dropped_short"]["train"]
    u = utts[0]
    assert u["tokens"].dtype == np.int16 and u["tokens"].shape[1] == 4 and u["tokens"].max() < 1024
    assert u["voice"].shape == (len(u["tokens"]),) and 0 <= u["voice"].min() and u["voice"].max() <= 1
    assert u["source"].endswith((".wav", ".mp3")) and u["speaker"].startswith("spk")
    assert all(v["label_speaker"] == v["speaker"] for v in utts)  # a folder corpus' one label
    assert meta["labels"] == {"speaker": sorted({v["speaker"] for v in utts})}  # the train split's values

    assert main(_args("evaluate", data, tmp_path)) == 0
    metrics = json.loads((data / "tokenizer" / "metrics.json").read_text())
    for key in ("mse", "psnr", "pearson", "lsd_db", "codebook_usage", "perplexity", "dead_codes", "bits_per_second"):
        assert np.isfinite(metrics[key]), key
    assert 0 < metrics["codebook_usage"] <= 1 and metrics["dead_codes"] == round(1024 * (1 - metrics["codebook_usage"]))
    assert list((data / "tokenizer" / "examples").glob("*.reconstructed.wav"))

    import mlflow
    run = mlflow.get_run((data / "tokenizer" / "mlflow_run_id").read_text())
    assert {"tokenizer/lsd_db", "tokenizer/prepare_skipped", "tokenizer/train_loss"} <= set(run.data.metrics)
    assert run.data.params["source"] == "folder"

    capsys.readouterr()
    assert main(_args("prepare", data, tmp_path, *src)) == 0
    assert "exists; skipping" in capsys.readouterr().out
    before = [(u["utterance_id"], u["tokens"].tobytes()) for s in ("train", "val", "test")
              for u in iter_utterances(data / "tokens" / s)]
    assert main(_args("encode", data, tmp_path, "--force", "--encode_workers", "2", "--shard_frames", "400")) == 0
    assert "encode: train" in capsys.readouterr().out
    after = [(u["utterance_id"], u["tokens"].tobytes()) for s in ("train", "val", "test")
             for u in iter_utterances(data / "tokens" / s)]
    assert sorted(after) == sorted(before)  # same tokens whatever the number of encode processes

    # 50 steps = 2 s: only the 2.5 s clip is kept, so most of every split is dropped, and said so
    assert main(_args("encode", data, tmp_path, "--force", "--min_steps", "50")) == 0
    out = capsys.readouterr().out
    meta = json.loads((data / "tokens" / "meta.json").read_text())
    assert "WARNING: min_steps=50" in out and "--min_steps" in out and "max_short_drop_fraction" in out
    assert sum(meta["splits"].values()) == 1 and any(" train utterances" in w for w in meta["warnings"])
    assert 0 < metrics["lsd_db_band"] and metrics["signal_mel_bins"] == manifest["bandwidth"]["signal_mel_bins"]


def test_nothing_usable_is_one_clear_error(tmp_path, capsys):
    root = tmp_path / "junk"
    root.mkdir()
    (root / "a.wav").write_bytes(b"not audio at all")
    sf.write(str(root / "b.wav"), np.zeros(1000, np.float32), 16000)
    code = main(_args("prepare", tmp_path / "d", tmp_path, "--source", "folder", "--data_root", str(root)))
    err = capsys.readouterr().err
    assert code == 1 and "nothing usable" in err and "Traceback" not in err


def test_a_missing_data_root_is_a_config_error_before_anything_is_written(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:  # a bad config: exit code 2, checked at load
        main(_args("prepare", tmp_path / "d", tmp_path, "--source", "folder", "--data_root", str(tmp_path / "nowhere")))
    assert e.value.code == 2 and "is not a folder" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_the_bitrate_table_trains_a_tokenizer_per_setting(messy_folder, tmp_path, capsys):
    """bench/bitrate_table.py on a prepared folder (it once handed the stages a plain dict: AttributeError)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from bitrate_table import main as bitrate_table

    data = tmp_path / "data"
    assert main(_args("prepare", data, tmp_path, "--source", "folder", "--data_root", str(messy_folder))) == 0
    rows = bitrate_table(["--configs", "defaults", "audio", "tiny", "--data_dir", str(data), *FAST,
                          "--grid", "4x1", "4x2"])
    assert [(r["time_downsample"], r["tokens_per_step"]) for r in rows] == [(4, 1), (4, 2)]
    assert rows[1]["bits_per_second"] == 2 * rows[0]["bits_per_second"]  # twice the tokens per step
    assert (tmp_path / "data-bitrate-4x2" / "tokenizer" / "vqvae.pt").is_file()
    assert "| 4 x 2 |" in capsys.readouterr().out


def test_train_before_prepare_names_the_command(tmp_path, capsys):
    assert main(_args("train", tmp_path / "d", tmp_path)) == 1
    assert "python -m tokenizer prepare" in capsys.readouterr().err


def test_commonvoice_prepare_mp3(tmp_path, capsys):
    root = tmp_path / "cv"
    rows = ["client_id\tpath\tsentence"]
    for s in range(4):
        for k in range(2):
            name = f"common_voice_en_{s}{k}.mp3"
            write_clip(root / "clips" / name, seconds=1.2, seed=s * 3 + k, rate=48000, fmt="MP3")
            rows.append(f"client{s}\t{name}\tsome words")
    rows.append("client9\tmissing.mp3\tgone")
    (root / "validated.tsv").write_text("\n".join(rows) + "\n")
    (root / "invalidated.tsv").write_text("client_id\tpath\tsentence\nx\tnope.mp3\tx\n")
    assert main(_args("prepare", tmp_path / "d", tmp_path, "--source", "commonvoice", "--data_root", str(root))) == 0
    manifest = json.loads((tmp_path / "d" / "manifest.json").read_text())
    assert manifest["utterances_kept"] == 8 and manifest["skipped_count"] == 1
    assert "missing" in manifest["skipped"][0]["reason"]
    assert manifest["split_mode"] == "utterance"  # 4 speakers < min_split_speakers: said so
    assert "utterance-level" in manifest["split_note"]


def test_synth_prepare_is_deterministic_and_pool_matches_inline(tmp_path):
    """The built-in corpus: the same config gives the same features, with one or two worker processes."""
    runs = []
    for workers in (1, 2):
        data = tmp_path / f"w{workers}"
        assert main(_args("prepare", data, tmp_path, "--max_files", "6", "--prepare_workers", str(workers))) == 0
        runs.append([(u["utterance_id"], u["speaker"], u["mel"].tobytes(), u["label_language"], u["label_voice"],
                      u["label_kind"]) for s in ("train", "val", "test") for u in iter_utterances(data / "mels" / s)])
    assert len(runs[0]) == 6 and runs[0] == runs[1]
    assert all(uid.startswith("synth-") and "+" in spk for uid, spk, *_ in runs[0])
    # the conditioning labels: the voice's language and timbre, and what kind of text it says
    assert all(spk == f"{lang}+{voice}" and kind in ("counting", "syllables", "sentence")
               for _, spk, _, lang, voice, kind in runs[0])
