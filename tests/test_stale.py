"""Stale data: a stage records the settings it was made with and refuses output made with others."""
from __future__ import annotations

import re

import pytest

from conftest import make_token_corpus
from runtime.config import load_config
from tokenizer.layout import DataLayout
from tokenizer.records import StaleOutput, check_stages, record_settings
from tokenizer.stages import ensure_tokens, run_stage


def _made(tmp_path, **overrides):
    """A data folder whose prepare, train and encode outputs were made with `overrides` (no real work)."""
    conf = load_config(["defaults", "tiny"])
    conf.update(data_dir=str(tmp_path / "data"), mlflow_dir=str(tmp_path / "mlruns"), **overrides)
    layout = DataLayout.of(conf.data_dir)
    make_token_corpus(layout.root)
    layout.manifest.write_text("{}")
    layout.vqvae.parent.mkdir(parents=True, exist_ok=True)
    layout.vqvae.write_bytes(b"weights")
    for stage in ("prepare", "train", "encode"):
        record_settings(conf, layout, stage)
    return conf, layout


def test_output_made_with_other_settings_is_refused_naming_the_keys(tmp_path):
    conf, layout = _made(tmp_path)
    check_stages(conf, layout)  # the same settings: reused
    assert ensure_tokens(conf, layout, echo=lambda line: None) == layout.token_meta.parent
    for key, value, stage in (("codebook_size", 512, "train"), ("n_mels", 64, "prepare"),
                              ("split_fractions", [0.7, 0.2, 0.1], "prepare"), ("min_steps", 5, "encode")):
        changed = dict(conf, **{key: value})
        with pytest.raises(StaleOutput, match=rf"^{stage}: .*{key} .* -> {re.escape(repr(value))}.*--force") as e:
            check_stages(changed, layout)
        assert "\n" not in str(e.value)
        with pytest.raises(StaleOutput):
            ensure_tokens(changed, layout, echo=lambda line: None)
    # a setting of another source, or the seed (shared with the world model), is not compared
    check_stages(dict(conf, data_root="/elsewhere", seed=7), layout)


def test_a_tokenizer_recorded_before_vq_causal_existed_is_the_non_causal_one(tmp_path):
    import json
    conf, layout = _made(tmp_path)
    for stage in ("train", "encode"):
        record = json.loads(layout.settings(stage).read_text())
        for key in ("vq_causal", "mel_norm"):
            record.pop(key)
        layout.settings(stage).write_text(json.dumps(record))
    check_stages(conf, layout)  # what it was made with: reused
    with pytest.raises(StaleOutput, match=r"^train: .*vq_causal False -> True"):
        check_stages(dict(conf, vq_causal=True), layout)


def test_a_stage_redone_upstream_makes_the_next_one_stale(tmp_path, monkeypatch):
    conf, layout = _made(tmp_path)
    monkeypatch.setitem(__import__("tokenizer.stages").stages.RUNNERS, "prepare", lambda c, lay: "prepare: faked")
    redone = dict(conf, n_mels=64)
    assert run_stage(redone, layout, "prepare", force=True, echo=lambda line: None)
    with pytest.raises(StaleOutput, match=r"train: .*n_mels 80 -> 64 \(prepare was redone since\)"):
        run_stage(conf | {"n_mels": 64}, layout, "train", echo=lambda line: None)


def test_cli_and_launch_refuse_stale_tokens_with_exit_2_and_write_nothing(tmp_path, capsys):
    import launch
    from tokenizer.__main__ import main as tokenizer_main

    conf, layout = _made(tmp_path)
    before = sorted(p for p in tmp_path.rglob("*"))
    args = ["--configs", "defaults", "tiny", "--data_dir", conf.data_dir, "--mlflow_dir", conf.mlflow_dir,
            "--codebook_size", "512"]
    with pytest.raises(SystemExit) as e:
        tokenizer_main(["all", *args])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        launch.main(args)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all("codebook_size 1024 -> 512" in line and "--force" in line for line in err), err
    assert sorted(p for p in tmp_path.rglob("*")) == before


def test_tokenizer_examples_leave_no_folder_in_the_temp_directory(tmp_path, monkeypatch):
    import tempfile

    import numpy as np
    import torch

    from tokenizer.shards import ShardWriter
    from tokenizer.examples import log_examples
    from tokenizer.vqvae import VQVAE

    conf = load_config(["defaults", "tiny"], ["--griffin_lim_iters", "1"])
    layout = DataLayout.of(tmp_path / "data")
    with ShardWriter(layout.mels("val")) as writer:
        for u in range(2):
            writer.add(per_step={"mel": np.zeros((40, conf.n_mels), np.float16), "voice": np.ones(40, np.float32)},
                       per_utterance={"utterance_id": f"u{u}", "speaker": "s", "source": "t", "mean": -40.0,
                                      "std": 10.0})
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    written = log_examples(VQVAE.from_conf(conf), conf, layout, "val", torch.device("cpu"), n=1)
    assert written and not list((tmp_path / "tmp").iterdir())
