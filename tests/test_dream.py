"""python -m pydreamer.dream on a tiny run: wavs of the asked length, seeded tokens, any prompt, bad input."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from pydreamer.dream import main
from pydreamer.dreams.imagination import dream_tokens
from pydreamer.models import Dreamer
from pydreamer.models.checkpoint import save_checkpoint
from pydreamer.replay_layout import checkpoint_path
from pydreamer.runs import record_tokenizer
from runtime.config import load_config
from runtime.tracking import start_or_resume_run, tracking_uri
from tests.audio_fixtures import speechlike, write_clip
from tests.conftest import make_token_corpus
from tokenizer.features import MelSettings, log_mel_features
from tokenizer.layout import DataLayout
from tokenizer.shards import ShardWriter
from tokenizer.vqvae import VQVAE, save_vqvae

K, G = 32, 4


def make_dream_data(root, seconds: float = 2.5):
    """A token corpus, the test split's log-mels (speech-like clips of `seconds`) and an untrained tiny VQ-VAE."""
    data = make_token_corpus(root / "data", {"train": 6, "val": 2, "test": 3}, codebook_size=K)
    conf = load_config(["defaults", "audio", "tiny"])
    settings = MelSettings.from_conf(conf)
    with ShardWriter(DataLayout.of(data).mels("test")) as w:
        for i in range(3):
            f = log_mel_features(speechlike(seconds, seed=i), settings, conf["vad_db"])
            w.add(per_step={"mel": f["mel"].astype("float16"), "voice": f["voice"]},
                  per_utterance={"utterance_id": f"utt{i}", "speaker": f"s{i}", "source": "t", "mean": f["mean"],
                                 "std": f["std"]})
    meta = json.loads(DataLayout.of(data).token_meta.read_text())
    DataLayout.of(data).token_meta.write_text(json.dumps({**meta, "mel_mean": -30.0, "mel_std": 15.0}))
    vq = VQVAE(n_mels=80, channels=16, code_dim=8, codebook_size=K, tokens_per_step=G, time_downsample=4, res_blocks=1)
    save_vqvae(DataLayout.of(data).vqvae, vq, {"features": {k: conf[k] for k in MelSettings.__dataclass_fields__}})
    return data


def make_run(root, data, world_model="rssm", conditions=()):
    """A run as launch.py leaves it: params, replay_dir tag, tokenizer artifact, a checkpoint (untrained weights)."""
    observation = ["--observation", "mel"] if world_model == "mel_rssm" else []
    condition = ["--condition", ",".join(n for n, _ in conditions)] if conditions else []
    conf = load_config(["defaults", "audio", "tiny"], ["--data_dir", str(data), "--mlflow_dir", str(root / "mlruns"),
                                                        "--codebook_size", str(K), "--world_model", world_model,
                                                        "--context_steps", "16", *observation, *condition])
    replay = root / f"replay-{world_model}{'-conditioned' if conditions else ''}"
    with start_or_resume_run(conf, tags={"replay_dir": str(replay)}) as run:
        layout = DataLayout.of(data)
        record_tokenizer(run, layout.vqvae, layout.token_meta)
    save_checkpoint(checkpoint_path(replay), Dreamer(conf, K, G, 1, conditions=conditions), None, 5)
    return run.info.run_id


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("dream")
    data = make_dream_data(root)
    return root, make_run(root, data)


def _dream(root, run_id, out, *args):
    return main(["--run", run_id, "--out", str(out), "--mlflow_dir", str(root / "mlruns"), "--dream_seconds", "1",
                 "--dream_samples", "2", "--dream_unconditional", "2", "--dream_warm", "1", "--dream_test_prompts", "2",
                 "--dream_real_clips", "3", "--interp_seconds", "0.4", "--dream_griffin_lim_iters", "4", *args])


def _wav(path):
    wave, sr = sf.read(str(path))
    return wave, sr


def test_same_seed_same_tokens_for_every_world_model():
    for kind in ("rssm", "transformer", "maskgit"):
        conf = load_config(["defaults", "tiny"], ["--world_model", kind, "--context_steps", "16"])
        model = Dreamer(conf, K, G, 1)
        prompt = np.random.default_rng(0).integers(0, K, (8, G))
        a, b = dream_tokens(model, prompt, 20, 3, 1.0, seed=7), dream_tokens(model, prompt, 20, 3, 1.0, seed=7)
        c = dream_tokens(model, prompt, 20, 3, 1.0, seed=8)
        assert a.shape == (3, 20, G) and (a == b).all() and not (a == c).all()


def test_seed_fixes_the_cli_tokens_and_a_stereo_8k_prompt_works(tiny_run, tmp_path):
    root, run_id = tiny_run
    prompt = write_clip(tmp_path / "stereo8k.wav", seconds=1.5, rate=8000, channels=2)
    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        assert _dream(root, run_id, out, "--prompt", str(prompt), "--seed", "3", "--no_log") == 0
    ta, tb = np.load(outs[0] / "tokens.npz"), np.load(outs[1] / "tokens.npz")
    assert set(ta.files) == set(tb.files) and all((ta[k] == tb[k]).all() for k in ta.files)
    wave, sr = _wav(outs[0] / "completions" / "00-stereo8k" / "prompt+dream-01.wav")
    assert sr == 16000 and len(wave) == 32000 and np.abs(wave).max() > 1e-3


@pytest.mark.parametrize("case", ["not audio", "missing prompt", "unknown run"])
def test_bad_input_is_one_line_exit_2_and_nothing_written(tiny_run, tmp_path, capsys, case):
    root, run_id = tiny_run
    prompt = tmp_path / "notes.wav"
    prompt.write_text("this is not audio")
    args = {"not audio": ["--prompt", str(prompt)], "missing prompt": ["--prompt", str(tmp_path / "nope.wav")],
            "unknown run": []}[case]
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        _dream(root, "nosuchrun" if case == "unknown run" else run_id, out, *args)
    err = capsys.readouterr().err
    expected = {"not audio": "prompt " + str(prompt) + ": not audio", "missing prompt": "nope.wav: no such file",
                "unknown run": "no MLflow run 'nosuchrun'"}[case]
    assert e.value.code == 2 and expected in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_launch_ends_a_run_with_evaluation_and_dreams_and_says_where(tiny_run, tmp_path):
    """launch.py on a ready token corpus: the run records its tokenizer, trains, is scored on the test split
    beside the baselines, dreams (wavs of the asked length and rate, finite, not silent; pictures; the
    acoustic table; dream/* metrics), and says where."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import mlflow

    root, _ = tiny_run
    cmd = [sys.executable, str(Path(__file__).resolve().parents[1] / "launch.py"), "--configs", "defaults", "audio",
           "tiny", "--data_dir", str(root / "data"), "--mlflow_dir", str(root / "mlruns"), "--codebook_size", str(K),
           "--n_steps", "6", "--batch_size", "2", "--batch_length", "8", "--n_env_steps", "200", "--log_interval", "3",
           "--eval_interval", "1000", "--save_interval", "6", "--generator_workers_eval", "0", "--dream_samples", "2"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("MLFLOW_RUN_ID", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "recorded as artifact tokenizer/vqvae.pt" in out and "real-time factor" in out
    assert "| spectral_entropy |" in out and "LSD dB @0.5s" in out
    assert "| harmonicity |" in out and "| pause_median_s |" in out and "Silent clips" in out  # speech's structure
    last = proc.stdout.strip().splitlines()[-4:]
    assert last[0].startswith("launch: metrics: ") and last[1].startswith("launch: dreams: wavs and PNGs in")
    assert last[2].startswith("launch: listen: open file://") and "mlflow ui --backend-store-uri" in last[3]
    assert "/runs/" in last[3] and "?workflowType=machine_learning" in last[3]  # the run's page, not GenAI's
    assert "interpolation.wav, acoustics.md)" in last[1]  # what was written, nothing missing
    page = Path(last[2].split("file://", 1)[1].split(" ", 1)[0])
    assert page.name == "index.html" and page.is_file()
    evaluation = Path(last[0].split(": ", 2)[2].split(" (")[0])
    assert {"horizons.csv", "horizons.png", "summary.json"} <= {p.name for p in evaluation.iterdir()}
    assert "| model |" in out and "| bigram |" in out  # the per-horizon table beside the baselines
    folder = Path(last[1].split(" in ", 1)[1].split(" (")[0])
    wavs = sorted((folder / "unconditional").glob("*.wav")) + sorted((folder / "warm").glob("*.wav"))
    assert len(wavs) == 3  # tiny: 2 dreams from the initial state, 1 after a warm-up
    for path in wavs:
        wave, sr = _wav(path)
        assert sr == 16000 and len(wave) == 16000 and np.isfinite(wave).all() and np.abs(wave).max() > 1e-3
    completions = sorted(p for p in (folder / "completions").iterdir() if p.is_dir())
    assert len(completions) == 2  # no prompt: two test utterances, beside their true continuation
    wave, sr = _wav(completions[0] / "prompt+dream-01.wav")
    assert len(wave) == 16000 + 16000  # 1 s prompt + 1 s dreamt
    assert (completions[0] / "prompt+true.wav").exists() and completions[0].with_suffix(".png").exists()
    assert {"unconditional.png", "interpolation.png", "interpolation.wav", "acoustics.md", "tokens.npz",
            "acoustics_unconditional.csv", "summary.json"} <= {p.name for p in folder.iterdir()}
    summary = json.loads((folder / "summary.json").read_text())
    assert {"own", "swapped", "other", "real_other", "tokenizer"} == set(summary["completion_distance_by_horizon"])
    assert 0.0 <= summary["silent_fraction"]["unconditional"] <= 1.0 and "prompts" in summary["rhythm"]
    mlflow.set_tracking_uri(tracking_uri({"mlflow_dir": str(root / "mlruns")}))  # the launch's store, whatever ran before
    run = mlflow.get_run(summary["run"])
    assert run.info.status == "FINISHED" and "tokenizer.weights_sha256" in run.data.tags
    for key in ("dream/unconditional/rms/ks_stat", "dream/realtime_factor", "dream/completion/own/lsd_h0.5s",
                "dream/unconditional/silent_fraction", "dream/unconditional/voiced_fraction/rel_diff",
                "test/nll_h1", "test/nll_h15", "test/baseline/bigram/nll_h1"):
        assert key in run.data.metrics


def test_a_resumed_run_keeps_the_tokenizer_it_started_with(tiny_run, tmp_path):
    import mlflow
    import torch

    from pydreamer.runs import SHA_TAG, file_sha256, run_tokenizer
    from tokenizer.vqvae import load_vqvae, weights_sha256

    root, run_id = tiny_run
    layout = DataLayout.of(root / "data")
    conf = load_config(["defaults", "audio", "tiny"], ["--data_dir", str(layout.root), "--mlflow_dir", str(root / "mlruns")])
    torch.manual_seed(1)
    other = tmp_path / "other.pt"
    save_vqvae(other, VQVAE(n_mels=80, channels=16, code_dim=8, codebook_size=K, tokens_per_step=G, time_downsample=4))
    same = tmp_path / "same.pt"  # the same weights saved again (a deterministic retrain): other bytes, same tokenizer
    model, extra = load_vqvae(layout.vqvae)
    save_vqvae(same, model, {**extra, "retrained": "again"})
    assert file_sha256(same) != file_sha256(layout.vqvae) and weights_sha256(same) == weights_sha256(layout.vqvae)
    with start_or_resume_run(conf, run_id) as run:
        assert "already recorded" in record_tokenizer(run, layout.vqvae, layout.token_meta)
        assert "already recorded" in record_tokenizer(run, same, layout.token_meta)
        assert record_tokenizer(run, other, layout.token_meta).startswith("WARNING")
    run = mlflow.get_run(run_id)
    tok = run_tokenizer(run, conf)
    assert tok.where.startswith("run artifact") and weights_sha256(tok.vqvae) == run.data.tags[SHA_TAG]
    assert file_sha256(tok.vqvae) == file_sha256(layout.vqvae) != file_sha256(other)


def test_an_ad_hoc_dream_keeps_the_runs_own_dreams_and_takes_the_runs_config_as_a_resume_left_it(tiny_run, capsys):
    """The issue: `dream --run RUN --prompt me.mp3` merged into the run's dreams/, overwrote its acoustics.md and
    summary.json, and logged a second value of every dream/* metric made with the command's own defaults. The run's
    own dreams (launch.py's, --as_run_dreams) now stay byte for byte with one value per dream/* metric; an ad-hoc
    dream has its folder, artifacts and metric names (dreams/NAME/), the sizes of the run's config as its last
    resume left them (the tag config.resumed), and says how far it has got on stderr in a few lines."""
    import mlflow

    from runtime.tracking import local_artifact_dir

    root, _ = tiny_run
    run_id = make_run(root, root / "data")
    common = ["--run", run_id, "--mlflow_dir", str(root / "mlruns"), "--interp_seconds", "0.4"]
    assert main([*common, "--as_run_dreams"]) == 0
    client = mlflow.MlflowClient()
    artifacts = local_artifact_dir(client.get_run(run_id))
    own = artifacts / "dreams"
    before = {p: p.read_bytes() for p in [*own.rglob("*"), artifacts / "listen.html"] if p.is_file()}
    own_metrics = {k: v for k, v in client.get_run(run_id).data.metrics.items() if k.startswith("dream/")}
    assert "dream/realtime_factor" in own_metrics and json.loads((own / "summary.json").read_text())["settings"][
        "samples"] == 1  # tiny's dream_samples
    client.set_tag(run_id, "config.resumed", json.dumps({"dream_samples": 2}))  # a resume's `--dream_samples 2`
    capsys.readouterr()
    prompt = write_clip(root / "me.wav", seconds=1.5)
    assert main([*common, "--name", "mine", "--prompt", str(prompt)]) == 0
    err = capsys.readouterr().err
    mine = own / "mine"
    summary = json.loads((mine / "summary.json").read_text())
    assert (summary["settings"]["samples"], summary["settings"]["seconds"]) == (2, 1.0)  # the resume's, tiny's
    assert len(list(mine.glob("completions/00-me/prompt+dream-*.wav"))) == 2
    after = {p: p.read_bytes() for p in [*own.rglob("*"), artifacts / "listen.html"]
             if p.is_file() and mine not in p.parents}
    assert after == before  # the run's own dreams and listening page, untouched
    metrics = client.get_run(run_id).data.metrics
    assert {k: v for k, v in metrics.items() if k.startswith("dream/")} == own_metrics
    assert all(len(client.get_metric_history(run_id, k)) == 1 for k in own_metrics)
    assert "dreams/mine/realtime_factor" in metrics and "dreams/mine/unconditional/silent_fraction" in metrics
    assert "dreams/mine/acoustics.md" in [a.path for a in client.list_artifacts(run_id, "dreams/mine")]
    progress = [line for line in err.splitlines() if line.startswith("dream: ") and "%" in line]
    assert 1 <= len(progress) <= 10 and progress[-1].startswith("dream: 100%") and "left" in progress[-1]
    for args, said in ((["--name", "mine"], "already has dreams of that name"),
                       (["--out", str(own)], "is the run's own dreams folder")):
        with pytest.raises(SystemExit) as e:
            main([*common, *args])
        err = capsys.readouterr().err
        assert e.value.code == 2 and said in err and len(err.strip().splitlines()) == 1, err


def test_hifigan_and_perceptual_scores_in_the_tables_and_the_run(tiny_run, tmp_path):
    """`--vocoder hifigan --perceptual`: the same files, a DNSMOS table per group, the tokenizer's intrusive scores,
    and both logged into the run (dream/<group>/dnsmos_ovrl, tokenizer/roundtrip/<metric>)."""
    import mlflow

    from pydreamer.dreams import perceptual
    from tokenizer.vocoder import hifigan_available

    if hifigan_available() or perceptual.notes():
        pytest.skip(hifigan_available() or "; ".join(perceptual.notes()))
    root, run_id = tiny_run
    out = tmp_path / "heard"
    assert _dream(root, run_id, out, "--vocoder", "hifigan", "--dream_perceptual", "--dream_unconditional", "1",
                  "--dream_warm", "0", "--dream_real_clips", "2", "--name", "heard") == 0  # DNSMOS: 1-2 s per clip
    md = (out / "acoustics.md").read_text()
    assert "HiFi-GAN V1 universal" in md and "DNSMOS P.835" in md and "The tokenizer's own loss" in md
    summary = json.loads((out / "summary.json").read_text())
    assert summary["vocoder"].startswith("HiFi-GAN") and summary["perceptual"]["dnsmos"]["real"]["dnsmos_ovrl"] > 1.0
    wave, sr = _wav(sorted(p for p in (out / "completions").iterdir() if p.is_dir())[1] / "prompt+dream-00.wav")
    assert sr == 16000 and len(wave) == 32000 and np.isfinite(wave).all()
    assert (out / "index.html").is_file()
    mlflow.set_tracking_uri(tracking_uri({"mlflow_dir": str(root / "mlruns")}))
    metrics = mlflow.get_run(run_id).data.metrics
    for key in ("dreams/heard/real/dnsmos_ovrl", "dreams/heard/unconditional/dnsmos_ovrl",
                "dreams/heard/tokenizer/roundtrip/stoi"):  # an ad-hoc dream's metrics, under its name
        assert key in metrics, key


def _ends_at(step: int):
    """An end-of-utterance head that is certain from step `step` of what it hears on, and never before it."""
    import torch

    def end_probabilities(self, tokens):
        p = torch.zeros(len(tokens))
        p[step:] = 1.0
        return p
    return end_probabilities


def test_a_dream_ends_at_the_first_step_the_world_model_ends_its_utterance(monkeypatch):
    """dream_lengths reads each dream after its prompt: the step where the end probability is 1 ends it (counted
    from the dream's first step); a model without an end head (the Transformer) never ends a dream."""
    import torch

    from pydreamer.dreams.imagination import dream_lengths
    from pydreamer.models.rssm_world_model import RSSMWorldModel

    conf = load_config(["defaults", "tiny"], ["--context_steps", "16"])
    model = Dreamer(conf, K, G, 1)
    prompt = np.random.default_rng(0).integers(0, K, (6, G))
    dreams = dream_tokens(model, prompt, 10, 3, seed=1)
    p = model.wm.end_probabilities(model.wm.as_tokens(np.concatenate([prompt, dreams[0]])))
    assert p.shape == (16,) and bool(((p >= 0) & (p <= 1)).all())  # the trained head: a probability per step
    monkeypatch.setattr(RSSMWorldModel, "end_probabilities", _ends_at(6 + 3))
    assert dream_lengths(model, prompt, dreams, seed=0).tolist() == [4, 4, 4]
    assert dream_lengths(model, None, dreams, seed=0).tolist() == [10, 10, 10]  # step 9 of 10: no prompt, ends later
    monkeypatch.setattr(RSSMWorldModel, "end_probabilities", _ends_at(100))
    assert dream_lengths(model, prompt, dreams, seed=0).tolist() == [10, 10, 10]
    transformer = Dreamer(load_config(["defaults", "tiny"], ["--world_model", "transformer", "--context_steps", "16"]),
                          K, G, 1)
    assert transformer.wm.end_probabilities(torch.zeros(4, G, dtype=torch.long)) is None
    assert dream_lengths(transformer, prompt, dreams, seed=0).tolist() == [10, 10, 10]


def test_with_end_a_dream_is_silent_after_its_end_and_the_tables_say_how_long_dreams_ran(tiny_run, tmp_path,
                                                                                         monkeypatch):
    """`dream --end`: a dream from nothing that the world model ends after 5 steps is heard for 5 steps then at
    its floor; a completion ends on its first step after the prompt; summary.json and acoustics.md say every
    dream ended and when; `--no-end` leaves dreams whole."""
    from pydreamer.models.rssm_world_model import RSSMWorldModel

    root, run_id = tiny_run
    monkeypatch.setattr(RSSMWorldModel, "end_probabilities", _ends_at(4))
    out = tmp_path / "ended"
    assert _dream(root, run_id, out, "--end", "--warm", "0", "--no_log") == 0  # the short names of before work
    summary = json.loads((out / "summary.json").read_text())
    steps_per_second = 25  # tiny: 100 frames/s, 4 frames per step
    assert summary["ends"]["unconditional"] == {"ended_fraction": 1.0, "median_s": pytest.approx(5 / steps_per_second)}
    assert summary["ends"]["completion"] == {"ended_fraction": 1.0, "median_s": pytest.approx(1 / steps_per_second)}
    assert "unconditional 100% ended, median 0.20 s" in (out / "acoustics.md").read_text()
    wave, sr = _wav(out / "unconditional" / "dream-00.wav")
    cut = int(0.3 * sr)  # past the end and the vocoder's overlap
    assert np.sqrt(np.mean(wave[cut:] ** 2)) < 0.2 * np.sqrt(np.mean(wave[: int(0.2 * sr)] ** 2))
    whole = tmp_path / "whole"
    assert _dream(root, run_id, whole, "--no-end", "--warm", "0", "--test_prompts", "0", "--no_log") == 0
    assert json.loads((whole / "summary.json").read_text())["ends"]["unconditional"]["ended_fraction"] == 0.0


@pytest.mark.parametrize("world_model", ["maskgit", "mel_rssm"])
def test_the_masked_decoder_and_the_log_mel_model_dream_through_the_command(tiny_run, tmp_path, world_model):
    """Dreams from nothing and completions of a test prompt, block by block (maskgit) or straight to log-mel with
    no VQ-VAE in the chain (mel_rssm): wavs of the asked length, finite and not silent, and the tables."""
    root, _ = tiny_run
    run_id = make_run(root, root / "data", world_model)
    out = tmp_path / world_model
    assert _dream(root, run_id, out, "--no_log") == 0
    for path in sorted((out / "unconditional").glob("*.wav")):
        wave, sr = _wav(path)
        assert sr == 16000 and len(wave) == 16000 and np.isfinite(wave).all() and np.abs(wave).max() > 1e-4
    wave, _ = _wav(sorted((out / "completions").glob("*/prompt+dream-01.wav"))[0])
    assert len(wave) == 32000 and np.isfinite(wave).all()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_model"] == world_model
    tokens = np.load(out / "tokens.npz")
    kind = np.floating if world_model == "mel_rssm" else np.integer  # a log-mel model dreams steps of frames
    assert np.issubdtype(tokens["unconditional"].dtype, kind) and len(tokens["unconditional"]) == 2


def _labelled_train_mels(data) -> None:
    """Train-split log-mels whose clips carry a language: what the alignment classifier is fitted on."""
    conf = load_config(["defaults", "audio", "tiny"])
    with ShardWriter(DataLayout.of(data).mels("train")) as w:
        for i in range(12):
            f = log_mel_features(speechlike(1.5, seed=10 + i, pitch=(110.0, 220.0)[i % 2]), MelSettings.from_conf(conf),
                                 conf["vad_db"])
            w.add(per_step={"mel": f["mel"].astype("float16"), "voice": f["voice"]},
                  per_utterance={"utterance_id": f"tr{i}", "speaker": "s", "source": "t", "mean": f["mean"],
                                 "std": f["std"], "label_language": ("de", "en")[i % 2]})


def test_conditioned_dreams_a_row_per_value_scored_by_a_classifier_and_unknown_values_exit_2(tiny_run, tmp_path,
                                                                                             capsys):
    root, plain_run = tiny_run
    _labelled_train_mels(root / "data")
    run_id = make_run(root, root / "data", conditions=[("language", ["de", "en"])])
    out = tmp_path / "grid"
    assert _dream(root, run_id, out, "--no_log", "--grid_dreams", "2") == 0  # default: a row per value of each label
    assert len(list((out / "conditioned" / "language-de").glob("*.wav"))) == 2
    assert (out / "conditioned_language.png").is_file() and "conditioned_language.png" in (out / "index.html").read_text()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["conditioned"] == {"language=de": 2, "language=en": 2}
    score = summary["alignment"]["language"]
    assert score["n"] == 4 and score["chance"] == 0.5 and 0.0 <= score["acc"] <= 1.0
    assert 0.0 <= summary["metrics"]["dream/condition/language/real_acc"] <= 1.0
    assert 0.0 <= summary["metrics"]["dream/condition/language/tokenized_acc"] <= 1.0  # real clips through the tokenizer
    assert "Conditional alignment" in (out / "acoustics.md").read_text()
    assert summary["metrics"]["dream/condition/guidance"] == 1.0
    fixed = tmp_path / "es"
    assert _dream(root, run_id, fixed, "--no_log", "--condition", "language=en", "--dream_guidance", "3") == 0
    summary = json.loads((fixed / "summary.json").read_text())
    assert summary["conditioned"] == {} and set(summary["alignment"]["language"]["per_value"]) == {"en"}
    assert summary["metrics"]["dream/condition/guidance"] == 3.0
    assert "guided at scale 3 (classifier-free guidance" in (fixed / "acoustics.md").read_text()
    assert any("guided at scale 3" in note for note in summary["notes"])
    capsys.readouterr()  # what the dreams above said (their progress on stderr)
    for bad_run, option, message in ((run_id, "language=fr", "unknown language 'fr'; the model knows de, en"),
                                     (run_id, "voice=m1", "not conditioned on 'voice'; its labels: language"),
                                     (plain_run, "language=de", "trained without conditioning"),
                                     (run_id, "language=de --dream_guidance -2", "--dream_guidance must be 0 or more")):
        with pytest.raises(SystemExit) as e:
            _dream(root, bad_run, tmp_path / "bad", "--condition", *option.split())
        err = capsys.readouterr().err
        assert e.value.code == 2 and message in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "bad").exists()


# ---- short clips, fixed windows, what is missing and why ---------------------------------------------------

def test_a_corpus_of_short_clips_gets_shorter_prompts_and_says_so():
    from pydreamer.dreams.coverage import fit_to_clips

    fps, step = 100.0, 4
    long = [250, 300, 90]  # 2.5 s and 3 s clips: 1 s prompts and a first 0.5 s window, as asked
    assert fit_to_clips(long, 1.0, fps, step) == (1.0, 154, "")
    digits = [50, 60, 64, 70, 80]  # spoken digits, 0.5 to 0.8 s: none holds 1 s + 0.5 s
    prompt_s, min_frames, note = fit_to_clips(digits, 1.0, fps, step)
    assert prompt_s == 0.32 and min_frames == 32 + 10 + 4  # half the median (whole steps) + a 0.1 s window + a step
    assert note.startswith("short clips: 0 of the test split's 5 utterances last 1.54 s (median 0.64 s)")
    assert fit_to_clips(digits, 0.2, fps, step)[0] == 0.2  # a shorter prompt asked for stays as asked
    assert fit_to_clips([], 1.0, fps, step) == (1.0, 154, "")  # no clips: nothing to fit


def test_completion_distances_are_named_by_fixed_windows_up_to_the_dreams_length():
    from pydreamer.dreams.report import completion_distances, dream_metrics, horizon_summary

    sr, rng = 16000, np.random.default_rng(0)
    truth = rng.normal(0, 0.1, int(2.7 * sr))
    dreams = [rng.normal(0, 0.1, int(3.0 * sr)) for _ in range(2)]
    assert completion_distances(truth, dreams, sr)["end_s"].tolist() == [0.1, 0.25, 0.5, 1.0, 2.0, 4.0]
    assert completion_distances(truth, dreams, sr, limit_s=1.5)["end_s"].tolist() == [0.1, 0.25, 0.5, 1.0]
    short = completion_distances(truth[:int(0.3 * sr)], dreams, sr, limit_s=3.0)  # a digit's continuation
    assert short["end_s"].tolist() == [0.1, 0.25, 0.5] and np.isfinite(short["lsd"]).all()
    per_prompt = [{"own": completion_distances(t, dreams, sr, 3.0), "swapped": completion_distances(t, dreams, sr, 3.0)}
                  for t in (truth[:int(0.3 * sr)], truth[:int(0.6 * sr)], truth[:int(1.2 * sr)])]
    keys = sorted(k for k in dream_metrics({}, horizon_summary(per_prompt), 1.0) if k.startswith("dream/completion/own"))
    assert keys == [f"dream/completion/own/{m}_h{e}s" for m in ("lsd", "sc") for e in ("0.1", "0.25", "0.5", "1")]


def test_whats_not_measured_is_said_with_its_reason():
    import argparse

    from pydreamer.dreams.coverage import not_measured
    from pydreamer.dreams.results import DreamResults

    args = argparse.Namespace(real_clips=8, split="test", prompt=[], run="r", warmup_seconds=0.4, seconds=1.0)
    r = DreamResults(args, "rssm", 5, 16000, 100.0, "Griffin-Lim", G)
    r.not_measured = not_measured(r, args, pool_size=40, min_seconds=1.54)
    assert r.not_measured == {
        "acoustic table": "none of the test split's 40 utterances lasts 1.54 s",
        "completion distances": "they need 2 or more test-split prompts with a true continuation, had 0",
        "interpolation": "it needs two prompts (--prompt A --prompt2 B, or two test utterances)"}
    r.silent = {"real": 1.0}
    assert not_measured(r, args, 40, 1.54)["acoustic table"] == "every real clip is silent"
    assert not_measured(r, argparse.Namespace(**{**vars(args), "real_clips": 0}), 40, 1.54)["acoustic table"] \
        == "--real_clips 0"
    md = r._markdown(Path("unused"), [])
    assert "No acoustic table: none of the test split's 40 utterances lasts 1.54 s." in md
    assert "No completion distances: they need 2 or more" in md and "No interpolation: it needs two prompts" in md


def test_launch_names_only_the_dream_files_written(tmp_path, capsys):
    """A corpus whose clips gave no interpolation and no tables: the closing line names what is there and why
    the rest is not."""
    import launch

    dreams = tmp_path / "dreams"
    (dreams / "unconditional").mkdir(parents=True)
    (dreams / "acoustics.md").write_text("# Dreams\n")
    (dreams / "summary.json").write_text(json.dumps({"not_measured": {"interpolation": "it needs two prompts"}}))
    conf = load_config(["defaults", "tiny"], ["--mlflow_dir", str(tmp_path / "mlruns")])
    launch.print_summary(conf, ["defaults"], "r1", tmp_path / "replay", launch.Ending("FAILED", 1, None, dreams))
    line = [x for x in capsys.readouterr().out.splitlines() if x.startswith("launch: dreams:")][0]
    assert f"in {dreams} (unconditional/, acoustics.md; no interpolation: it needs two prompts)" in line
    assert "interpolation.wav" not in line and "completions/" not in line


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("short")
    return root, make_run(root, make_dream_data(root, seconds=0.7))


def test_short_clips_get_an_acoustic_table_completion_distances_and_a_listening_page(short_run, tmp_path, capsys):
    """Spoken digits and single words (every test clip under a second): the dreams are still measured, on windows
    that fit, and the run's artifacts get listen.html at their root."""
    import mlflow

    root, run_id = short_run
    assert _dream(root, run_id, tmp_path / "out", "--as_run_dreams") == 0  # the run's own dreams, as launch.py's
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert any(n.startswith("short clips: 0 of the test split's 3 utterances") for n in summary["notes"])
    assert "| spectral_entropy |" in out and "LSD dB @0.1s" in out and summary["not_measured"] == {}
    assert (tmp_path / "out" / "interpolation.wav").is_file()
    run = mlflow.get_run(run_id)
    assert "dream/completion/own/lsd_h0.1s" in run.data.metrics and "dream/tokenizer/rms/ks_stat" in run.data.metrics
    assert "listen.html" in [a.path for a in mlflow.MlflowClient().list_artifacts(run_id)]
    page = (Path(mlflow.get_run(run_id).info.artifact_uri.removeprefix("file://")) / "listen.html").read_text()
    assert 'src="dreams/completions/00-' in page and "Other clips" not in page
    assert f"/runs/{run_id}?workflowType=machine_learning" in out.splitlines()[-1]
