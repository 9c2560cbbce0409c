"""Stage 1, prepare: audio -> z-scored log-mel shards per split, plus the manifest.

The corpus is listed and split first (cheap), then streamed through worker processes
that decode and compute features; the parent writes shards as results arrive, so memory
does not grow with the corpus. A file that cannot be used is skipped and named with its
reason; the stage fails only when nothing usable is left.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import shutil
import time
from collections import Counter
from typing import Any, Mapping

from tqdm import tqdm

from tokenizer.audio_io import UnusableAudio, load_audio, to_mono_16k
from tokenizer.corpora import Skipped, UtteranceSource, list_corpus
from tokenizer.features import MelSettings, log_mel_features, mel_bin_hz
from tokenizer.layout import DataLayout
from runtime.files import atomic_write_text
from tokenizer.shards import ShardWriter
from tokenizer.split import SPLITS, assign_splits


class NothingUsable(Exception):
    """Every utterance of the source was skipped: one clear message instead of empty shards."""


_WORKER_CONF: dict[str, Any] = {}


def _init_worker(conf: dict) -> None:
    import torch

    torch.set_num_threads(1)  # processes share the cores; one thread each avoids oversubscription
    _WORKER_CONF.clear()
    _WORKER_CONF.update(conf)


def process_utterance(rec: UtteranceSource, conf: Mapping[str, Any]) -> dict:
    """Audio of one utterance -> its features, or the reason it was skipped. Never raises."""
    try:
        if rec.synth is not None:
            from tokenizer.synth import synthesize

            raw = synthesize(rec.synth, conf["sample_rate"], conf["synth_noise_db"])
            wave, notes = to_mono_16k(raw.reshape(-1, 1), conf["sample_rate"], conf["sample_rate"], conf["silence_db"],
                                      conf["n_fft"])
        else:
            wave, notes = load_audio(rec.path, conf["sample_rate"], conf["max_seconds"], conf["long_files"],
                                     conf["silence_db"], min_samples=conf["n_fft"])
        feats = log_mel_features(wave, MelSettings.from_conf(conf), conf["vad_db"], conf["band_margin_db"])
        return {"ok": True, "rec": rec, "feats": feats, "notes": notes, "seconds": len(wave) / conf["sample_rate"]}
    except UnusableAudio as e:
        return {"ok": False, "rec": rec, "reason": str(e)}
    except Exception as e:  # an unexpected failure on one file must not cost the others
        return {"ok": False, "rec": rec, "reason": f"unexpected error: {type(e).__name__}: {e}"}


def _process(rec: UtteranceSource) -> dict:
    return process_utterance(rec, _WORKER_CONF)


def _where(rec: UtteranceSource) -> str:
    return rec.path or f"synth:{rec.utterance_id}"


def prepare(conf: Mapping[str, Any], layout: DataLayout) -> dict:
    """Run the stage; returns the manifest (also written to `<data_dir>/manifest.json`)."""
    started = time.time()
    records, listing_skips = list_corpus(conf)
    if conf["max_files"] and conf["max_files"] > 0:
        records = records[: conf["max_files"]]
    if not records:
        raise NothingUsable(_nothing_message(conf, listing_skips))
    assignment, mode = assign_splits([(r.utterance_id, r.speaker) for r in records], conf["split_fractions"],
                                     conf["seed"], conf["min_split_speakers"])
    for split in SPLITS:  # a redo starts from empty folders
        shutil.rmtree(layout.mels(split), ignore_errors=True)
    writers = {s: ShardWriter(layout.mels(s), conf["shard_frames"]) for s in SPLITS}
    stats = {s: {"utterances": 0, "seconds": 0.0, "speakers": set()} for s in SPLITS}
    skipped: list[Skipped] = list(listing_skips)
    notes: list[dict] = []
    band_counts: list[int] = []

    plain_conf = dict(conf)
    workers = max(1, int(conf["prepare_workers"]))
    if workers > 1:
        pool = mp.get_context("spawn").Pool(workers, initializer=_init_worker, initargs=(plain_conf,))
        results = pool.imap(_process, records, chunksize=4)
    else:
        pool = None
        results = (process_utterance(r, plain_conf) for r in records)
    try:
        for res in tqdm(results, total=len(records), desc="prepare", unit="utt", mininterval=2.0):
            rec = res["rec"]
            if not res["ok"]:
                skipped.append(Skipped(_where(rec), res["reason"]))
                continue
            split = assignment[rec.utterance_id]
            f = res["feats"]
            writers[split].add(
                per_step={"mel": f["mel"].astype("float16"), "voice": f["voice"]},
                per_utterance={"utterance_id": rec.utterance_id, "speaker": rec.speaker, "source": _where(rec),
                               "mean": f["mean"], "std": f["std"]},
            )
            band_counts.append(f["band_bins"])
            st = stats[split]
            st["utterances"] += 1
            st["seconds"] += res["seconds"]
            st["speakers"].add(rec.speaker)
            notes += [{"path": _where(rec), "note": n} for n in res["notes"]]
    finally:
        if pool is not None:
            pool.terminate()
    for w in writers.values():
        w.close()

    kept = sum(st["utterances"] for st in stats.values())
    if kept == 0:
        raise NothingUsable(_nothing_message(conf, skipped))
    manifest = {
        "source": conf["source"],
        "data_root": conf["data_root"],
        "split_mode": mode,
        "split_note": ("no speaker is in two splits" if mode == "speaker" else
                       f"utterance-level split: fewer than {max(conf['min_split_speakers'], 3)} speakers "
                       f"({len({r.speaker for r in records})}), so speakers can be shared between splits"),
        "splits": {s: {"utterances": st["utterances"], "seconds": round(st["seconds"], 2), "speakers": len(st["speakers"])}
                   for s, st in stats.items()},
        "speakers": {s: sorted(st["speakers"]) for s, st in stats.items()},
        "utterances_listed": len(records) + len(listing_skips),
        "utterances_kept": kept,
        "skipped_count": len(skipped),
        "skipped_by_reason": dict(Counter(_reason_kind(s.reason) for s in skipped)),
        "skipped": [{"path": s.path, "reason": s.reason} for s in skipped],
        "notes": notes,
        "features": {k: conf[k] for k in MelSettings.__dataclass_fields__},
        "bandwidth": bandwidth_summary(band_counts, MelSettings.from_conf(conf), conf["band_margin_db"]),
        "seconds_elapsed": round(time.time() - started, 1),
    }
    empty = [s for s in SPLITS if stats[s]["utterances"] == 0]
    if empty:
        manifest["warning"] = f"split(s) {', '.join(empty)} are empty: the corpus is too small or their files were skipped"
    atomic_write_text(layout.manifest, json.dumps(manifest, indent=2))
    return manifest


def bandwidth_summary(band_counts: list[int], settings: MelSettings, margin_db: float) -> dict[str, Any]:
    """The corpus' effective bandwidth: the median utterance's count of mel bins carrying signal.

    Train weighs the bins above it down and evaluate reports `lsd_db_band` over the bins below it.
    """
    import numpy as np

    bins = int(np.median(band_counts)) if band_counts else settings.n_mels
    bins = max(1, bins)
    edges = mel_bin_hz(settings)
    return {
        "signal_mel_bins": bins,
        "n_mels": settings.n_mels,
        "effective_hz": round(float(edges[bins - 1]), 1),
        "band_limited": bins < settings.n_mels,
        "utterances_band_limited": round(float(np.mean(np.asarray(band_counts) < settings.n_mels)), 4) if band_counts else 0.0,
        "rule": f"a mel bin carries signal when its 95th-percentile level is {margin_db:g} dB above the utterance's floor "
                "(band_margin_db); the corpus value is the median over utterances",
    }


def signal_mel_bins(manifest: Mapping[str, Any], n_mels: int) -> int:
    """The prepared corpus' signal bins (all of them for a manifest written before bandwidth was measured)."""
    return int(manifest.get("bandwidth", {}).get("signal_mel_bins", n_mels))


def _reason_kind(reason: str) -> str:
    return reason.split(":")[0].split("(")[0].strip()


def _nothing_message(conf: Mapping[str, Any], skipped: list[Skipped]) -> str:
    where = conf["data_root"] or conf["source"]
    if not skipped:
        return f"source '{conf['source']}' at {where}: no audio files found (wav, flac, ogg or mp3)"
    kinds = Counter(_reason_kind(s.reason) for s in skipped)
    first = skipped[0]
    return (f"source '{conf['source']}' at {where}: nothing usable; all {len(skipped)} file(s) were skipped "
            f"({', '.join(f'{n} {k}' for k, n in kinds.most_common())}); e.g. {first.path}: {first.reason}")


def summary_line(manifest: Mapping[str, Any], manifest_path: str) -> str:
    sp = manifest["splits"]
    hours = sum(v["seconds"] for v in sp.values()) / 3600
    per_split = " / ".join("%s %d" % (s, v["utterances"]) for s, v in sp.items())
    reasons = ", ".join("%d %s" % (n, k) for k, n in manifest["skipped_by_reason"].items())
    skip_text = f"skipped {manifest['skipped_count']}" + (f" ({reasons})" if reasons else "")
    bw = manifest.get("bandwidth")
    band_text = ""
    if bw:
        band_text = (f"; band {bw['signal_mel_bins']} of {bw['n_mels']} mel bins carry signal (up to {bw['effective_hz'] / 1000:.1f} kHz"
                     + (", band-limited" if bw["band_limited"] else "") + ")")
    return (f"prepare: {manifest['utterances_kept']} utterances ({per_split}, {hours:.2f} h) from {manifest['source']}; "
            f"split by {manifest['split_mode']}; {skip_text}{band_text} -> {manifest_path}")
