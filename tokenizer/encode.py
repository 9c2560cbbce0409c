"""Stage 3, encode: every split's log-mels -> token shards for the environment.

Per utterance: tokens [T, G] int16, the voice activity of each step (the environment's
reward), speaker, utterance id and source. Utterances shorter than `min_steps` are
dropped and counted: too short to learn any dynamics from.
"""
from __future__ import annotations

import multiprocessing as mp
import shutil
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import numpy as np
import torch
from tqdm import tqdm

from runtime.device import resolve_device
from tokenizer.features import MelSettings
from tokenizer.layout import DataLayout
from tokenizer.shards import ShardWriter, read_shard, shard_paths
from tokenizer.split import SPLITS
from tokenizer.tokens import write_token_meta
from tokenizer.vqvae import VQVAE, load_vqvae


def _batches(utterances: Iterable[dict], max_frames: int) -> Iterator[list[dict]]:
    """Group utterances (sorted by length within a window) so padding wastes little compute."""
    window: list[dict] = []

    def flush() -> Iterator[list[dict]]:
        window.sort(key=lambda u: len(u["mel"]))
        batch: list[dict] = []
        for u in window:
            if batch and (len(batch) + 1) * len(u["mel"]) > max_frames:
                yield batch
                batch = []
            batch.append(u)
        if batch:
            yield batch
        window.clear()

    for u in utterances:
        window.append(u)
        if len(window) >= 256:
            yield from flush()
    yield from flush()


@torch.no_grad()
def tokenize(model: VQVAE, utterances: Iterable[dict], device: torch.device, max_frames: int = 20000,
             reconstruct: bool = False) -> Iterator[tuple[dict, np.ndarray, np.ndarray | None]]:
    """(utterance, tokens [ceil(F / ds), G], reconstructed z-scored mel [F, n_mels] or None), batched.

    The same clip gets the same tokens whatever batch it lands in: frames are edge-padded
    (a clip's last step repeats its last frame, as alone) and masked past each clip's end.
    """
    model.eval()
    for batch in _batches(utterances, max_frames):
        longest = max(len(u["mel"]) for u in batch)
        mel = np.stack([np.pad(u["mel"].astype(np.float32), ((0, longest - len(u["mel"])), (0, 0)), mode="edge")
                        for u in batch])
        lengths = torch.tensor([len(u["mel"]) for u in batch], device=device)
        tokens = model.encode(torch.from_numpy(mel).to(device), lengths)  # padding never reaches a clip's tokens
        recon = model.decode(tokens, lengths).float().cpu().numpy() if reconstruct else None
        tokens = tokens.cpu().numpy()
        for i, u in enumerate(batch):
            n = len(u["mel"])
            steps = -(-n // model.ds)
            yield u, tokens[i, :steps], (recon[i, :n] if recon is not None else None)


def short_drop_warnings(kept: Mapping[str, int], dropped: Mapping[str, int], min_steps: int, max_fraction: float,
                        steps_per_second: float) -> list[str]:
    """One line per split where `min_steps` dropped more than `max_fraction` of the utterances."""
    lines = []
    for split, n_dropped in dropped.items():
        total = n_dropped + kept.get(split, 0)
        if total and n_dropped / total > max_fraction:
            lines.append(f"WARNING: min_steps={min_steps} ({min_steps / steps_per_second:.2f} s) dropped {n_dropped} of {total} "
                         f"{split} utterances ({n_dropped / total:.0%} > max_short_drop_fraction {max_fraction:g})"
                         + (f", leaving no {split} utterance" if n_dropped == total else "")
                         + "; for a corpus of short clips lower it (--min_steps 5, or --configs ... short)")
    return lines


def step_voice(voice: np.ndarray, steps: int, ds: int) -> np.ndarray:
    """Per-step voice activity: the fraction of a step's frames that are voiced."""
    padded = np.pad(voice.astype(np.float32), (0, steps * ds - len(voice)), mode="edge")
    return padded.reshape(steps, ds).mean(axis=1)


_WORKER: dict[str, Any] = {}


def _init_worker(vqvae_path: str, device: str) -> None:
    torch.set_num_threads(1)  # one thread per process: on a busy 2-core machine this beats intra-op threads
    _WORKER["device"] = resolve_device(device)
    _WORKER["model"], _ = load_vqvae(vqvae_path, _WORKER["device"])


def encode_shard(mel_shard: Path, out_folder: Path, model: VQVAE, device: torch.device, conf: Mapping[str, Any]) -> dict:
    """Tokens for one log-mel shard, written as `<out_folder>/<mel shard name>-00000.npz`, ...

    Token shards mirror log-mel shards one to one, so the output does not depend on how
    many processes encode.
    """
    stats: dict[str, Any] = {"kept": 0, "dropped": 0, "seconds": 0.0, "means": [], "stds": []}
    fps = MelSettings.from_conf(conf).frames_per_second
    with ShardWriter(out_folder, max(1, conf["shard_frames"] // model.ds), prefix=mel_shard.stem) as writer:
        for utt, tokens, _ in tokenize(model, read_shard(mel_shard), device, conf["encode_batch_frames"]):
            stats["seconds"] += len(utt["mel"]) / fps
            if len(tokens) < conf["min_steps"]:
                stats["dropped"] += 1
                continue
            writer.add(
                per_step={"tokens": tokens.astype(np.int16), "voice": step_voice(utt["voice"], len(tokens), model.ds)},
                per_utterance={k: utt[k] for k in ("utterance_id", "speaker", "source")},
            )
            stats["kept"] += 1
            stats["means"].append(utt["mean"])
            stats["stds"].append(utt["std"])
    return stats


def _encode_job(job: tuple[str, Path, Path, dict]) -> tuple[str, dict]:
    split, mel_shard, out_folder, conf = job
    return split, encode_shard(mel_shard, out_folder, _WORKER["model"], _WORKER["device"], conf)


def encode(conf: Mapping[str, Any], layout: DataLayout) -> dict:
    """Write `<data_dir>/tokens/{train,val,test}/` and `tokens/meta.json`; returns the meta."""
    device = resolve_device(conf["device"])
    model, _ = load_vqvae(layout.vqvae, device)
    settings = MelSettings.from_conf(conf)
    steps_per_second = settings.frames_per_second / model.ds
    meta: dict[str, Any] = {
        "codebook_size": model.quantizer.codebook_size, "tokens_per_step": model.G, "time_downsample": model.ds,
        "steps_per_second": steps_per_second, "frames_per_second": settings.frames_per_second,
        "bits_per_second": steps_per_second * model.G * float(np.log2(model.quantizer.codebook_size)),
        "min_steps": conf["min_steps"], "features": {k: conf[k] for k in MelSettings.__dataclass_fields__},
        "splits": {s: 0 for s in SPLITS}, "dropped_short": {s: 0 for s in SPLITS},
    }
    jobs = []
    for split in SPLITS:
        shutil.rmtree(layout.tokens(split), ignore_errors=True)
        layout.tokens(split).mkdir(parents=True)
        jobs += [(split, p, layout.tokens(split), dict(conf)) for p in shard_paths(layout.mels(split))]
    t0 = time.time()
    workers = min(max(1, int(conf["encode_workers"])), len(jobs))
    if workers > 1 and device.type == "cpu":
        pool = mp.get_context("spawn").Pool(workers, initializer=_init_worker, initargs=(str(layout.vqvae), conf["device"]))
        results = pool.imap_unordered(_encode_job, jobs)
    else:
        pool = None
        results = ((split, encode_shard(p, out, model, device, c)) for split, p, out, c in jobs)
    means, stds, audio_seconds = [], [], 0.0
    try:
        for split, st in tqdm(results, total=len(jobs), desc="encode", unit="shard", mininterval=2.0):
            meta["splits"][split] += st["kept"]
            meta["dropped_short"][split] += st["dropped"]
            audio_seconds += st["seconds"]
            if split == "train":
                means += st["means"]
                stds += st["stds"]
    finally:
        if pool is not None:
            pool.terminate()
    if sum(meta["splits"].values()) == 0:
        raise ValueError(f"encode: no utterance has at least min_steps={conf['min_steps']} steps; lower --min_steps")
    warnings = short_drop_warnings(meta["splits"], meta["dropped_short"], conf["min_steps"], conf["max_short_drop_fraction"],
                                   steps_per_second)
    if warnings:
        meta["warnings"] = warnings
    # Dreams have no utterance of their own: they are un-z-scored with the corpus' typical level.
    meta["mel_mean"] = float(np.mean(means)) if means else 0.0
    meta["mel_std"] = float(np.mean(stds)) if stds else 1.0
    meta["audio_seconds"] = audio_seconds
    meta["encode_realtime_factor"] = audio_seconds / max(time.time() - t0, 1e-9)
    write_token_meta(layout, meta)
    return meta
