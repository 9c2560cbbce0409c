"""Stage 2, train: fit the VQ-VAE on random crops of the train split's log-mels.

Crops come from a small pool of shards that is refreshed as training goes, so memory is
bounded whatever the corpus size. Metrics go to the active MLflow run as `tokenizer/*`.

Under torchrun (`torchrun --nproc_per_node N -m tokenizer train ...`, see runtime/distributed.py)
every rank draws its own crops (the sampler is seeded per rank) and DistributedDataParallel
averages the gradients, so the effective batch is N x vq_batch_size crops. The quantizer keeps
its EMA codebook, usage counts and dead-code restarts identical on every rank itself
(VectorQuantizer.sync_ranks: statistics summed over the ranks, restarts picked by rank 0): DDP's
broadcast_buffers would copy rank 0's buffers at the start of each forward but not the EMA
codebook (a parameter without gradient), and would drop the other ranks' statistics, so it is
turned off. Rank 0 alone logs, validates and writes the checkpoint.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Iterator, Mapping

import mlflow
import numpy as np
import torch
from tqdm import tqdm

from runtime import distributed
from runtime.device import resolve_device
from runtime.distributed import SINGLE, Ranks, weights_digest
from tokenizer.examples import log_examples
from tokenizer.features import mel_norm_kind, pooled_stats, renormalize, signal_mel_bins
from tokenizer.layout import DataLayout
from tokenizer.shards import iter_utterances, shard_paths
from tokenizer.vqvae import VQVAE, save_vqvae


class CropSampler:
    """Batches of random [segment, n_mels] crops, utterances weighted by length.

    With `pack`, an utterance shorter than the crop is followed by others, back to back,
    until the crop is full: on a corpus of short clips (spoken digits) padded crops were
    mostly padding, so the encoder learned padding and the codebook collapsed onto it.
    Without `pack`, a short utterance is padded with its own quietest value (silence).
    Holds at most `pool_shards` shards; one is swapped for another every `refresh` batches.
    With `norm` (corpus mean, std in dB) the crops are re-z-scored with it (mel_norm corpus).
    """

    def __init__(self, folder: Path, segment: int, batch_size: int, seed: int, pool_shards: int = 6, refresh: int = 200,
                 pack: bool = True, norm: tuple[float, float] | None = None):
        self.paths = shard_paths(folder)
        if not self.paths:
            raise FileNotFoundError(f"no log-mel shards in {folder}: run `python -m tokenizer prepare` first")
        self.segment, self.batch_size, self.refresh, self.pack = segment, batch_size, refresh, pack
        self.norm = norm
        self.rng = np.random.default_rng(seed)
        order = self.rng.permutation(len(self.paths))
        self.pool = [self._load(self.paths[i]) for i in order[:pool_shards]]
        self.batches = 0

    def _load(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        with np.load(path, allow_pickle=False) as z:
            if self.norm is None:
                return z["mel"], z["offsets"]
            row = np.repeat(np.arange(len(z["offsets"]) - 1), np.diff(z["offsets"]))  # each frame's utterance
            return renormalize(z["mel"], z["mean"][row, None], z["std"][row, None], self.norm), z["offsets"]

    def __iter__(self) -> Iterator[torch.Tensor]:
        return self

    def _utterance(self) -> np.ndarray:
        mel, offsets = self.pool[self.rng.integers(len(self.pool))]
        lengths = np.diff(offsets)
        i = self.rng.choice(len(lengths), p=lengths / lengths.sum())
        return mel[offsets[i]:offsets[i + 1]]

    def _crop(self) -> np.ndarray:
        parts, room = [], self.segment
        while room > 0:
            utt = self._utterance()
            if len(utt) >= room:
                start = self.rng.integers(len(utt) - room + 1)
                parts.append(utt[start:start + room])
                break
            if not self.pack:  # pad a short utterance with its own quietest value (silence)
                parts += [utt, np.full((room - len(utt), utt.shape[1]), utt.min(), utt.dtype)]
                break
            parts.append(utt)
            room -= len(utt)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def __next__(self) -> torch.Tensor:
        self.batches += 1
        if len(self.paths) > len(self.pool) and self.batches % self.refresh == 0:
            self.pool[self.rng.integers(len(self.pool))] = self._load(self.paths[self.rng.integers(len(self.paths))])
        return torch.from_numpy(np.stack([self._crop() for _ in range(self.batch_size)]).astype(np.float32))


def _val_crops(folder: Path, segment: int, max_crops: int = 64, norm: tuple[float, float] | None = None
               ) -> torch.Tensor | None:
    """Validation crops cut from the split's utterances laid back to back (short clips give crops too)."""
    parts, frames = [], 0
    for utt in iter_utterances(folder):
        mel = utt["mel"] if norm is None else renormalize(utt["mel"], utt["mean"], utt["std"], norm)
        parts.append(mel.astype(np.float32))
        frames += len(parts[-1])
        if frames >= segment * max_crops:
            break
    n = frames // segment
    if n == 0:
        return None
    return torch.from_numpy(np.concatenate(parts)[: n * segment].reshape(n, segment, -1))


def _train_utterance_stats(layout: DataLayout) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each train utterance's stored frame count, mean and std (dB); no log-mel is read."""
    lengths, means, stds = [], [], []
    for path in shard_paths(layout.mels("train")):
        with np.load(path, allow_pickle=False) as z:
            lengths.append(np.diff(z["offsets"]))
            means.append(z["mean"])
            stds.append(z["std"])
    if not lengths:
        raise FileNotFoundError(f"no log-mel shards in {layout.mels('train')}: run `python -m tokenizer prepare` first")
    return np.concatenate(lengths), np.concatenate(means), np.concatenate(stds)


def train_norm_stats(layout: DataLayout) -> tuple[float, float]:
    """The train split's log-mel mean and std (dB), for mel_norm corpus: pooled from each utterance's stored
    frame count, mean and std; val and test never enter them. Kept in the checkpoint."""
    return pooled_stats(*_train_utterance_stats(layout))


def magnitude_scale(layout: DataLayout, norm: tuple[float, float] | None) -> float:
    """ln-magnitude per unit of the tokenizer's z-scored input: its dB std (the corpus' with `norm`, else the
    typical utterance's) times ln(10)/20 (dB of power -> ln of magnitude)."""
    std = norm[1] if norm is not None else float(np.median(_train_utterance_stats(layout)[2]))
    return float(std) * math.log(10.0) / 20.0


def _lr_at(step: int, total: int, base: float, warmup: int = 200) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def _log(metrics: Mapping[str, float], step: int) -> None:
    if mlflow.active_run():
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)


def _no_buffer_sync() -> dict:
    """DDP's argument for "copy the buffers at the start only": `forward_sync_buffers=False` where this
    torch has it (it deprecates `broadcast_buffers`), else `broadcast_buffers=False`."""
    import inspect

    params = inspect.signature(torch.nn.parallel.DistributedDataParallel.__init__).parameters
    return {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}


def _rank_seed(seed: int, ranks: Ranks) -> int:
    """Rank 0 (and a single process) draws as before; every other rank its own stream."""
    return int(seed) if not ranks.rank else int(seed) * 100_003 + ranks.rank


def train(conf: Mapping[str, Any], layout: DataLayout, ranks: Ranks = SINGLE,
          device: torch.device | None = None) -> Path:
    """Train and save `<data_dir>/tokenizer/vqvae.pt`; returns its path.

    With several `ranks` (a process group already joined, `device` the rank's own) every rank
    must call this; rank 0 alone validates, logs and writes."""
    device = resolve_device(conf["device"]) if device is None else device
    main = ranks.is_main
    torch.manual_seed(conf["seed"])
    seg = conf["vq_segment_frames"]
    if seg % conf["time_downsample"]:
        raise ValueError(f"vq_segment_frames ({seg}) must be a multiple of time_downsample ({conf['time_downsample']})")
    norm = train_norm_stats(layout) if mel_norm_kind(conf) == "corpus" else None
    sampler = CropSampler(layout.mels("train"), seg, conf["vq_batch_size"], _rank_seed(conf["seed"], ranks),
                          pack=conf["vq_pack_crops"], norm=norm)
    val = _val_crops(layout.mels("val"), seg, norm=norm) if main else None
    band = signal_mel_bins(json.loads(layout.manifest.read_text()), conf["n_mels"]) if layout.manifest.is_file() else 0
    scale = magnitude_scale(layout, norm) if conf.get("vq_magnitude_weight", 0.0) > 0 else 1.0  # unused without the term
    net = VQVAE.from_conf(conf, band_bins=band, norm_stats=norm, magnitude_scale=scale).to(device)
    model: torch.nn.Module = net
    if ranks.distributed:
        torch.manual_seed(_rank_seed(conf["seed"], ranks))  # own draws (codebook restarts pick on rank 0 only)
        net.quantizer.sync_ranks = True
        # DDP copies rank 0's weights and buffers to every rank here; later the quantizer keeps its own in step
        model = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None, **_no_buffer_sync())
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=conf["vq_lr"])
    steps = conf["vq_steps"]
    restarts_before, t0 = 0, time.time()
    bar = tqdm(range(steps), desc="train vq-vae", unit="step", mininterval=2.0, disable=not main)
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, steps, conf["vq_lr"])
        batch = next(sampler).to(device)
        model.train()
        _, tokens, losses = model(batch)
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss_value = float(losses["loss"].detach())
        bad = not math.isfinite(loss_value)
        if ranks.distributed and distributed.agree(int(bad), device):  # every rank stops at the same step
            loss_value = loss_value if bad else float("nan")
            bad = True
        if bad:
            raise FloatingPointError(f"VQ-VAE loss became {loss_value} at step {step}; lower vq_lr")
        last = step == steps - 1
        if step % conf["vq_log_interval"] == 0 or last:
            counts = torch.bincount(tokens.reshape(-1), minlength=conf["codebook_size"]).float()
            p = counts / counts.sum()
            metrics = {f"tokenizer/train_{k}": float(v.detach()) for k, v in losses.items()}
            if ranks.distributed:  # the losses of every rank's batch
                metrics = distributed.mean_over_ranks(metrics, device)
            metrics["tokenizer/train_batch_perplexity"] = float(torch.exp(-(p[p > 0] * p[p > 0].log()).sum()))
            metrics["tokenizer/restarted_codes"] = net.quantizer.restarts - restarts_before
            metrics["tokenizer/steps_per_sec"] = (step + 1) / (time.time() - t0)
            restarts_before = net.quantizer.restarts
            bar.set_postfix(loss=f"{loss_value:.3f}", ppl=f"{metrics['tokenizer/train_batch_perplexity']:.0f}")
            _log(metrics, step)
        if main and val is not None and (step % conf["vq_eval_interval"] == 0 or last):
            _log({"tokenizer/val_reconstruction": validation_loss(net, val, device)}, step)
    _write_digest(net, ranks, steps)
    if not main:
        return layout.vqvae
    if conf.get("vq_postfilter", False):
        crops = _val_crops(layout.mels("train"), seg, max_crops=256, norm=norm)
        if crops is not None:
            net.fit_postfilter(crops.to(device))
    save_vqvae(layout.vqvae, net, {"step": steps, "features": {k: conf[k] for k in
               ("sample_rate", "n_fft", "win_length", "hop_length", "n_mels", "top_db")}})
    if mlflow.active_run():
        mlflow.log_artifact(str(layout.vqvae), "tokenizer")
        log_examples(net, conf, layout, "val", device, artifact_dir="tokenizer/train_examples")
    return layout.vqvae


def _write_digest(model: torch.nn.Module, ranks: Ranks, steps: int) -> None:
    """Tests: with PYDREAMER_WEIGHTS_DIGEST=DIR every rank writes DIR/vqvae_rank<r>.json, a hash of its
    weights and buffers (the EMA codebook statistics too), so a test can check that the ranks agree."""
    folder = os.environ.get("PYDREAMER_WEIGHTS_DIGEST")
    if not folder:
        return
    Path(folder).mkdir(parents=True, exist_ok=True)
    (Path(folder) / f"vqvae_rank{ranks.rank}.json").write_text(json.dumps(
        {"rank": ranks.rank, "world_size": ranks.world_size, "step": steps,
         "sha256": weights_digest(model.state_dict())}))


@torch.no_grad()
def validation_loss(model: VQVAE, crops: torch.Tensor, device: torch.device) -> float:
    model.eval()
    recon, _, losses = model(crops.to(device))
    return float(losses["reconstruction"])

