"""Stage 3, encode: every split's log-mels -> token shards for the environment.

Per utterance: tokens [T, G] int16, the voice activity of each step (the environment's
reward), speaker, utterance id, source and every `label_<name>` of the log-mel shards (the
conditioning labels; meta.json's `labels` lists the train split's values of each). Utterances
shorter than `min_steps` are dropped and counted: too short to learn any dynamics from.

On several hosts (`--worker i --n_workers N`, see tokenizer/parts.py) the log-mel shards of
train, val and test are numbered in that order and worker i encodes those numbered i modulo N
into `parts/encode/w{i}of{N}/`; token shards are named after their log-mel shard, so
`merge_encode` moves them into place and sums the statistics in shard order: the same token
shards and meta as one process.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from tqdm import tqdm

from runtime.device import resolve_device
from tokenizer.codec import tokenize
from tokenizer.features import MelSettings
from runtime.files import atomic_write_text, file_sha256
from tokenizer.layout import DataLayout
from tokenizer.parts import PartError, Share, check_indices, check_worker_start, collect, publish, staging
from tokenizer.records import settings_record
from tokenizer.shards import LABEL_PREFIX, ShardWriter, read_shard, shard_paths
from tokenizer.split import SPLITS
from tokenizer.tokens import TokenSpec, write_token_meta
from tokenizer.vqvae import VQVAE, load_vqvae


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
    stats: dict[str, Any] = {"kept": 0, "dropped": 0, "seconds": 0.0, "means": [], "stds": [], "files": []}
    labels: dict[str, set[str]] = {}  # label name -> the values of the kept utterances
    fps = MelSettings.from_conf(conf).frames_per_second
    with ShardWriter(out_folder, max(1, conf["shard_frames"] // model.ds), prefix=mel_shard.stem) as writer:
        for utt, tokens, _ in tokenize(model, read_shard(mel_shard), device, conf["encode_batch_frames"]):
            stats["seconds"] += len(utt["mel"]) / fps
            if len(tokens) < conf["min_steps"]:
                stats["dropped"] += 1
                continue
            label_keys = sorted(k for k in utt if k.startswith(LABEL_PREFIX))
            writer.add(
                per_step={"tokens": tokens.astype(np.int16), "voice": step_voice(utt["voice"], len(tokens), model.ds)},
                per_utterance={k: utt[k] for k in ("utterance_id", "speaker", "source", *label_keys)},
            )
            for k in label_keys:
                labels.setdefault(k[len(LABEL_PREFIX):], set()).update([str(utt[k])] if str(utt[k]) else [])
            stats["kept"] += 1
            stats["means"].append(utt["mean"])
            stats["stds"].append(utt["std"])
    stats["files"] = [f"{writer.prefix}-{k:05d}.npz" for k in range(writer.n_shards)]
    stats["labels"] = {name: sorted(values) for name, values in sorted(labels.items())}
    return stats


def _encode_job(job: tuple[int, Path, Path, dict]) -> tuple[int, dict]:
    number, mel_shard, out_folder, conf = job
    return number, encode_shard(mel_shard, out_folder, _WORKER["model"], _WORKER["device"], conf)


def mel_shard_jobs(layout: DataLayout) -> list[tuple[str, Path]]:
    """(split, log-mel shard) of train, val and test in order: the shards' numbers are their places here."""
    return [(split, p) for split in SPLITS for p in shard_paths(layout.mels(split))]


def _meta_base(conf: Mapping[str, Any], model: VQVAE) -> dict[str, Any]:
    settings = MelSettings.from_conf(conf)
    steps_per_second = settings.frames_per_second / model.ds
    return {
        "codebook_size": model.quantizer.codebook_size, "tokens_per_step": model.G, "time_downsample": model.ds,
        "steps_per_second": steps_per_second, "frames_per_second": settings.frames_per_second,
        "bits_per_second": TokenSpec(model.quantizer.codebook_size, model.G, steps_per_second).bits_per_second,
        "min_steps": conf["min_steps"], "features": {k: conf[k] for k in MelSettings.__dataclass_fields__},
        "splits": {s: 0 for s in SPLITS}, "dropped_short": {s: 0 for s in SPLITS},
    }


def _encode_jobs(conf: Mapping[str, Any], layout: DataLayout, model: VQVAE, device: torch.device,
                 jobs: list[tuple[int, Path, Path]], desc: str = "encode") -> dict[int, dict]:
    """encode_shard of each (number, mel shard, out folder), by `encode_workers` processes; stats by number."""
    workers = min(max(1, conf["encode_workers"]), len(jobs))
    if workers > 1 and device.type == "cpu":
        pool = mp.get_context("spawn").Pool(workers, initializer=_init_worker, initargs=(str(layout.vqvae), conf["device"]))
        results = pool.imap_unordered(_encode_job, [(n, p, out, dict(conf)) for n, p, out in jobs])
    else:
        pool = None
        results = ((n, encode_shard(p, out, model, device, conf)) for n, p, out in jobs)
    stats: dict[int, dict] = {}
    try:
        for number, st in tqdm(results, total=len(jobs), desc=desc, unit="shard", mininterval=2.0):
            stats[number] = st
    finally:
        if pool is not None:
            pool.terminate()
    return stats


def _finish_meta(meta: dict[str, Any], conf: Mapping[str, Any], split_of: Mapping[int, str],
                 stats: Mapping[int, Mapping[str, Any]], seconds: float) -> dict[str, Any]:
    """Counts and statistics summed over the shards in their order (so they do not depend on who
    encoded which), the label vocabularies (every label name of the corpus, with its train values),
    the short-drop warnings, the speed."""
    means, stds, audio_seconds = [], [], 0.0
    labels: dict[str, set[str]] = {}
    for number in sorted(stats):
        split, st = split_of[number], stats[number]
        meta["splits"][split] += st["kept"]
        meta["dropped_short"][split] += st["dropped"]
        audio_seconds += st["seconds"]
        for name, values in st.get("labels", {}).items():  # parts recorded before labels: none
            labels.setdefault(name, set()).update(values if split == "train" else ())
        if split == "train":
            means += st["means"]
            stds += st["stds"]
    meta["labels"] = {name: sorted(values) for name, values in sorted(labels.items())}
    if sum(meta["splits"].values()) == 0:
        raise ValueError(f"encode: no utterance has at least min_steps={conf['min_steps']} steps; lower --min_steps")
    warnings = short_drop_warnings(meta["splits"], meta["dropped_short"], conf["min_steps"], conf["max_short_drop_fraction"],
                                   meta["steps_per_second"])
    if warnings:
        meta["warnings"] = warnings
    # Dreams have no utterance of their own: they are un-z-scored with the corpus' typical level.
    meta["mel_mean"] = float(np.mean(means)) if means else 0.0
    meta["mel_std"] = float(np.mean(stds)) if stds else 1.0
    meta["audio_seconds"] = audio_seconds
    meta["encode_realtime_factor"] = audio_seconds / max(seconds, 1e-9)
    return meta


def encode(conf: Mapping[str, Any], layout: DataLayout) -> dict:
    """Write `<data_dir>/tokens/{train,val,test}/` and `tokens/meta.json`; returns the meta."""
    device = resolve_device(conf["device"])
    model, _ = load_vqvae(layout.vqvae, device)
    meta = _meta_base(conf, model)
    for split in SPLITS:
        shutil.rmtree(layout.tokens(split), ignore_errors=True)
        layout.tokens(split).mkdir(parents=True)
    shards = mel_shard_jobs(layout)
    t0 = time.time()
    stats = _encode_jobs(conf, layout, model, device, [(n, p, layout.tokens(split)) for n, (split, p) in enumerate(shards)])
    meta = _finish_meta(meta, conf, {n: split for n, (split, _) in enumerate(shards)}, stats, time.time() - t0)
    write_token_meta(layout, meta)
    return meta


# ---- on several hosts: one share of the log-mel shards per worker, then merge (see tokenizer/parts.py) ----

_META_KEYS = ("min_steps", "max_short_drop_fraction", *MelSettings.__dataclass_fields__)


def _made_with(conf: Mapping[str, Any], layout: DataLayout, shards: list[tuple[str, Path]]) -> tuple[dict, dict]:
    """(what the part was made with, the settings file encode records) for this config and data folder."""
    settings = settings_record(conf, layout, "encode")
    made_with = {**settings, "shard_frames": conf["shard_frames"], "max_short_drop_fraction": conf["max_short_drop_fraction"],
                 "mel_shards": len(shards), "manifest_sha256": file_sha256(layout.manifest), "vqvae_sha256": file_sha256(layout.vqvae)}
    return made_with, settings


def _need_inputs(layout: DataLayout) -> None:
    for path, stage in ((layout.manifest, "prepare"), (layout.vqvae, "train")):
        if not path.is_file():
            raise FileNotFoundError(f"encode: no {path}: run {stage} first")


def encode_part(conf: Mapping[str, Any], layout: DataLayout, share: Share, force: bool = False) -> dict | None:
    """Tokens of this worker's log-mel shards -> `<data_dir>/parts/encode/w{i}of{N}/tokens/{split}/`, then
    its part.json. Returns the part record, or None when the part was already complete (and not `force`)."""
    _need_inputs(layout)
    shards = mel_shard_jobs(layout)
    made_with, settings = _made_with(conf, layout, shards)
    if check_worker_start(layout, "encode", share, made_with, force):
        return None
    device = resolve_device(conf["device"])
    model, _ = load_vqvae(layout.vqvae, device)
    with staging(layout, "encode", share) as folder:
        for split in SPLITS:
            (folder / "tokens" / split).mkdir(parents=True)
        mine = [(n, p, folder / "tokens" / split) for n, (split, p) in enumerate(shards) if share.takes(n)]
        t0 = time.time()
        stats = _encode_jobs(conf, layout, model, device, mine, desc=f"encode {share.name}")
        record = {"stage": "encode", "worker": share.worker, "n_workers": share.n_workers, "made_with": made_with,
                  "settings": settings, "meta": _meta_base(conf, model), "conf": {k: conf[k] for k in _META_KEYS},
                  "shards": [{"number": n, "split": shards[n][0], "mel_shard": shards[n][1].name, **stats[n]}
                             for n, _, _ in mine],
                  "seconds_elapsed": round(time.time() - t0, 3)}
        publish(folder, layout, "encode", share, record)
    return record


def part_summary_line(record: Mapping[str, Any], folder: Any) -> str:
    kept = sum(s["kept"] for s in record["shards"])
    return (f"encode: worker {record['worker']} of {record['n_workers']}: {len(record['shards'])} of "
            f"{record['made_with']['mel_shards']} log-mel shards, {kept} utterances -> {folder}")


def merge_encode(layout: DataLayout) -> dict:
    """The N encode parts -> `tokens/{split}/` (their shards moved into place: they are named after the
    log-mel shards, as one process names them) and `tokens/meta.json` summed in shard order, plus
    `settings/encode.json`. Checked before anything is moved; safe to run again after an interruption."""
    records = collect(layout, "encode")
    first = records[0]
    _need_inputs(layout)
    shards = mel_shard_jobs(layout)
    for key, path, stage in (("manifest_sha256", layout.manifest, "prepare"), ("vqvae_sha256", layout.vqvae, "train")):
        if first["made_with"][key] != file_sha256(path):
            raise PartError(f"merge: the encode parts were made from another {path.name} ({stage} was redone since): "
                            f"run the encode workers again")
    if first["made_with"]["mel_shards"] != len(shards):
        raise PartError(f"merge: the encode parts were made from {first['made_with']['mel_shards']} log-mel shards, "
                        f"{layout.root / 'mels'} holds {len(shards)}: run the encode workers again")
    check_indices(records, [[s["number"] for s in r["shards"]] for r in records], len(shards), "log-mel shards", "encode")
    moves: list[tuple[Path, Path]] = []
    for r in records:
        for s in r["shards"]:
            for name in s["files"]:
                src, dst = r["folder"] / "tokens" / s["split"] / name, layout.tokens(s["split"]) / name
                if not src.is_file() and not dst.is_file():  # already moved by an interrupted merge: fine
                    raise PartError(f"merge: {src} is missing: run worker {r['worker']} of {len(records)} again")
                moves.append((src, dst))
    stats = {s["number"]: s for r in records for s in r["shards"]}
    meta = _finish_meta(json.loads(json.dumps(first["meta"])), first["conf"], {n: split for n, (split, _) in enumerate(shards)},
                        stats, max(r["seconds_elapsed"] for r in records))
    layout.token_meta.unlink(missing_ok=True)  # its presence would say the corpus is complete while shards move
    wanted = {dst for _, dst in moves}
    for split in SPLITS:
        layout.tokens(split).mkdir(parents=True, exist_ok=True)
        for old in layout.tokens(split).iterdir():  # what an earlier encode left
            if old not in wanted:
                shutil.rmtree(old) if old.is_dir() else old.unlink()
    for src, dst in moves:
        if src.is_file():
            os.replace(src, dst)
    atomic_write_text(layout.settings("encode"), json.dumps(first["settings"], indent=2))
    write_token_meta(layout, meta)
    return meta
