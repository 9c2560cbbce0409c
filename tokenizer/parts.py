"""Preparing and encoding on several hosts: worker parts and what `merge` checks before assembling them.

`python -m tokenizer prepare|encode --worker i --n_workers N` does share i of N of the stage:

- prepare: every worker lists the whole corpus (cheap: names and speakers) and computes the
  same speaker-disjoint split from it, so the split does not depend on N; then it decodes
  and featurizes only the utterances whose index in that listing satisfies `index % N == i`
  (interleaved, so every worker gets a like mix of speakers and lengths);
- encode: the log-mel shards of train, val and test, in that order, are numbered; worker i
  encodes the shards whose number satisfies `number % N == i`.

A worker writes only below `<data_dir>/parts/<stage>/`: its shards and then its record `part.json`
into a staging folder of its own, renamed to `w{i}of{N}/` when complete. The record says what it
was made with (the stage settings, the seed, shard size, and a fingerprint of its input: the
corpus listing for prepare, the manifest and the VQ-VAE checkpoint for encode). Workers log
nothing to MLflow (its store is not for many writers); `merge` does, once.

`python -m tokenizer merge --data_dir DIR` checks that the N parts are all there and were made
with the same settings and input, then writes the stage's output in the canonical utterance
order, exactly as one process would have (manifest, shards, settings), and removes the parts.
A parts folder holds parts of one N and one setting: anything else is a PartError (one line,
exit status 2) naming the folder, and nothing is written.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from runtime.files import atomic_write_text
from tokenizer.layout import DataLayout

PART_STAGES = ("prepare", "encode")
RECORD = "part.json"
_NAME = re.compile(r"^w(\d+)of(\d+)$")
_STAGED = re.compile(r"^\.w(\d+)of(\d+)\.")


class PartError(ValueError):
    """Worker parts that cannot be used or assembled (one line naming the problem; exit status 2)."""


@dataclass(frozen=True)
class Share:
    """Which share of a stage one worker does: the items whose index % n_workers == worker."""

    worker: int
    n_workers: int

    def __post_init__(self) -> None:
        if self.n_workers < 1:
            raise PartError(f"--n_workers {self.n_workers}: must be at least 1")
        if not 0 <= self.worker < self.n_workers:
            raise PartError(f"--worker {self.worker}: must be between 0 and {self.n_workers - 1} "
                            f"for --n_workers {self.n_workers}")

    @property
    def name(self) -> str:
        return f"w{self.worker}of{self.n_workers}"

    def takes(self, index: int) -> bool:
        return index % self.n_workers == self.worker

    def folder(self, layout: DataLayout, stage: str) -> Path:
        return layout.parts(stage) / self.name


def share_from_args(worker: int | None, n_workers: int | None) -> Share | None:
    """The share asked for on the command line; None when neither flag is given (one process does all)."""
    if worker is None and n_workers is None:
        return None
    if worker is None or n_workers is None:
        raise PartError("--worker and --n_workers go together (e.g. --worker 0 --n_workers 4)")
    return Share(worker, n_workers)


def fingerprint(items: Iterable[Any]) -> str:
    """A short digest of JSON-able items (a corpus listing, say), to compare what workers saw."""
    h = hashlib.sha256()
    for item in items:
        h.update(json.dumps(item, sort_keys=True).encode())
        h.update(b"\n")
    return h.hexdigest()[:16]


def found_parts(layout: DataLayout, stage: str) -> dict[str, Path]:
    """Part folders (`w{i}of{N}`, complete or not) of a stage, by name; other entries are ignored."""
    folder = layout.parts(stage)
    if not folder.is_dir():
        return {}
    return {p.name: p for p in sorted(folder.iterdir()) if p.is_dir() and _NAME.match(p.name)}


def _staged(layout: DataLayout, stage: str) -> list[str]:
    """Staging folders: parts being written, or left by a worker that was killed."""
    folder = layout.parts(stage)
    return sorted(p.name for p in folder.iterdir() if _STAGED.match(p.name)) if folder.is_dir() else []


def _parse(name: str) -> tuple[int, int]:
    m = _NAME.match(name)
    assert m is not None
    return int(m.group(1)), int(m.group(2))


def read_record(folder: Path) -> dict | None:
    """A part's record, or None while it is not complete."""
    path = folder / RECORD
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise PartError(f"{path}: cannot be read ({e}): run that worker again") from None
    if not isinstance(record, dict) or not isinstance(record.get("made_with"), dict):
        raise PartError(f"{path}: not a part record: run that worker again")
    return record


@contextmanager
def staging(layout: DataLayout, stage: str, share: Share) -> Iterator[Path]:
    """A folder of this process' own (`parts/<stage>/.w{i}of{N}.<host>.<pid>`) to write the part into;
    `publish` moves it into place. Removed when the block fails, so a crash leaves no half part behind
    under the part's name, and two hosts given the same --worker by mistake never write into one folder."""
    folder = layout.parts(stage) / f".{share.name}.{socket.gethostname()}.{os.getpid()}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def publish(staged: Path, layout: DataLayout, stage: str, share: Share, record: Mapping[str, Any]) -> Path:
    """Write the part's record into its staging folder, then rename that to `w{i}of{N}` (replacing an
    older or unfinished one): from then on the part counts as complete."""
    atomic_write_text(staged / RECORD, json.dumps(dict(record)))
    folder = share.folder(layout, stage)
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(staged, folder)
    return folder


def differences(a: Mapping[str, Any], b: Mapping[str, Any], a_name: str, b_name: str) -> list[str]:
    return [f"{k} {a.get(k)!r} ({a_name}) vs {b.get(k)!r} ({b_name})" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def status(layout: DataLayout, stage: str) -> str:
    """'2 of 3 parts done, missing w1of3' / 'all 2 parts done' / 'parts of different worker counts (…)'."""
    parts = found_parts(layout, stage)
    staged = _staged(layout, stage)
    writing = f" ({len(staged)} being written, or left by a stopped worker: {', '.join(staged)})" if staged else ""
    counts = sorted({_parse(n)[1] for n in parts})
    if not counts:
        return f"no part done yet{writing}"
    if len(counts) > 1:
        return f"parts of different worker counts ({', '.join(parts)})"
    n = counts[0]
    done = [f"w{i}of{n}" for i in range(n) if f"w{i}of{n}" in parts and (parts[f"w{i}of{n}"] / RECORD).is_file()]
    missing = [f"w{i}of{n}" for i in range(n) if f"w{i}of{n}" not in done]
    return (f"all {n} parts done" if not missing else f"{len(done)} of {n} parts done, missing {', '.join(missing)}") + writing


def check_worker_start(layout: DataLayout, stage: str, share: Share, made_with: Mapping[str, Any],
                       force: bool = False) -> bool:
    """Before a worker writes anything: refuse (PartError) when the stage's parts folder holds parts of
    another worker count or made with other settings. Returns whether this worker's own part is already
    complete with these settings (so it is skipped unless `force`)."""
    where = layout.show(layout.parts(stage))
    others = [n for n in found_parts(layout, stage) if _parse(n)[1] != share.n_workers]
    if others:
        n = _parse(others[0])[1]
        raise PartError(f"{stage}: {where} holds parts of {n} workers ({', '.join(others)}), this is worker "
                        f"{share.worker} of {share.n_workers}: use --n_workers {n}, or remove {where} to start over")
    for name, folder in found_parts(layout, stage).items():
        record = read_record(folder)
        if record is None:
            continue
        changed = differences(record["made_with"], made_with, name, share.name)
        if changed:
            raise PartError(f"{stage}: part {name} in {where} was made with other settings or input "
                            f"({'; '.join(changed)}): run every worker with the same ones, or remove {where} to start over")
    own = share.folder(layout, stage) / RECORD
    return own.is_file() and not force


def collect(layout: DataLayout, stage: str) -> list[dict]:
    """The N complete part records of a stage, worker 0 first, each with its `folder`; PartError naming
    what is missing or mixed."""
    where = layout.show(layout.parts(stage))
    parts = found_parts(layout, stage)
    if not parts:
        raise PartError(f"merge: no {stage} part is done in {where} ({status(layout, stage)})")
    counts = sorted({_parse(n)[1] for n in parts})
    if len(counts) > 1:
        raise PartError(f"merge: {where} mixes parts of different worker counts ({', '.join(parts)}): "
                        f"remove the ones not wanted, or the folder to start over")
    n = counts[0]
    strays = [name for name in parts if _parse(name)[0] >= n]
    if strays:
        raise PartError(f"merge: {where}/{strays[0]} is not a worker of {n}: remove it")
    records = []
    for i in range(n):
        folder = layout.parts(stage) / f"w{i}of{n}"
        record = read_record(folder) if folder.is_dir() else None
        if record is None:
            raise PartError(f"merge: the {stage} part of worker {i} of {n} is missing ({where}/{folder.name}/{RECORD} not there; "
                            f"{status(layout, stage)}): run `python -m tokenizer {stage} --worker {i} --n_workers {n}` "
                            f"with the same settings, then merge again")
        if (record.get("stage"), record.get("worker"), record.get("n_workers")) != (stage, i, n):
            raise PartError(f"merge: {where}/{folder.name}/{RECORD} is not the {stage} part of worker {i} of {n}: "
                            "run that worker again")
        records.append(dict(record, folder=folder))
    for r in records[1:]:
        changed = differences(records[0]["made_with"], r["made_with"], f"w0of{n}", f"w{r['worker']}of{n}")
        if changed:
            raise PartError(f"merge: the {stage} parts in {where} were made with different settings or input "
                            f"({'; '.join(changed)}): run every worker with the same ones")
    return records


def check_indices(records: list[dict], indices: list[list[int]], total: int, what: str, stage: str) -> None:
    """Each item 0..total-1 done by exactly one part (`indices[k]`: those of records[k]), the one whose share it is."""
    n = len(records)
    seen: set[int] = set()
    for r, mine in zip(records, indices):
        wrong = [i for i in mine if i % n != r["worker"] or not 0 <= i < total]
        if wrong or len(set(mine)) != len(mine) or seen & set(mine):
            raise PartError(f"merge: {r['folder'] / RECORD} lists {what} that are not its share: run that worker again")
        seen |= set(mine)
    if len(seen) != total:
        missing = sorted(set(range(total)) - seen)
        raise PartError(f"merge: the {stage} parts lack {len(missing)} of {total} {what} (e.g. number {missing[0]}): "
                        f"run worker {missing[0] % n} of {n} again")

