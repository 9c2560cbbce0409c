"""Stage 3, encode: every split's log-mels -> token shards for the environment.

Per utterance: tokens [T, G] int16, the voice activity of each step (the environment's
reward), speaker, utterance id and source. Utterances shorter than `min_steps` are
dropped and counted: too short to learn any dynamics from.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import numpy as np
import torch
from tqdm import tqdm

from pydreamer.tools.device import resolve_device
from tokenizer.features import MelSettings
from tokenizer.layout import DataLayout
from tokenizer.shards import ShardWriter, iter_utterances
from tokenizer.split import SPLITS
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
    """(utterance, tokens [ceil(F / ds), G], reconstructed z-scored mel [F, n_mels] or None), batched."""
    model.eval()
    for batch in _batches(utterances, max_frames):
        longest = max(len(u["mel"]) for u in batch)
        mel = np.stack([np.pad(u["mel"].astype(np.float32), ((0, longest - len(u["mel"])), (0, 0)), mode="edge")
                        for u in batch])
        tokens = model.encode(torch.from_numpy(mel).to(device))
        recon = model.decode(tokens).float().cpu().numpy() if reconstruct else None
        tokens = tokens.cpu().numpy()
        for i, u in enumerate(batch):
            n = len(u["mel"])
            steps = -(-n // model.ds)
            yield u, tokens[i, :steps], (recon[i, :n] if recon is not None else None)


def step_voice(voice: np.ndarray, steps: int, ds: int) -> np.ndarray:
    """Per-step voice activity: the fraction of a step's frames that are voiced."""
    padded = np.pad(voice.astype(np.float32), (0, steps * ds - len(voice)), mode="edge")
    return padded.reshape(steps, ds).mean(axis=1)


def encode(conf: Mapping[str, Any]) -> dict:
    """Write `<data_dir>/tokens/{train,val,test}/` and `tokens/meta.json`; returns the meta."""
    layout = DataLayout.of(conf["data_dir"])
    device = resolve_device(conf["device"])
    model, _ = load_vqvae(layout.vqvae, device)
    settings = MelSettings.from_conf(conf)
    steps_per_second = settings.frames_per_second / model.ds
    meta: dict[str, Any] = {
        "codebook_size": model.quantizer.codebook_size, "tokens_per_step": model.G, "time_downsample": model.ds,
        "steps_per_second": steps_per_second, "frames_per_second": settings.frames_per_second,
        "bits_per_second": steps_per_second * model.G * float(np.log2(model.quantizer.codebook_size)),
        "min_steps": conf["min_steps"], "features": {k: conf[k] for k in MelSettings.__dataclass_fields__},
        "splits": {}, "dropped_short": {},
    }
    means, stds = [], []
    t0, audio_seconds = time.time(), 0.0
    for split in SPLITS:
        out = layout.tokens(split)
        shutil.rmtree(out, ignore_errors=True)
        kept = dropped = 0
        with ShardWriter(out, max(1, conf["shard_frames"] // model.ds)) as writer:
            source = iter_utterances(layout.mels(split)) if layout.mels(split).is_dir() else iter(())
            for utt, tokens, _ in tqdm(tokenize(model, source, device, conf["encode_batch_frames"]),
                                        desc=f"encode {split}", unit="utt", mininterval=2.0):
                audio_seconds += len(utt["mel"]) / settings.frames_per_second
                if len(tokens) < conf["min_steps"]:
                    dropped += 1
                    continue
                writer.add(
                    per_step={"tokens": tokens.astype(np.int16), "voice": step_voice(utt["voice"], len(tokens), model.ds)},
                    per_utterance={k: utt[k] for k in ("utterance_id", "speaker", "source")},
                )
                kept += 1
                if split == "train":
                    means.append(utt["mean"])
                    stds.append(utt["std"])
        meta["splits"][split] = kept
        meta["dropped_short"][split] = dropped
    if sum(meta["splits"].values()) == 0:
        raise ValueError(f"encode: no utterance has at least min_steps={conf['min_steps']} steps; lower --min_steps")
    # Dreams have no utterance of their own: they are un-z-scored with the corpus' typical level.
    meta["mel_mean"] = float(np.mean(means)) if means else 0.0
    meta["mel_std"] = float(np.mean(stds)) if stds else 1.0
    meta["encode_realtime_factor"] = audio_seconds / max(time.time() - t0, 1e-9)
    tmp = layout.token_meta.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(meta, indent=2))
    tmp.replace(layout.token_meta)
    return meta
