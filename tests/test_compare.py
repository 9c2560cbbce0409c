"""`python -m pydreamer.compare`: runs side by side, differing keys, dashes for missing metrics, bad input."""
from __future__ import annotations

import time

import pytest

from pydreamer.compare import differing_keys, dream_summary, main, margin_cell, probe_summary
from runtime.config import load_config
from runtime.tracking import params_of, setup_mlflow


def _log_run(store, objective: str, metrics: dict[str, float], **params) -> str:
    """A finished run as launch.py + evaluate + dream leave it: the config as params, the objective tag, metrics."""
    import mlflow

    conf = load_config(["defaults", "audio", "tiny"] + (["contrastive"] if objective == "contrastive" else []))
    conf.update(params)
    setup_mlflow({"mlflow_dir": str(store), "experiment": "ab"})
    with mlflow.start_run() as run:
        mlflow.log_params(params_of(conf))
        mlflow.set_tag("objective", objective)
        mlflow.log_metrics(metrics, step=200)
        for step, rate in ((20, 4.0), (40, 6.0)):
            mlflow.log_metric("train/grad_steps_per_sec", rate, step=step)
    return run.info.run_id


def _metrics(nll1: float) -> dict[str, float]:
    m = {"train/model_params": 12345.0, "dream/realtime_factor": 3.0,
         "dream/unconditional/pitch/ks_stat": 0.2, "dream/unconditional/voiced/ks_stat": 0.4,
         "dream/completion/own/lsd_h0.4s": 9.5, "dream/completion/own/lsd_h1.2s": 11.0,
         "dream/real/dnsmos_ovrl": 3.1, "dream/unconditional/dnsmos_ovrl": 2.2, "tokenizer/roundtrip/pesq_wb": 1.4}
    for h in range(1, 16):
        m[f"test/nll_h{h}"] = nll1 + 0.1 * h
        m[f"test/acc_h{h}"] = 0.5 - 0.01 * h
        m[f"test/baseline/bigram/nll_h{h}"] = 3.0 + 0.05 * h
        m[f"test/baseline/unigram/nll_h{h}"] = 3.5
    return m


def test_compare_prints_both_runs_with_their_differing_keys(tmp_path, capsys):
    store = tmp_path / "mlruns"
    a = _log_run(store, "reconstruction", _metrics(2.0))
    b = _log_run(store, "contrastive", {"test/nll_h1": 2.2, "train/model_params": 20000.0}, adam_lr=1e-3)
    out = tmp_path / "cmp"
    assert main(["--runs", a, b, "--mlflow_dir", str(store), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    header, _, row_a, row_b = text.splitlines()[:4]
    for key in ("wm_objective", "adam_lr", "configs", "nll h=1", "best baseline h=5", "grad steps/s", "parameters",
                "dream unconditional mean KS", "dream completion LSD dB @0.4s", "DNSMOS OVRL real",
                "DNSMOS OVRL unconditional", "tokenizer round trip pesq_wb"):
        assert key in header
    assert "hidden_dim" not in header  # the same in both: not a difference
    assert a[:8] in row_a and "reconstruction" in row_a and "2.100" in row_a and "bigram 3.050" in row_a
    assert "0.300" in row_a and "5.000" in row_a  # mean KS of the group, mean grad steps/s over the run
    assert b[:8] in row_b and "contrastive" in row_b and "2.200" in row_b and "| 0.001 |" in row_b
    assert row_b.count("| - ") >= 5  # what run B never measured is a dash, not an error
    assert {p.name for p in out.iterdir()} == {"comparison.md", "comparison.csv", "comparison.png"}
    csv_lines = (out / "comparison.csv").read_text().splitlines()
    assert len(csv_lines) == 3 and csv_lines[0].startswith("run,name,objective,")
    # the experiment picks up the same runs, in the order they started
    assert main(["--experiment", "ab", "--mlflow_dir", str(store), "--out", str(out)]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert a[:8] in rows[2] and b[:8] in rows[3]


def test_compare_of_ten_runs_takes_seconds(tmp_path, capsys):
    store = tmp_path / "mlruns"
    ids = [_log_run(store, "reconstruction", _metrics(2.0 + i / 10), seed=i) for i in range(10)]
    t0 = time.time()
    assert main(["--runs", *ids, "--mlflow_dir", str(store), "--out", str(tmp_path / "cmp")]) == 0
    assert time.time() - t0 < 10
    assert len(capsys.readouterr().out.splitlines()) >= 12


@pytest.mark.parametrize("case, message", [
    ("unknown run", "no MLflow run 'nosuchrun'"),
    ("empty experiment", "MLflow experiment 'empty' in"),
    ("unknown experiment", "no MLflow experiment 'nosuch'"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, case, message):
    store = tmp_path / "mlruns"
    setup_mlflow({"mlflow_dir": str(store), "experiment": "empty"})
    which = {"unknown run": ["--runs", "nosuchrun"], "empty experiment": ["--experiment", "empty"],
             "unknown experiment": ["--experiment", "nosuch"]}[case]
    with pytest.raises(SystemExit) as e:
        main([*which, "--mlflow_dir", str(store), "--out", str(tmp_path / "cmp")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_differing_keys_and_dream_summary():
    assert differing_keys([{"a": 1, "b": 2, "run_name": "x"}, {"a": 1, "b": 3, "run_name": "y"}]) == ["b"]
    assert differing_keys([{"a": 1}, {"a": 1, "c": 0}]) == ["c"]
    assert dream_summary({}) == {}
    assert dream_summary({"dream/warm/pitch/ks_stat": 0.5}) == {"dream warm mean KS": 0.5}
    conditioned = {"dream/condition/language/acc": 0.75, "dream/condition/language/chance": 0.25}
    assert dream_summary(conditioned) == {"dream language heard as its condition (chance)": "0.750 (0.250)"}


def test_margin_and_probe_cells():
    m = {"test/margin_h1": 0.39, "test/margin_lo_h1": 0.3, "test/margin_hi_h1": 0.48, "test/voiced/margin_h1": 0.2,
         "test/probe/speaker/acc": 0.9, "test/probe/speaker/chance": 0.25, "test/probe/x/y/z": 1.0}
    assert margin_cell(m, 1) == "+0.390 [+0.300, +0.480]"
    assert margin_cell(m, 1, "test/voiced") is None  # no interval logged: no cell rather than half a one
    assert margin_cell(m, 5) is None
    assert probe_summary(m) == {"probe speaker acc": 0.9, "probe speaker chance": 0.25}


def test_a_log_mel_model_lines_up_with_a_token_model_on_the_log_mel_columns(tmp_path, capsys):
    store = tmp_path / "mlruns"
    log_mel = {f"test/log_mel/{part}lsd_h{h}": v for h in (1, 5, 15)
               for part, v in (("", 9.0 + h / 10), ("margin/", 0.5), ("margin_lo/", 0.25), ("margin_hi/", 0.75))}
    token = _log_run(store, "reconstruction", {**_metrics(2.0), **log_mel})
    mel = _log_run(store, "reconstruction", {**log_mel, "test/mel_nll_h1": 1.234, "test/log_mel/lsd_h1": 8.5},
                   world_model="mel_rssm", observation="mel")
    assert main(["--runs", token, mel, "--mlflow_dir", str(store), "--out", str(tmp_path / "cmp")]) == 0
    header, _, row_token, row_mel = capsys.readouterr().out.splitlines()[:4]
    cols = [c.strip() for c in header.strip("|").split("|")]
    cells = {name: [c.strip() for c in row.strip("|").split("|")] for name, row in (("token", row_token), ("mel", row_mel))}
    at = {c: cols.index(c) for c in ("nll h=1", "log-mel LSD dB h=1", "LSD margin h=5", "mel nll h=1", "world_model")}
    assert cells["mel"][at["nll h=1"]] == "-" and cells["token"][at["nll h=1"]] == "2.100"  # no tokens: a dash
    assert cells["mel"][at["log-mel LSD dB h=1"]] == "8.500" and cells["token"][at["log-mel LSD dB h=1"]] == "9.100"
    assert cells["mel"][at["LSD margin h=5"]] == "+0.500 [+0.250, +0.750]"
    assert cells["mel"][at["mel nll h=1"]] == "1.234" and cells["mel"][at["world_model"]] == "mel_rssm"


def test_a_wavegan_run_is_its_own_family_of_row_beside_a_world_model(tmp_path, capsys):
    """`python -m wavegan` runs (tag family: wavegan) forecast nothing: dashes there; their samples fill the
    dream columns as dreams from nothing, and their generator steps per second the grad steps/s column."""
    import mlflow

    store = tmp_path / "mlruns"
    world = _log_run(store, "reconstruction", _metrics(2.0))
    conf = load_config(["defaults", "audio", "tiny"])
    with mlflow.start_run() as run:
        mlflow.log_params(params_of(conf))
        mlflow.set_tags({"family": "wavegan", "objective": "wgan-gp"})
        mlflow.log_metrics({"dream/unconditional/rms/ks_stat": 0.5, "dream/unconditional/harmonicity/ks_stat": 0.7,
                            "dream/unconditional/dnsmos_ovrl": 1.5, "dream/real/dnsmos_ovrl": 3.0,
                            "train/model_params": 777.0}, step=4)
        for step, rate in ((2, 1.0), (4, 2.0)):
            mlflow.log_metric("wavegan/steps_per_sec", rate, step=step)
    assert main(["--runs", world, run.info.run_id, "--mlflow_dir", str(store), "--out", str(tmp_path / "cmp")]) == 0
    header, _, row_world, row_gan = capsys.readouterr().out.splitlines()[:4]
    cols = [c.strip() for c in header.strip("|").split("|")]
    cells = {name: dict(zip(cols, (c.strip() for c in row.strip("|").split("|"))))
             for name, row in (("world", row_world), ("gan", row_gan))}
    assert cells["world"]["family"] == "world model" and cells["gan"]["family"] == "wavegan"
    assert cells["gan"]["objective"] == "wgan-gp"
    for forecast in ("nll h=1", "acc h=5", "best baseline h=15", "dream completion LSD dB @0.4s"):
        assert cells["gan"][forecast] == "-" and cells["world"][forecast] != "-"
    assert cells["gan"]["dream unconditional mean KS"] == "0.600" and cells["gan"]["DNSMOS OVRL unconditional"] == "1.500"
    assert cells["gan"]["grad steps/s"] == "1.500" and cells["gan"]["parameters"] == "777"
    assert cells["world"]["grad steps/s"] == "5.000"  # the learner's own history, as before
    assert "Family wavegan" in (tmp_path / "cmp" / "comparison.md").read_text()


def test_tokenizer_runs_are_left_out_and_different_corpora_are_said(tmp_path, capsys):
    """The tokenizer stages' runs (tag component: tokenizer) train no world model: not a row. Runs on different
    token corpora get one line saying their NLLs are not on one scale; the closing line opens them in MLflow."""
    import mlflow

    from pydreamer.runs import SHA_TAG

    store = tmp_path / "mlruns"
    a = _log_run(store, "reconstruction", _metrics(2.0))
    with mlflow.start_run(run_name="tokenizer-data") as tok:
        mlflow.set_tags({"component": "tokenizer", "data_dir": "/x/data"})
        mlflow.log_metrics({"tokenizer/prepare_utterances": 10.0})
    b = _log_run(store, "reconstruction", _metrics(2.5), data_dir="data-digits")
    out = tmp_path / "cmp"
    assert main(["--experiment", "ab", "--mlflow_dir", str(store), "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [line for line in lines[2:] if line.startswith("|")]
    assert len(rows) == 2 and a[:8] in rows[0] and b[:8] in rows[1] and tok.info.run_id[:8] not in "".join(rows)
    assert "compare: left out 1 tokenizer run (they train no world model)" in lines
    note = [line for line in lines if "different token corpora" in line]
    assert len(note) == 1 and "data, data-digits" in note[0]
    exp = mlflow.get_run(a).info.experiment_id
    assert f"/#/experiments/{exp}/runs?workflowType=machine_learning; their test NLL against horizon" in lines[-1]
    assert "/#/metric?runs=" in lines[-1] and a in lines[-1] and b in lines[-1] and tok.info.run_id not in lines[-1]
    # the same data folder, but another tokenizer's weights: said too, by the weights
    mlflow.MlflowClient().set_tag(a, SHA_TAG, "a" * 64)
    c = _log_run(store, "reconstruction", _metrics(2.2))
    mlflow.MlflowClient().set_tag(c, SHA_TAG, "b" * 64)
    assert main(["--runs", a, c, "--mlflow_dir", str(store), "--out", str(out)]) == 0
    assert "2 tokenizers (weights aaaaaaaa, bbbbbbbb)" in capsys.readouterr().out
    assert main(["--runs", a, a, "--mlflow_dir", str(store), "--out", str(out)]) == 0
    assert "different token corpora" not in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["--runs", tok.info.run_id, "--mlflow_dir", str(store), "--out", str(out)])
    assert e.value.code == 2 and "only tokenizer runs" in capsys.readouterr().err
