"""The tokenizer's VQ-VAE stage under torchrun: 2 gloo ranks train one model, rank 0 alone writes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch

from audio_fixtures import write_clip
from runtime.distributed import Ranks, weights_digest
from tokenizer.__main__ import main
from tokenizer.layout import DataLayout
from tokenizer.train import CropSampler, _rank_seed
from tokenizer.vqvae import load_vqvae

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def prepared(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    corpus = tmp_path / "corpus"
    for s in range(6):
        for k in range(2):
            write_clip(corpus / f"spk{s}" / f"c{k}.wav", seconds=1.5, seed=10 * s + k)
    data = tmp_path / "data"
    assert main(["prepare", "--configs", "defaults", "audio", "tiny", "--data_dir", str(data), "--source", "folder",
                 "--data_root", str(corpus), "--mlflow_dir", str(tmp_path / "mlruns")]) == 0
    return data


def test_each_rank_draws_its_own_crops(prepared):
    layout = DataLayout.of(prepared)
    assert _rank_seed(7, Ranks()) == 7  # one process draws as before
    draws = [next(CropSampler(layout.mels("train"), 16, 4, _rank_seed(7, Ranks(r, 2, r, 2)))) for r in (0, 1)]
    assert not torch.equal(draws[0], draws[1])


@pytest.mark.slow
def test_two_gloo_ranks_train_one_vqvae(prepared, tmp_path):
    digests, mlruns = tmp_path / "digests", tmp_path / "mlruns"
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_RUN_ID", "MLFLOW_TRACKING_URI")}
    env.update(PYDREAMER_WEIGHTS_DIGEST=str(digests), OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "tokenizer", "train", "--configs", "defaults", "audio", "tiny", "--vq_steps", "20",
           "--vq_log_interval", "10", "--vq_eval_interval", "10", "--griffin_lim_iters", "2",
           "--data_dir", str(prepared), "--mlflow_dir", str(mlruns)]
    t0 = time.time()
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    print(f"2-rank VQ-VAE training took {time.time() - t0:.1f} s")
    assert proc.stdout.count("train: saved") == 1 and "2 ranks" in proc.stdout  # rank 0 alone says so

    # the ranks hold the same weights and the same EMA codebook statistics (buffers are in the digest)
    ranks = [json.loads((digests / f"vqvae_rank{r}.json").read_text()) for r in (0, 1)]
    assert [d["step"] for d in ranks] == [20, 20] and ranks[0]["sha256"] == ranks[1]["sha256"]

    # rank 0's checkpoint holds those weights and loads; the settings record is written
    layout = DataLayout.of(prepared)
    assert sorted(p.name for p in layout.vqvae.parent.glob("*.pt")) == ["vqvae.pt"]
    model, extra = load_vqvae(layout.vqvae)
    assert extra["step"] == 20 and weights_digest(model.state_dict()) == ranks[0]["sha256"]
    assert "vq_steps" in json.loads(layout.settings("train").read_text())

    # one MLflow run (prepare's, continued by rank 0), with the training curve of the 2 ranks
    mlflow.set_tracking_uri(f"sqlite:///{mlruns.resolve() / 'mlflow.db'}")
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert len(runs) == 1 and runs[0].data.tags["tokenizer.train_ranks"] == "2"
    assert "tokenizer/train_loss" in runs[0].data.metrics
