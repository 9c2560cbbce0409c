"""Stage 1, prepare: audio -> z-scored log-mel shards per split, plus the manifest.

The corpus is listed and split first (cheap), then streamed through worker processes
that decode and compute features; the parent writes shards as results arrive, so memory
does not grow with the corpus. A file that cannot be used is skipped and named with its
reason; the stage fails only when nothing usable is left.

On several hosts (`--worker i --n_workers N`, see tokenizer/parts.py) each worker lists the
whole corpus and computes the same split, processes the utterances whose listing index is
i modulo N into `parts/prepare/w{i}of{N}/`, and `merge_prepare` replays the outcomes in corpus
order: the same shards and manifest as one process. Each utterance's features are a pure
function of its file or synthesis recipe (seeded per utterance), never of who computed them.
"""
from __future__ import annotations

import heapq
import json
import multiprocessing as mp
import shutil
import time
from collections import Counter
from contextlib import contextmanager
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
from tqdm import tqdm

from tokenizer.audio_io import UnusableAudio, load_audio, to_mono_16k
from tokenizer.corpora import Skipped, UtteranceSource, label_names, list_corpus
from tokenizer.features import MelSettings, bandwidth_summary, log_mel_features
from tokenizer.layout import DataLayout
from runtime.files import atomic_write_text
from tokenizer.parts import PartError, Share, check_indices, check_worker_start, collect, fingerprint, publish, staging
from tokenizer.records import stage_settings
from tokenizer.shards import LABEL_PREFIX, ShardWriter, iter_rows, shard_paths
from tokenizer.split import SPLITS, Placed, assign_splits, disjointness, disjointness_line
from tokenizer.synth import timbre_of


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


def _listed(conf: Mapping[str, Any]) -> tuple[list[UtteranceSource], list[Skipped], dict[str, str], str]:
    """The corpus (cut to max_files) and its split, decided from the whole listing: the same for every worker."""
    records, listing_skips = list_corpus(conf)
    if conf["max_files"] and conf["max_files"] > 0:
        records = records[: conf["max_files"]]
    if not records:
        raise NothingUsable(_nothing_message(conf, listing_skips))
    # The built-in corpus deals out timbres (eSpeak variants), each with all its languages' voices.
    group_of = timbre_of if conf["source"] == "synth" else None
    assignment, mode = assign_splits([(r.utterance_id, r.speaker) for r in records], conf["split_fractions"],
                                     conf["seed"], conf["min_split_speakers"], group_of, "timbre")
    return records, listing_skips, assignment, mode


@contextmanager
def _processed(conf: Mapping[str, Any], records: list[UtteranceSource], desc: str = "prepare") -> Iterator[Iterator[dict]]:
    """`process_utterance` of each record, in order, by `prepare_workers` processes."""
    plain_conf = dict(conf)
    workers = max(1, conf["prepare_workers"])
    if workers > 1:
        pool = mp.get_context("spawn").Pool(workers, initializer=_init_worker, initargs=(plain_conf,))
        results = pool.imap(_process, records, chunksize=4)
    else:
        pool = None
        results = (process_utterance(r, plain_conf) for r in records)
    try:
        yield tqdm(results, total=len(records), desc=desc, unit="utt", mininterval=2.0)
    finally:
        if pool is not None:
            pool.terminate()


def _keep(index: int, res: dict, assignment: Mapping[str, str], writers: Mapping[str, ShardWriter],
          names: Sequence[str] = ()) -> dict:
    """Write one processed utterance to its split's shards; returns what the manifest needs of it.
    Every utterance gets a `label_<name>` for each of the corpus' label `names` ('' where it has none),
    since every utterance of a shard holds the same arrays."""
    rec = res["rec"]
    if not res["ok"]:
        return {"i": index, "path": _where(rec), "reason": res["reason"]}
    split = assignment[rec.utterance_id]
    f = res["feats"]
    labels = rec.label_map
    writers[split].add(
        per_step={"mel": f["mel"].astype("float16"), "voice": f["voice"]},
        per_utterance={"utterance_id": rec.utterance_id, "speaker": rec.speaker, "source": _where(rec),
                       "mean": f["mean"], "std": f["std"], **{LABEL_PREFIX + n: labels.get(n, "") for n in names}},
    )
    entry = {"i": index, "path": _where(rec), "split": split, "speaker": rec.speaker, "seconds": res["seconds"],
             "band_bins": int(f["band_bins"]), "notes": list(res["notes"])}
    if rec.synth is not None:  # what the disjointness count needs beyond the speaker
        entry.update(timbre=timbre_of(rec.speaker), language=rec.synth.language, text=rec.synth.text)
    return entry


class _Tally:
    """The manifest's counts, fed the utterances' outcomes in corpus order (one process, or the merge)."""

    def __init__(self, listing_skips: list[Skipped]):
        self.stats = {s: {"utterances": 0, "seconds": 0.0, "speakers": set()} for s in SPLITS}
        self.skipped: list[Skipped] = list(listing_skips)
        self.notes: list[dict] = []
        self.band_counts: list[int] = []
        self.placed: list[Placed] = []

    def add(self, entry: Mapping[str, Any]) -> None:
        if "reason" in entry:
            self.skipped.append(Skipped(entry["path"], entry["reason"]))
            return
        self.band_counts.append(entry["band_bins"])
        st = self.stats[entry["split"]]
        st["utterances"] += 1
        st["seconds"] += entry["seconds"]
        st["speakers"].add(entry["speaker"])
        self.placed.append(Placed(entry["split"], entry["speaker"], entry.get("timbre", ""), entry.get("language", ""),
                                  entry.get("text", "")))
        self.notes += [{"path": entry["path"], "note": n} for n in entry["notes"]]

    @property
    def kept(self) -> int:
        return sum(st["utterances"] for st in self.stats.values())

    def manifest(self, conf: Mapping[str, Any], listing: Mapping[str, Any], seconds_elapsed: float) -> dict:
        stats, skipped, mode = self.stats, self.skipped, listing["split_mode"]
        if self.kept == 0:
            raise NothingUsable(_nothing_message(conf, skipped))
        _check_speaker_split(mode, stats)
        manifest = {
            "source": conf["source"],
            "data_root": conf["data_root"],
            "split_mode": mode,
            "split_note": _split_note(conf, listing),
            "disjoint": disjointness(self.placed),
            "splits": {s: {"utterances": st["utterances"], "seconds": round(st["seconds"], 2), "speakers": len(st["speakers"])}
                       for s, st in stats.items()},
            "speakers": {s: sorted(st["speakers"]) for s, st in stats.items()},
            "utterances_listed": listing["utterances"] + len(listing["skipped"]),
            "utterances_kept": self.kept,
            "skipped_count": len(skipped),
            "skipped_by_reason": dict(Counter(_reason_kind(s.reason) for s in skipped)),
            "skipped": [{"path": s.path, "reason": s.reason} for s in skipped],
            "notes": self.notes,
            "features": {k: conf[k] for k in MelSettings.__dataclass_fields__},
            "bandwidth": bandwidth_summary(self.band_counts, MelSettings.from_conf(conf), conf["band_margin_db"]),
            "seconds_elapsed": round(seconds_elapsed, 1),
        }
        empty = [s for s in SPLITS if stats[s]["utterances"] == 0]
        if empty:
            manifest["warning"] = f"split(s) {', '.join(empty)} are empty: the corpus is too small or their files were skipped"
        return manifest


def _check_speaker_split(mode: str, stats: Mapping[str, Any]) -> None:
    """The manifest says "no speaker is in two splits" only when the utterances as placed show it."""
    if mode != "speaker":
        return
    splits_of: dict[str, list[str]] = {}
    for split, st in stats.items():
        for speaker in st["speakers"]:
            splits_of.setdefault(speaker, []).append(split)
    shared = {k: v for k, v in splits_of.items() if len(v) > 1}
    if shared:
        speaker, splits = next(iter(shared.items()))
        raise ValueError(f"the speaker-disjoint split placed {len(shared)} speaker(s) in two splits (e.g. {speaker!r} in "
                         f"{' and '.join(splits)}): please report it with the corpus listing")


def _split_note(conf: Mapping[str, Any], listing: Mapping[str, Any]) -> str:
    mode = listing["split_mode"]
    if mode == "speaker":
        return "no speaker is in two splits"
    if mode == "timbre":
        return ("no timbre (eSpeak variant) is in two splits under any language: all the voices of a variant "
                "are in one split; languages and words are shared (see disjoint)")
    units = "timbres" if conf["source"] == "synth" else "speakers"
    return (f"utterance-level split: fewer than {max(conf['min_split_speakers'], 3)} {units} "
            f"({listing.get('units', listing['speakers'])}), so speakers can be shared between splits")


def _listing(records: list[UtteranceSource], listing_skips: list[Skipped], mode: str) -> dict[str, Any]:
    listing = {"utterances": len(records), "speakers": len({r.speaker for r in records}), "split_mode": mode,
               "skipped": [[s.path, s.reason] for s in listing_skips]}
    if records and records[0].synth is not None:
        listing["units"] = len({timbre_of(r.speaker) for r in records})
    return listing


def prepare(conf: Mapping[str, Any], layout: DataLayout) -> dict:
    """Run the stage; returns the manifest (also written to `<data_dir>/manifest.json`)."""
    started = time.time()
    records, listing_skips, assignment, mode = _listed(conf)
    for split in SPLITS:  # a redo starts from empty folders
        shutil.rmtree(layout.mels(split), ignore_errors=True)
    writers = {s: ShardWriter(layout.mels(s), conf["shard_frames"]) for s in SPLITS}
    tally = _Tally(listing_skips)
    names = label_names(records)
    with _processed(conf, records) as results:
        for i, res in enumerate(results):
            tally.add(_keep(i, res, assignment, writers, names))
    for w in writers.values():
        w.close()
    manifest = tally.manifest(conf, _listing(records, listing_skips, mode), time.time() - started)
    atomic_write_text(layout.manifest, json.dumps(manifest, indent=2))
    return manifest


# ---- on several hosts: one share per worker, then merge (see tokenizer/parts.py) --------------------

_MANIFEST_KEYS = ("source", "data_root", "min_split_speakers", "band_margin_db", *MelSettings.__dataclass_fields__)


def _made_with(conf: Mapping[str, Any], records: list[UtteranceSource], listing_skips: list[Skipped]) -> dict[str, Any]:
    corpus = fingerprint([[r.utterance_id, r.speaker, r.path] for r in records] + [[s.path, s.reason] for s in listing_skips])
    return {**stage_settings(conf, "prepare"), "seed": conf["seed"], "shard_frames": conf["shard_frames"],
            "corpus": f"{len(records)} utterances listed, {len(listing_skips)} skipped while listing, digest {corpus}"}


def prepare_part(conf: Mapping[str, Any], layout: DataLayout, share: Share, force: bool = False) -> dict | None:
    """This worker's share of the corpus -> `<data_dir>/parts/prepare/w{i}of{N}/` (mels, then part.json).
    Returns the part record, or None when the part was already complete (and not `force`)."""
    started = time.time()
    records, listing_skips, assignment, mode = _listed(conf)
    made_with = _made_with(conf, records, listing_skips)
    if check_worker_start(layout, "prepare", share, made_with, force):
        return None
    mine = [i for i in range(len(records)) if share.takes(i)]
    entries = []
    with staging(layout, "prepare", share) as folder:
        writers = {s: ShardWriter(folder / "mels" / s, conf["shard_frames"]) for s in SPLITS}
        names = label_names(records)  # of the whole listing: every part's shards hold the same arrays
        with _processed(conf, [records[i] for i in mine], desc=f"prepare {share.name}") as results:
            for i, res in zip(mine, results):
                entries.append(_keep(i, res, assignment, writers, names))
        for w in writers.values():
            w.close()
        record = {"stage": "prepare", "worker": share.worker, "n_workers": share.n_workers, "made_with": made_with,
                  "settings": stage_settings(conf, "prepare"), "conf": {k: conf[k] for k in _MANIFEST_KEYS},
                  "listing": _listing(records, listing_skips, mode), "entries": entries,
                  "seconds_elapsed": round(time.time() - started, 1)}
        publish(folder, layout, "prepare", share, record)
    return record


def part_summary_line(record: Mapping[str, Any], folder: Any) -> str:
    entries = record["entries"]
    kept = Counter(e["split"] for e in entries if "split" in e)
    return (f"prepare: worker {record['worker']} of {record['n_workers']}: {sum(kept.values())} of "
            f"{record['listing']['utterances']} utterances ({' / '.join(f'{s} {kept[s]}' for s in SPLITS)}), "
            f"skipped {len(entries) - sum(kept.values())} -> {folder}")


def merge_prepare(layout: DataLayout) -> dict:
    """The N prepare parts -> `mels/{split}/` and `manifest.json` exactly as one process writes them (the
    utterances in corpus order, re-sharded), plus `settings/prepare.json`. Everything is checked before
    anything is written; the parts are left for the caller to remove."""
    started = time.time()
    records = collect(layout, "prepare")
    first = records[0]
    conf, listing = first["conf"], first["listing"]
    check_indices(records, [[e["i"] for e in r["entries"]] for r in records], listing["utterances"], "utterances", "prepare")
    tally = _Tally([Skipped(p, why) for p, why in listing["skipped"]])
    for entry in heapq.merge(*(r["entries"] for r in records), key=lambda e: e["i"]):
        tally.add(entry)
    manifest = tally.manifest(conf, listing, max(r["seconds_elapsed"] for r in records))  # raises when nothing is kept
    for r in records:
        for split in SPLITS:
            _check_part_shards(r, split)
    layout.manifest.unlink(missing_ok=True)  # its presence would say the stage is done while the shards are rewritten
    for split in SPLITS:
        shutil.rmtree(layout.mels(split), ignore_errors=True)
        streams = [_part_stream(r, split) for r in records]
        with ShardWriter(layout.mels(split), first["made_with"]["shard_frames"]) as writer:
            for _, per_step, per_utterance in heapq.merge(*streams, key=lambda item: item[0]):
                writer.add(per_step=per_step, per_utterance=per_utterance)
    atomic_write_text(layout.settings("prepare"), json.dumps(first["settings"], indent=2))
    manifest["seconds_elapsed"] = round(manifest["seconds_elapsed"] + time.time() - started, 1)
    atomic_write_text(layout.manifest, json.dumps(manifest, indent=2))
    return manifest


def _check_part_shards(record: Mapping[str, Any], split: str) -> None:
    """The part's shards of `split` hold as many utterances as its record lists (only their offsets are read)."""
    folder = record["folder"] / "mels" / split
    listed = sum(1 for e in record["entries"] if e.get("split") == split)
    try:
        held = 0
        for path in shard_paths(folder):
            with np.load(path, allow_pickle=False) as z:
                held += len(z["offsets"]) - 1
    except (OSError, ValueError, KeyError) as e:
        raise PartError(f"merge: {folder}: a shard cannot be read ({e}): run that worker again") from None
    if held != listed:
        raise PartError(f"merge: {folder} holds {held} utterances, its part.json lists {listed}: run that worker again")


def _part_stream(record: Mapping[str, Any], split: str) -> Iterator[tuple[int, dict, dict]]:
    """(corpus index, per-step arrays, per-utterance values) of one part's utterances of `split`, in order."""
    folder = record["folder"] / "mels" / split
    indices = iter([e["i"] for e in record["entries"] if e.get("split") == split])
    damaged = PartError(f"merge: {folder} does not hold the utterances its part.json lists: run that worker again")
    for per_step, per_utterance in iter_rows(folder):
        i = next(indices, None)
        if i is None:
            raise damaged
        yield i, per_step, per_utterance
    if next(indices, None) is not None:
        raise damaged


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
    line = (f"prepare: {manifest['utterances_kept']} utterances ({per_split}, {hours:.2f} h) from {manifest['source']}; "
            f"split by {manifest['split_mode']}; {skip_text}{band_text} -> {manifest_path}")
    return line + ("\n" + disjointness_line(manifest["disjoint"]) if "disjoint" in manifest else "")
