"""Drill: bad configs given to launch.py. One clear line each, exit code 2, nothing written."""
from __future__ import annotations

import pytest

import launch


@pytest.mark.parametrize("args, words", [
    (["--vq_stpes", "3"], "unknown config key 'vq_stpes'; did you mean 'vq_steps'"),
    (["--configs", "defaults", "tinny"], "unknown config section 'tinny'; did you mean 'tiny'"),
    (["--batch_size", "abc"], "--batch_size 'abc': cannot be read as int"),
    (["--batch_size", "2.5"], "expected a whole number"),
    (["--amp", "maybe"], "expected true or false"),
    (["--batch_size", "-3"], "'batch_size' = -3: must be a positive whole number"),
    (["--batch_length", "0"], "'batch_length' = 0: must be a positive whole number"),
    (["--codebook_size", "0"], "'codebook_size' = 0"),
    (["--adam_lr", "0"], "'adam_lr' = 0.0: must be greater than 0"),
    (["--top_db", "-5"], "'top_db' = -5.0: must be greater than 0"),
    (["--data_workers", "-1"], "'data_workers' = -1: must be 0 or more"),
    (["--synth_languages", ""], "'synth_languages'"),
    (["--source", "folder"], "'data_root' is empty: --source folder needs --data_root DIR"),
    (["--source", "folder", "--data_root", ""], "'data_root' is empty"),
    (["--source", "commonvoice", "--data_root", "no/such/dir"], "'data_root' = 'no/such/dir': is not a folder"),
    (["--data_dir", "a_file"], "'data_dir' = 'a_file': is a file; expected a folder"),
    (["--data_dir", ""], "'data_dir' = '': must name a folder"),
    (["--replay_dir", "s3://bucket/replay"], "--replay_dir s3://bucket/replay: launch.py runs every process on this machine"),
    (["--evaluate_at_end", "maybe"], "expected true or false"),
    (["--mlflow_dir", "a_file"], "'mlflow_dir' = 'a_file': is a file"),
    (["--device", "tpu"], "'device' = 'tpu': expected auto, cpu, cuda or cuda:N"),
    (["--replay_dir", "/proc/forbidden"], "--replay_dir /proc/forbidden: cannot write in /proc"),
    (["--mlflow_dir", "/proc/forbidden"], "--mlflow_dir /proc/forbidden: cannot write in /proc"),
    (["--data_dir", "/proc/forbidden/data"], "--data_dir /proc/forbidden/data: cannot write in /proc"),
])
def test_a_bad_config_is_one_line_exit_2_and_nothing_written(args, words, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file").write_text("not a folder")
    if "--configs" not in args:
        args = ["--configs", "defaults", "tiny", *args]
    with pytest.raises(SystemExit) as e:
        launch.main(args)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert [p.name for p in tmp_path.iterdir()] == ["a_file"]  # nothing written: no mlruns, no data, no replay


@pytest.mark.parametrize("module, key", [("pydreamer.train", "replay_dir"), ("pydreamer.train", "mlflow_dir"),
                                         ("pydreamer.generator", "replay_dir"), ("tokenizer", "data_dir")])
def test_a_stand_alone_command_refuses_an_unwritable_folder_before_it_starts(module, key, tmp_path, monkeypatch,
                                                                             capsys):
    """Not a wait of learner_wait_s for episodes that can never come, nor a traceback: one line, exit 2."""
    import importlib

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    args = ["--configs", "defaults", "tiny", "--replay_dir", str(tmp_path / "replay"), f"--{key}", "/proc/forbidden"]
    main = importlib.import_module(f"{module}.__main__" if module == "tokenizer" else module).main
    with pytest.raises(SystemExit) as e:
        main((["prepare"] if module == "tokenizer" else []) + args)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"--{key} /proc/forbidden: cannot write in /proc" in err and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == []
