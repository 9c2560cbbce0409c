"""Stage 4, evaluate: how faithful the tokens are on the held-out test split.

Writes `<data_dir>/tokenizer/metrics.json` (mse, psnr, pearson on the z-scored log-mel;
lsd_db with the z-score undone, and lsd_db_band over the mel bins that carry signal; codebook usage, perplexity, dead codes, bits per second),
example spectrograms and audio, and logs them to the active MLflow run as `tokenizer/*`.
"""
from __future__ import annotations

import json
from typing import Any, Mapping

import mlflow

from runtime.device import resolve_device
from runtime.files import atomic_write_text
from tokenizer.codec import tokenize
from tokenizer.examples import log_examples
from tokenizer.features import MelSettings, signal_mel_bins
from tokenizer.layout import DataLayout
from tokenizer.metrics import ReconstructionMeter
from tokenizer.shards import iter_utterances, shard_paths
from tokenizer.vqvae import load_vqvae


def evaluate(conf: Mapping[str, Any], layout: DataLayout, split: str = "test") -> dict[str, float]:
    """The tokenizer's metrics on a held-out split (written to `metrics.json`), with examples to listen to."""
    device = resolve_device(conf["device"])
    model, _ = load_vqvae(layout.vqvae, device)
    folder = layout.mels(split)
    if not shard_paths(folder):
        raise FileNotFoundError(f"no log-mel shards in {folder}: the {split} split is empty (see {layout.manifest})")
    band = signal_mel_bins(json.loads(layout.manifest.read_text()), model.n_mels) if layout.manifest.is_file() else model.n_mels
    meter = ReconstructionMeter(model.quantizer.codebook_size, band)
    n = 0
    for utt, tokens, recon in tokenize(model, iter_utterances(folder), device, conf["encode_batch_frames"], reconstruct=True):
        meter.add(utt["mel"], recon, utt["mean"], utt["std"], tokens)
        n += 1
    steps_per_second = MelSettings.from_conf(conf).frames_per_second / model.ds
    metrics = meter.result(steps_per_second, model.G)
    metrics["utterances"] = n
    metrics["split"] = split
    metrics["signal_mel_bins"] = band
    atomic_write_text(layout.metrics, json.dumps(metrics, indent=2))
    log_examples(model, conf, layout, split, device, out_dir=layout.examples)
    if mlflow.active_run():
        mlflow.log_metrics({f"tokenizer/{k}": float(v) for k, v in metrics.items() if isinstance(v, (int, float))})
        mlflow.log_artifact(str(layout.metrics), "tokenizer")
    return metrics
